"""Faults of the dataset readers found with the formats users have: colour NIfTI files (RGB24 voxels,
ITK's 5D vector files), few labelled volumes and the validation split, where unlabelled images land,
a patient's cases split apart, multi-channel nnU-Net cases, dataset.json's file_ending and
numTraining, labels named as their image file, colour images after a grey one, flat FairSeg folders
and a DICOM series beside its localizer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fewsam import progress
from fewsam.data import open_dataset, read_prediction, select_labelled, select_unlabelled, write_prediction
from fewsam.errors import DataError

RGB24 = [("R", "u1"), ("G", "u1"), ("B", "u1")]


def _colour_pixels(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(*shape, 3)).astype(np.uint8)


def _nifti_pair(root: Path, image: nib.Nifti1Image, label: np.ndarray) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    nib.save(image, root / "images" / "a.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labels" / "a.nii.gz")


@pytest.mark.parametrize("shape", [(8, 9, 2), (8, 9)], ids=["3d", "2d"])
def test_an_rgb24_nifti_is_read_as_a_colour_image_and_predicted_on_its_grid(tmp_path, shape):
    """NIfTI's RGB24 voxel type was refused as "not a greyscale image"; it is read as a colour PNG
    is: (slices, rows, cols, 3) of its R, G, B values."""
    pixels = _colour_pixels(shape)
    voxels = np.zeros(shape, dtype=RGB24)
    for i, field in enumerate("RGB"):
        voxels[field] = pixels[..., i]
    label = (pixels[..., 0] > 128).astype(np.uint8)
    _nifti_pair(tmp_path, nib.Nifti1Image(voxels, np.eye(4)), label)
    case = open_dataset(tmp_path).load("a")
    xyzc = pixels if len(shape) == 3 else pixels[:, :, None]
    assert case.image.shape == (xyzc.shape[2], shape[1], shape[0], 3)
    assert np.array_equal(case.image, xyzc.transpose(2, 1, 0, 3).astype(np.float32))
    written = nib.load(write_prediction(case, case.label, tmp_path / "pred"))
    assert written.shape == shape and written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(written.dataobj), label)


@pytest.mark.parametrize("shape", [(2, 9, 8), (9, 8)], ids=["3d", "2d"])
def test_an_itk_written_rgb_nifti_is_read_as_colour_not_as_its_red_channel(tmp_path, shape):
    """ITK writes an RGB image as NIfTI with its components on the 5th axis and a vector intent:
    read as its first channel (red) only, it is read as colour now."""
    pixels = _colour_pixels(shape)  # (z,) y, x, 3 as SimpleITK takes it
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(pixels, isVector=True), str(tmp_path / "images" / "a.nii.gz"))
    mask = (pixels[..., 1] > 128).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "labels" / "a.nii.gz"))
    assert nib.load(tmp_path / "images" / "a.nii.gz").header.get_intent()[0] == "vector"
    dataset = open_dataset(tmp_path)
    case = dataset.load("a")
    zyx = pixels if len(shape) == 3 else pixels[None]
    assert np.array_equal(case.image, zyx.astype(np.float32))
    assert np.array_equal(read_prediction(case, write_prediction(case, case.label, tmp_path / "pred").parent),
                          case.label)


def test_a_vector_nifti_of_two_components_is_read_as_its_first_and_said(tmp_path, caplog, monkeypatch):
    """Only 3 or 4 components make a colour voxel: a 2-component vector file is read as its first
    component, said as such (it was said to hold volumes along a 4th axis it does not have)."""
    monkeypatch.setattr(progress, "_said", {})
    data = np.random.default_rng(0).random((6, 5, 2, 1, 2)).astype(np.float32)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_intent("vector")
    _nifti_pair(tmp_path, image, np.zeros((6, 5, 2), np.uint8))
    with caplog.at_level(logging.INFO, logger="fewsam"):
        case = open_dataset(tmp_path).load("a")
    assert np.allclose(case.image, data[:, :, :, 0, 0].transpose(2, 1, 0))
    assert case.meta["channels_dropped"] == 1
    assert any("a.nii.gz holds 2 components per voxel (a vector image on its 5th axis, not RGB): fewsam segments "
               "the first component" in r.getMessage() for r in caplog.records)


def _labelled_volumes(root: Path, labelled: int, unlabelled: int = 0) -> Path:
    """images/case0..N as tiny volumes, labels/ for the first ``labelled`` of them."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(labelled + unlabelled):
        nib.save(nib.Nifti1Image(rng.random((6, 5, 2)).astype(np.float32), np.eye(4)),
                 root / "images" / f"case{i}.nii.gz")
        if i < labelled:
            nib.save(nib.Nifti1Image((rng.random((6, 5, 2)) > 0.5).astype(np.uint8), np.eye(4)),
                     root / "labels" / f"case{i}.nii.gz")
    return root


def _labelled_pngs(root: Path, labelled: int, unlabelled: int = 0) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(labelled + unlabelled):
        Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(root / "images" / f"case{i}.png")
        if i < labelled:
            Image.fromarray(((rng.random((6, 5)) > 0.5) * 255).astype(np.uint8)).save(root / "masks" / f"case{i}.png")
    return root


@pytest.mark.parametrize("write", [_labelled_volumes, _labelled_pngs], ids=["nifti", "png"])
def test_four_labelled_cases_hold_one_out_for_validation(tmp_path, write):
    """Every 5th labelled case is for validation: 4 labelled volumes had none, and every fit's default
    --val-split val was refused; the last one is held out now, as nnU-Net and MONAI hold one out."""
    dataset = open_dataset(write(tmp_path, 4))
    assert [c.rsplit("/", 1)[-1] for c in dataset.split("val")] == ["case3"]
    assert [c.rsplit("/", 1)[-1] for c in dataset.split("train")] == ["case0", "case1", "case2"]


def test_one_labelled_case_says_why_there_is_no_validation_case(tmp_path):
    dataset = open_dataset(_labelled_volumes(tmp_path, 1, unlabelled=1))
    with pytest.raises(DataError, match=r"split 'val' .* is empty: it holds every 5th labelled subject .* has 1 "
                                        r"labelled subject\(s\); label another"):
        dataset.split("val")


def _labelled_series(root: Path, labelled: int, unlabelled: int = 0) -> Path:
    from test_dicom import arrays, write_label, write_series

    for i in range(labelled + unlabelled):
        image, label = arrays(i, (2, 6, 5))
        series = write_series(root / "images" / f"case{i}", image, uid=f"1.2.3.{i}")
        if i < labelled:
            write_label(root / "labels" / f"case{i}.nii.gz", label, series)
    return root


@pytest.mark.parametrize("write", [_labelled_volumes, _labelled_pngs, _labelled_series],
                         ids=["nifti", "png", "dicom"])
def test_images_without_a_label_are_in_test_in_every_reader(tmp_path, write):
    """The 2D image folder put its unlabelled images in train (and one in val, which every fit then
    refused as a validation case without a label), the NIfTI and DICOM readers in test: all in
    test now, outside train and val."""
    dataset = open_dataset(write(tmp_path, 3, unlabelled=3))
    short = {name: [c.rsplit("/", 1)[-1] for c in dataset.split(name)] for name in ("train", "val", "test")}
    assert short == {"train": ["case0", "case1"], "val": ["case2"], "test": ["case3", "case4", "case5"]}


def test_unlabelled_images_left_out_of_the_default_pool_are_said_and_join_it_when_named(tmp_path, caplog,
                                                                                      monkeypatch):
    monkeypatch.setattr(progress, "_said", {})
    dataset = open_dataset(_labelled_pngs(tmp_path, 6, unlabelled=2))  # 5 train, case4 val, 2 test
    labelled = select_labelled(dataset, n_cases=2)
    with caplog.at_level(logging.INFO, logger="fewsam"):
        pool = select_unlabelled(dataset, labelled, None, 0)
    assert [r.case_id for r in pool] == ["images/case2", "images/case3", "images/case5"]
    assert any("2 case(s) without a label lie outside the training split (in test) and are not in the "
               "unlabelled pool, as they may be held-out test images; --unlabeled-split test" in r.getMessage()
               for r in caplog.records)
    named = select_unlabelled(dataset, labelled, None, 0, split="test")
    assert [r.case_id for r in named] == ["images/case6", "images/case7"]


def test_an_nnunet_training_image_without_a_label_is_in_test_after_imagests(tmp_path):
    """Said to be "used as unlabelled cases", it was in no split at all: no --split or
    --unlabeled-split but "all" could name it."""
    volume = nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 2)).astype(np.float32), np.eye(4))
    for folder, case in (("imagesTr", "c1"), ("imagesTr", "c2"), ("imagesTr", "c3"), ("imagesTs", "t1")):
        (tmp_path / folder).mkdir(exist_ok=True)
        nib.save(volume, tmp_path / folder / f"{case}_0000.nii.gz")
    (tmp_path / "labelsTr").mkdir()
    for case in ("c1", "c3"):
        nib.save(nib.Nifti1Image(np.zeros((6, 5, 2), np.uint8), np.eye(4)), tmp_path / "labelsTr" / f"{case}.nii.gz")
    (tmp_path / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, '
                                           '"file_ending": ".nii.gz"}')
    dataset = open_dataset(tmp_path)
    assert (dataset.split("train"), dataset.split("val"), dataset.split("test")) == (["c1"], ["c3"], ["t1", "c2"])


@pytest.mark.parametrize("layout", ["nnunet", "plain", "msd-listed"])
def test_the_channel_files_left_out_of_a_multi_channel_case_are_said(tmp_path, caplog, monkeypatch, layout):
    """An nnU-Net case of two channels (T2 _0000 + ADC _0001) was read as its _0000 file, the ADC
    left out without a word (a 4D file's channels are said)."""
    monkeypatch.setattr(progress, "_said", {})
    images, labels = ("images", "labels") if layout == "plain" else ("imagesTr", "labelsTr")
    (tmp_path / images).mkdir()
    (tmp_path / labels).mkdir()
    volume = nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 2)).astype(np.float32), np.eye(4))
    for case in ("p1", "p2"):
        for channel in ("0000", "0001", "0002"):
            nib.save(volume, tmp_path / images / f"{case}_{channel}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((6, 5, 2), np.uint8), np.eye(4)), tmp_path / labels / f"{case}.nii.gz")
    spec = {"channel_names": {"0": "T2", "1": "ADC", "2": "DWI"}, "labels": {"background": 0, "a": 1},
            "file_ending": ".nii.gz"}
    if layout == "msd-listed":  # nnU-Net v1: dataset.json lists imagesTr/p1.nii.gz for p1_0000.nii.gz ...
        spec = {"modality": spec["channel_names"], "labels": {"0": "background", "1": "a"},
                "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                             for c in ("p1", "p2")]}
    if layout != "plain":
        (tmp_path / "dataset.json").write_text(json.dumps(spec))
    with caplog.at_level(logging.INFO, logger="fewsam"):
        dataset = open_dataset(tmp_path)
    assert dataset.split("all") == ["p1", "p2"]
    assert any("its cases have 3 channel files (p1_0000.nii.gz, p1_0001.nii.gz, ...); fewsam segments channel 0 "
               "(_0000) only" in r.getMessage() for r in caplog.records)


def _nnunet_with_ending(root: Path, ending: str, names: list[str]) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    volume = nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 2)).astype(np.float32), np.eye(4))
    for name in names:
        if name.endswith(".mha"):
            sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 5, 6), np.float32)), str(root / "imagesTr" / name))
        else:
            nib.save(volume, root / "imagesTr" / name)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1},
                                                   "file_ending": ending}))
    return root


def test_a_file_ending_no_image_has_is_named_not_said_to_be_no_images(tmp_path):
    """dataset.json copied from another set (".nii") beside .nii.gz files: "no NIfTI images found"
    of a full imagesTr, now the ending to set."""
    root = _nnunet_with_ending(tmp_path, ".nii", ["a_0000.nii.gz", "b_0000.nii.gz"])
    with pytest.raises(DataError, match=r"says file_ending '.nii', but imagesTr holds .nii.gz files; set file_ending "
                                        r"to '.nii.gz'"):
        open_dataset(root)


def test_a_prediction_of_a_nii_set_is_written_in_its_file_ending(tmp_path):
    """nnU-Net writes a prediction in its dataset's file_ending: a set of .nii files got .nii.gz ones from fewsam,
    which nnU-Net's tools, looking for <case>.nii, do not find."""
    root = _nnunet_with_ending(tmp_path / "data", ".nii", ["a_0000.nii", "b_0000.nii"])
    case = open_dataset(root).load("a")
    written = write_prediction(case, np.ones(case.image.shape[:3], np.uint8), tmp_path / "pred")
    assert written == tmp_path / "pred" / "a.nii"
    assert written.read_bytes()[:2] != b"\x1f\x8b"  # not gzip: a .nii file as nibabel and ITK expect it
    assert np.array_equal(read_prediction(case, tmp_path / "pred"), np.ones(case.image.shape[:3], np.uint8))


def test_images_of_another_ending_than_file_ending_are_said_to_be_left_out(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress, "_said", {})
    root = _nnunet_with_ending(tmp_path, ".nii.gz", ["a_0000.nii.gz", "b_0000.nii", "c_0000.mha"])
    with caplog.at_level(logging.INFO, logger="fewsam"):
        assert open_dataset(root).split("all") == ["a"]
    assert any("2 file(s) end otherwise than dataset.json's file_ending '.nii.gz' (b_0000.nii, c_0000.mha) and are "
               "not read" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("classes_json", [None, {"1": "lesion"}], ids=["generic", "classes.json"])
def test_a_colour_image_is_read_in_colour_whatever_the_first_image_is(tmp_path, classes_json):
    """The folder's colour was decided by its first image (and a classes.json without "rgb" read every
    image grey): a colour picture after a grey one was read as grey without a word."""
    from PIL import Image

    root = _labelled_pngs(tmp_path, 2)  # grey images: case0 first
    colour = _colour_pixels((6, 5))
    Image.fromarray(colour).save(root / "images" / "case1.png")
    if classes_json:
        (root / "classes.json").write_text(json.dumps(classes_json))
    dataset = open_dataset(root)
    assert dataset.load("images/case0").image.shape == (1, 6, 5)
    assert np.array_equal(dataset.load("images/case1").image[0], colour.astype(np.float32))


def test_a_budget_beyond_the_training_split_names_the_cases_held_for_validation(tmp_path):
    dataset = open_dataset(_labelled_volumes(tmp_path, 4))
    with pytest.raises(DataError, match=r"the training split of .* has 3 cases \(1 more labelled case\(s\) are in "
                                        r"'val', for validation\); choose at most 3"):
        select_labelled(dataset, n_cases=4)


def test_a_patients_images_are_validated_or_trained_on_together(tmp_path):
    """The split went by image: patient P1's second image was in val and its other two in train, so
    validation scored the model on a patient it had learned; every 5th patient goes to val now."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,mask,patient"]
    for patient in range(3):
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(tmp_path / "img" / f"p{patient}_{k}.png")
            mask = ((rng.random((6, 5)) > 0.5) * 255).astype(np.uint8)
            Image.fromarray(mask).save(tmp_path / "msk" / f"p{patient}_{k}.png")
            rows.append(f"img/p{patient}_{k}.png,msk/p{patient}_{k}.png,P{patient}")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    dataset = open_dataset(tmp_path)
    assert dataset.split("val") == ["img/p2_0", "img/p2_1", "img/p2_2"]
    assert {dataset.subject_of(c) for c in dataset.split("train")} == {"P0", "P1"}


def test_a_flat_folder_of_fairseg_files_holds_one_out_for_validation(tmp_path):
    """Every npz in root was "train": no val, and every fit's default --val-split val refused."""
    from test_readers import make_npz

    for i in range(1, 5):
        make_npz(tmp_path / f"data_{i}.npz")
    dataset = open_dataset(tmp_path)
    assert (dataset.split("train"), dataset.split("val")) == (["data_1", "data_2", "data_3"], ["data_4"])


def test_a_dicom_series_beside_its_localizer_is_read_and_the_localizer_said(tmp_path, caplog, monkeypatch):
    """A scanner export puts the scout images (a series of 1 to 3 files) beside the series: the folder
    was refused as holding two series; the series is read, the localizer said."""
    from test_dicom import arrays, write_series

    monkeypatch.setattr(progress, "_said", {})
    image, _ = arrays(0, (5, 6, 5))
    write_series(tmp_path / "scout", image[:1] + 7, uid="1.2.3.9")
    write_series(tmp_path / "case" / "s", image, uid="1.2.3.1")
    (tmp_path / "scout" / "slice1.dcm").rename(tmp_path / "case" / "s" / "scout1.dcm")
    with caplog.at_level(logging.INFO, logger="fewsam"):
        case = open_dataset(tmp_path / "case").load("s")
    assert np.array_equal(case.image, image.astype(np.float32))
    assert any("1 localizer series (1 file(s) of at most 3 slices) beside its series of 5 slices in 5 file(s) are left out"
               in r.getMessage() for r in caplog.records)
    write_series(tmp_path / "second", image[:4], uid="1.2.3.5")
    for path in (tmp_path / "second").iterdir():
        path.rename(tmp_path / "case" / "s" / f"t2_{path.name}")
    with pytest.raises(DataError, match=r"holds 3 DICOM series; put each series in its own folder .* of 5 file"):
        open_dataset(tmp_path / "case").load("s")


def test_a_label_named_as_its_image_file_is_found(tmp_path):
    """images/a_0000.nii.gz + labels/a_0000.nii.gz (one name in both folders, as a 2D folder pairs its
    files): the label was said to match no image and the case read as unlabelled."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for case in ("a", "b"):
        image = nib.Nifti1Image(np.ones((6, 5, 2), np.float32), np.eye(4))
        nib.save(image, tmp_path / "images" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(np.ones((6, 5, 2), np.uint8), np.eye(4)), tmp_path / "labels" / f"{case}_0000.nii.gz")
    dataset = open_dataset(tmp_path)
    assert dataset.split("train") == ["a"] and dataset.split("val") == ["b"]
    assert dataset.load("a").label.max() == 1


def test_an_nnunet_label_named_otherwise_than_its_case_is_named(tmp_path, caplog, monkeypatch):
    """labelsTr/a_0000.nii.gz (nnU-Net wants a.nii.gz): only "no label file" was said, not which file
    was there instead."""
    monkeypatch.setattr(progress, "_said", {})
    root = _nnunet_with_ending(tmp_path, ".nii.gz", ["a_0000.nii.gz"])
    nib.save(nib.Nifti1Image(np.ones((6, 5, 2), np.uint8), np.eye(4)), root / "labelsTr" / "a_0000.nii.gz")
    with caplog.at_level(logging.INFO, logger="fewsam"):
        open_dataset(root)
    assert any("1 label file(s) match no image and are not used (a_0000.nii.gz); name a label as its image's case "
               "(<case>.nii.gz)" in r.getMessage() for r in caplog.records)


def test_fewer_training_cases_than_numtraining_are_said(tmp_path, caplog, monkeypatch):
    """A copy that stopped part way: nnU-Net's dataset check says so, fewsam fitted on what was there."""
    monkeypatch.setattr(progress, "_said", {})
    root = _nnunet_with_ending(tmp_path, ".nii.gz", ["a_0000.nii.gz", "b_0000.nii.gz"])
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "numTraining": 3}))
    with caplog.at_level(logging.INFO, logger="fewsam"):
        open_dataset(root)
    assert any("says numTraining 3, and 2 training case(s) are there" in r.getMessage() for r in caplog.records)


def test_images_not_named_as_channels_beside_ones_that_are_are_cases(tmp_path, caplog, monkeypatch):
    """images/a_0000.nii.gz beside b.nii.gz: b was left out without a word (and its label said to match
    no image); a channel file without its case's _0000 is said."""
    monkeypatch.setattr(progress, "_said", {})
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    volume = nib.Nifti1Image(np.ones((6, 5, 2), np.float32), np.eye(4))
    for name in ("a_0000", "a_0001", "b", "c_0001"):
        nib.save(volume, tmp_path / "images" / f"{name}.nii.gz")
    for case in ("a", "b"):
        nib.save(nib.Nifti1Image(np.ones((6, 5, 2), np.uint8), np.eye(4)), tmp_path / "labels" / f"{case}.nii.gz")
    with caplog.at_level(logging.INFO, logger="fewsam"):
        dataset = open_dataset(tmp_path)
    assert dataset.split("all") == ["a", "b"] and dataset.has_label("b")
    assert any("1 channel file(s) have no _0000 file of their case (c_0001.nii.gz)" in r.getMessage()
               for r in caplog.records)
