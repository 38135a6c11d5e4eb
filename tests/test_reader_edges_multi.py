"""Input a medical-imaging user brings that a reader could misread: a folder holding several DICOM
series, nnU-Net channel files of one colour image, one-hot label volumes, dataset.json case lists."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from conftest import assert_one_line_error, run_fewsam, write_lv_png_folder
from test_dicom import arrays, write_series

from fewsam import api, progress
from fewsam.data import open_dataset
from fewsam.errors import DataError
from fewsam.methods import supervised


def write_two_series_in_one_folder(folder: Path) -> None:
    """A T1 and a T2 of one patient exported into one folder (files named by the exporter)."""
    t1, _ = arrays(0, (6, 6, 5))
    t2, _ = arrays(1, (5, 6, 5))
    write_series(folder, t1, uid="1.2.3.1", extra_tags={"0020|0011": "3", "0008|103e": "T1 MPRAGE"})
    write_series(folder / "t2", t2, uid="1.2.3.2", extra_tags={"0020|0011": "4", "0008|103e": "t2_tse"})
    for path in (folder / "t2").iterdir():
        path.rename(folder / f"t2_{path.name}")
    (folder / "t2").rmdir()


def test_a_folder_of_two_full_dicom_series_is_refused_naming_each_series(tmp_path):
    """The T1 and T2 of one patient in one folder are never stacked into one volume: the refusal
    names each series as a viewer shows it (number, description, UID) and says to split the folder."""
    write_two_series_in_one_folder(tmp_path / "data" / "p1")
    dataset = open_dataset(tmp_path / "data")
    with pytest.raises(DataError) as refusal:
        dataset.load("p1")
    message = str(refusal.value)
    for expected in ("holds 2 DICOM series", "series 3 'T1 MPRAGE' of 6 file(s)", "UID 1.2.3.1",
                     "series 4 't2_tse' of 5 file(s) such as t2_slice1.dcm", "UID 1.2.3.2",
                     "put each series in its own folder (p1/<series>/"):
        assert expected in message, message
    info = run_fewsam("info", "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert "unusable:" in info.stdout and "'T1 MPRAGE'" in info.stdout, info.stdout


def test_predict_on_a_folder_of_two_dicom_series_stops_with_one_error_line(tmp_path):
    """``fewsam predict`` reaches the mixed folder when it reads the case: one `error:` line naming
    both series, no prediction of a volume stacked from the two."""
    data = write_lv_png_folder(tmp_path / "png", 5, 255)
    options = api.FitOptions(data=data, run=tmp_path / "run", labeled_cases=1, cache=str(tmp_path / "cache"),
                             show_progress=False)
    api.fit("supervised", options, supervised.SupervisedConfig(
        image_size=32, channels=(4, 8, 16, 32), num_res_units=1, batch_size=1, steps=1, val_every=1))
    write_two_series_in_one_folder(tmp_path / "dicom" / "p1")
    result = run_fewsam("predict", str(tmp_path / "run"), "--data", str(tmp_path / "dicom"),
                        "--out", str(tmp_path / "pred"), cwd=tmp_path)
    assert_one_line_error(result, "holds 2 DICOM series")
    assert "'T1 MPRAGE'" in result.stderr and "'t2_tse'" in result.stderr
    assert not list((tmp_path / "pred").rglob("*.nii.gz"))


def test_two_dicom_series_each_in_its_own_folder_are_two_cases(tmp_path):
    """What the refusal asks for works: each series in a folder of its own is its own case."""
    t1, _ = arrays(0, (6, 6, 5))
    t2, _ = arrays(1, (5, 6, 5))
    write_series(tmp_path / "p1" / "t1", t1, uid="1.2.3.1")
    write_series(tmp_path / "p1" / "t2", t2, uid="1.2.3.2")
    dataset = open_dataset(tmp_path)
    assert sorted(dataset.entries) == ["p1/t1", "p1/t2"]
    np.testing.assert_array_equal(dataset.load("p1/t1").image, t1.astype(np.float32))
    np.testing.assert_array_equal(dataset.load("p1/t2").image, t2.astype(np.float32))


COLOUR_NAMES = [{"0": "R", "1": "G", "2": "B"}, {"0": "red", "1": "green", "2": "blue"}]


def write_colour_channel_dataset(root: Path, colour: np.ndarray, ending: str, channel_names: dict[str, str]) -> None:
    """nnU-Net v2 natural images stored as one file per channel: imagesTr/case0_0000 (R), _0001 (G),
    _0002 (B), each a grey (rows, cols) image; ``colour`` is (rows, cols, 3) uint8."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    label = (colour[..., 0] > 128).astype(np.uint8)
    for c in range(3):
        write_2d(root / "imagesTr" / f"case0_{c:04d}{ending}", colour[..., c])
    write_2d(root / "labelsTr" / f"case0{ending}", label)
    (root / "dataset.json").write_text(json.dumps({"channel_names": channel_names, "numTraining": 1,
                                                   "labels": {"background": 0, "road": 1}, "file_ending": ending}))


def write_2d(path: Path, pixels: np.ndarray) -> None:
    """A 2D image as a PNG, or as a one-slice NIfTI (rows along NIfTI y, as the reader gives them back)."""
    if path.name.endswith(".png"):
        Image.fromarray(pixels).save(path)
    else:
        nib.save(nib.Nifti1Image(pixels.T[..., None], np.eye(4)), path)


def colour_png_image(tmp_path: Path, colour: np.ndarray) -> np.ndarray:
    """The image array fewsam reads from ``colour`` saved as one colour PNG in an image/mask folder."""
    (tmp_path / "png" / "images").mkdir(parents=True)
    (tmp_path / "png" / "masks").mkdir()
    Image.fromarray(colour).save(tmp_path / "png" / "images" / "case0.png")
    Image.fromarray((colour[..., 0] > 128).astype(np.uint8) * 255).save(tmp_path / "png" / "masks" / "case0.png")
    return open_dataset(tmp_path / "png").load("images/case0").image


@pytest.mark.parametrize("ending", [".png", ".nii.gz"])
@pytest.mark.parametrize("channel_names", COLOUR_NAMES)
def test_rgb_channel_files_are_read_as_one_colour_image_as_a_colour_png_is(tmp_path, ending, channel_names):
    """case0_0000/_0001/_0002 under channel_names R, G, B were read as the R channel alone, in grey."""
    colour = np.random.default_rng(3).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_colour_channel_dataset(tmp_path / "nnunet", colour, ending, channel_names)
    case = open_dataset(tmp_path / "nnunet").load("case0")
    assert case.image.shape == (1, 12, 10, 3)
    np.testing.assert_array_equal(case.image, colour_png_image(tmp_path, colour))
    np.testing.assert_array_equal(case.label[0], colour[..., 0] > 128)


def test_a_colour_case_missing_a_channel_file_is_refused_naming_it(tmp_path):
    colour = np.random.default_rng(4).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_colour_channel_dataset(tmp_path / "data", colour, ".nii.gz", COLOUR_NAMES[0])
    (tmp_path / "data" / "imagesTr" / "case0_0002.nii.gz").unlink()
    with pytest.raises(DataError, match="names the channels R, G, B, and the case has no case0_0002.nii.gz"):
        open_dataset(tmp_path / "data").load("case0")


def test_other_channel_names_still_read_channel_0_alone(tmp_path):
    """T2 + ADC (nnU-Net's prostate) are no colour: channel 0 is read, as SAM sees one grey image."""
    colour = np.random.default_rng(5).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_colour_channel_dataset(tmp_path / "data", colour, ".nii.gz", {"0": "T2", "1": "ADC", "2": "DWI"})
    case = open_dataset(tmp_path / "data").load("case0")
    np.testing.assert_array_equal(case.image, colour[None, ..., 0].astype(np.float32))


def test_one_rgb_png_per_case_under_rgb_channel_names_stays_one_colour_image(tmp_path):
    """nnU-Net's own natural-image datasets keep a case's colour in one RGB PNG (case_0000.png)."""
    colour = np.random.default_rng(6).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_colour_channel_dataset(tmp_path / "data", colour, ".png", COLOUR_NAMES[0])
    for c in (1, 2):
        (tmp_path / "data" / "imagesTr" / f"case0_{c:04d}.png").unlink()
    Image.fromarray(colour).save(tmp_path / "data" / "imagesTr" / "case0_0000.png")
    image = open_dataset(tmp_path / "data").load("case0").image
    np.testing.assert_array_equal(image, colour_png_image(tmp_path, colour))


def one_hot(indices: np.ndarray, classes: int, background: bool) -> np.ndarray:
    """(..., channels) 0/1: channel c is class c (``background``: channel 0 is class 0), else c + 1."""
    first = 0 if background else 1
    return np.stack([indices == c for c in range(first, classes)], axis=-1).astype(np.uint8)


def write_nifti_case(root: Path, image: np.ndarray, label: np.ndarray) -> None:
    """images/c1.nii.gz and labels/c1.nii.gz, both on the identity affine."""
    for folder, data in (("images", image), ("labels", label)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), root / folder / "c1.nii.gz")


LABEL_XYZ = np.random.default_rng(7).integers(0, 3, (8, 7, 4))  # class indices 0-2 on a NIfTI (x, y, z) grid
IMAGE_XYZ = np.random.default_rng(8).random((8, 7, 4)).astype(np.float32)


@pytest.mark.parametrize("background", [True, False])
def test_a_one_hot_4d_nifti_label_is_read_as_class_indices(tmp_path, background):
    """A label of shape (x, y, z, classes) with 0/1 values, as MONAI writes one, was refused as not
    2D or 3D; with or without a background channel it is the class index of each voxel."""
    write_nifti_case(tmp_path, IMAGE_XYZ, one_hot(LABEL_XYZ, 3, background))
    dataset = open_dataset(tmp_path)
    assert dataset.class_map.names == {1: "class1", 2: "class2"}
    np.testing.assert_array_equal(dataset.load("c1").label, LABEL_XYZ.transpose(2, 1, 0))


def test_a_one_hot_label_as_an_itk_vector_image_is_read_as_class_indices(tmp_path):
    """SimpleITK (MONAI's ITK writer) stores the channels as vector components: NIfTI (x, y, z, 1, C)."""
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(IMAGE_XYZ.transpose(2, 1, 0)), str(tmp_path / "images" / "c1.nii.gz"))
    vector = sitk.GetImageFromArray(one_hot(LABEL_XYZ, 3, True).transpose(2, 1, 0, 3), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "labels" / "c1.nii.gz"))
    assert nib.load(tmp_path / "labels" / "c1.nii.gz").shape == (8, 7, 4, 1, 3)
    np.testing.assert_array_equal(open_dataset(tmp_path).load("c1").label, LABEL_XYZ.transpose(2, 1, 0))



@pytest.mark.parametrize("vector", [False, True])
def test_a_one_hot_prediction_is_scored_as_a_one_hot_label_is_read(tmp_path, vector):
    """MONAI's AsDiscrete(argmax=True, to_onehot=3) before SaveImage gives (x, y, z, 3) float 0/1, or (x, y, z, 1, 3)
    through its ITK writer: a label so stored was read as class indices, a prediction refused as not 2D or 3D."""
    from fewsam.data import read_prediction

    write_nifti_case(tmp_path / "data", IMAGE_XYZ, LABEL_XYZ.astype(np.uint8))
    (tmp_path / "pred").mkdir()
    channels = one_hot(LABEL_XYZ, 3, True).astype(np.float32)
    if vector:
        saved = sitk.GetImageFromArray(channels.transpose(2, 1, 0, 3), isVector=True)
        saved.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))  # the identity affine in ITK's LPS
        sitk.WriteImage(saved, str(tmp_path / "pred" / "c1.nii.gz"))
    else:
        nib.save(nib.Nifti1Image(channels, np.eye(4)), tmp_path / "pred" / "c1.nii.gz")
    dataset = open_dataset(tmp_path / "data")
    case = dataset.load("c1")
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", dataset.class_map), case.label)

def test_overlapping_one_hot_channels_are_refused_in_one_line(tmp_path):
    """Two classes on one voxel (nnU-Net's regions, a multi-label export) have no class index to read."""
    channels = one_hot(LABEL_XYZ, 3, False)
    channels[0, 0, 0] = 1
    write_nifti_case(tmp_path / "data", IMAGE_XYZ, channels)
    with pytest.raises(DataError, match=r"its one-hot channels overlap \(voxel \(0, 0, 0\) is in channels 0, 1\)"):
        open_dataset(tmp_path / "data").load("c1")
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(LABEL_XYZ.astype(np.uint8), np.eye(4)), tmp_path / "pred" / "c1.nii.gz")
    result = run_fewsam("evaluate", "--pred", str(tmp_path / "pred"), "--data", str(tmp_path / "data"),
                        "--split", "all", cwd=tmp_path)
    assert_one_line_error(result, "its one-hot channels overlap")


def test_a_4d_label_of_other_values_is_refused_as_no_one_hot(tmp_path):
    frames = np.stack([LABEL_XYZ, LABEL_XYZ], axis=-1).astype(np.uint8)  # a label per time frame
    write_nifti_case(tmp_path, IMAGE_XYZ, frames)
    with pytest.raises(DataError, match=r"2 volumes on its last axis with values other than 0 and 1 \(2\)"):
        open_dataset(tmp_path).load("c1")


def test_a_one_hot_label_of_a_dicom_series_is_read_as_class_indices(tmp_path):
    """A 4D NIfTI of one volume per class on the series' grid, beside a DICOM series."""
    image, label = arrays(9, (4, 6, 5))
    reference = write_series(tmp_path / "s1", image)
    channels = np.moveaxis(one_hot(label, 3, True), -1, 0)
    volumes = sitk.JoinSeries([sitk.GetImageFromArray(channel) for channel in channels])
    direction = np.eye(4)
    direction[:3, :3] = np.reshape(reference.GetDirection(), (3, 3))
    volumes.SetOrigin((*reference.GetOrigin(), 0.0))
    volumes.SetSpacing((*reference.GetSpacing(), 1.0))
    volumes.SetDirection(tuple(direction.ravel()))
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(volumes, str(tmp_path / "labels" / "s1.nii.gz"))
    np.testing.assert_array_equal(open_dataset(tmp_path).load("s1").label, label)


def write_listed_dataset(root: Path, folder: str, cases: dict[str, list[str]], listed: dict[str, Any]) -> None:
    """An nnU-Net v2 dataset whose dataset.json lists its training cases ("dataset"): the files of
    ``cases`` (case -> channel file names in ``folder``, labels in labelsTr/) hold random volumes."""
    rng = np.random.default_rng(10)
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for case, names in cases.items():
        for name in names:
            nib.save(nib.Nifti1Image(rng.random((8, 7, 3)).astype(np.float32), np.eye(4)), root / folder / name)
        label = rng.integers(0, 2, (8, 7, 3)).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    spec = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": len(listed),
            "file_ending": ".nii.gz", "dataset": listed}
    (root / "dataset.json").write_text(json.dumps(spec))


def listed_case(folder: str, case: str, channels: int = 1) -> dict[str, Any]:
    return {"images": [f"./{folder}/{case}_{c:04d}.nii.gz" for c in range(channels)],
            "label": f"./labelsTr/{case}.nii.gz"}


def test_dataset_json_listing_its_cases_is_read_as_listed(tmp_path, caplog, monkeypatch):
    """imagesTr holds a, b and c, dataset.json's "dataset" lists a and b: c was read as a case too."""
    monkeypatch.setattr(progress, "_said", {})
    files = {case: [f"{case}_0000.nii.gz"] for case in ("a", "b", "c")}
    write_listed_dataset(tmp_path, "imagesTr", files, {case: listed_case("imagesTr", case) for case in ("a", "b")})
    caplog.set_level(logging.INFO, logger="fewsam")
    dataset = open_dataset(tmp_path)
    assert dataset.split("all") == ["a", "b"]
    assert any("1 case(s) that dataset.json's 'dataset' does not list (c)" in r.getMessage() for r in caplog.records)
    case = dataset.load("b")
    expected = nib.load(tmp_path / "labelsTr" / "b.nii.gz").get_fdata().transpose(2, 1, 0)
    np.testing.assert_array_equal(case.label, expected)


def test_dataset_json_listing_files_outside_images_tr_is_found(tmp_path, monkeypatch):
    """Files listed in another folder (no imagesTr/), or by an absolute path with $VARS, as nnU-Net
    reads them: such a dataset was "no known data layout"."""
    monkeypatch.setenv("SCANS", str(tmp_path / "data" / "scans"))
    listed = {"a": listed_case("scans", "a"),
              "b": {"images": ["$SCANS/b_0000.nii.gz"], "label": "labelsTr/b.nii.gz"}}
    write_listed_dataset(tmp_path / "data", "scans", {c: [f"{c}_0000.nii.gz"] for c in "ab"}, listed)
    dataset = open_dataset(tmp_path / "data")
    assert dataset.layout == "nifti" and dataset.split("all") == ["a", "b"]
    image = nib.load(tmp_path / "data" / "scans" / "b_0000.nii.gz").get_fdata().transpose(2, 1, 0)
    np.testing.assert_allclose(dataset.load("b").image, image, rtol=1e-6)


def test_dataset_json_listing_a_missing_file_is_refused_in_one_line(tmp_path):
    listed = {case: listed_case("imagesTr", case) for case in ("a", "b")}
    write_listed_dataset(tmp_path / "data", "imagesTr", {"a": ["a_0000.nii.gz"]}, listed)
    result = run_fewsam("info", "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert_one_line_error(result, "'dataset' lists 2 file(s) that are not there")
    assert "labelsTr/b.nii.gz" in result.stderr and "imagesTr/b_0000.nii.gz" in result.stderr


def test_a_malformed_dataset_json_case_is_refused_naming_it(tmp_path):
    listed = {"a": listed_case("imagesTr", "a"), "b": {"image": "imagesTr/b_0000.nii.gz"}}
    write_listed_dataset(tmp_path, "imagesTr", {"a": ["a_0000.nii.gz"]}, listed)
    with pytest.raises(DataError, match="'dataset' entry 'b': .* is not a case like"):
        open_dataset(tmp_path)


def test_colour_channels_listed_by_dataset_json_are_read_as_one_colour_image(tmp_path):
    """Channel files named freely (red/green/blue) are found from the list, not from _0001 names."""
    colour = np.random.default_rng(11).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_colour_channel_dataset(tmp_path / "data", colour, ".nii.gz", COLOUR_NAMES[1])
    images = tmp_path / "data" / "imagesTr"
    for c, name in enumerate(("red", "green", "blue")):
        (images / f"case0_{c:04d}.nii.gz").rename(images / f"case0_{name}.nii.gz")
    spec = json.loads((tmp_path / "data" / "dataset.json").read_text())
    spec["dataset"] = {"case0": {"images": [f"imagesTr/case0_{name}.nii.gz" for name in ("red", "green", "blue")],
                                 "label": "labelsTr/case0.nii.gz"}}
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(spec))
    image = open_dataset(tmp_path / "data").load("case0").image
    np.testing.assert_array_equal(image, colour_png_image(tmp_path, colour))


def test_a_float_one_hot_label_with_rounding_noise_is_read_as_class_indices(tmp_path):
    """A one-hot label saved as float32 through a scale factor holds 0.99999994 for 1."""
    channels = one_hot(LABEL_XYZ, 3, True).astype(np.float32) * np.float32(0.99999994)
    write_nifti_case(tmp_path, IMAGE_XYZ, channels)
    np.testing.assert_array_equal(open_dataset(tmp_path).load("c1").label, LABEL_XYZ.transpose(2, 1, 0))
