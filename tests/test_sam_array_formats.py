"""The array files SAM fine-tuning code keeps its data in: MedSAM / LiteMedSAM npz (imgs, gts, spacing; predictions
as segs) and TransUNet / SAMed's Synapse (train_npz slices assembled per case, test_vol_h5 volumes), told from
Harvard-FairSeg's npz by their keys; read, described by info, predicted and scored."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from fewsam import progress
from fewsam.cli import app
from fewsam.data import open_dataset, read_prediction, write_prediction
from fewsam.data.writers import write_label
from fewsam.data.phantom import phantom_volume
from fewsam.errors import DataError
from fewsam.evaluate import evaluate
from fewsam.info import dataset_info

from test_command_logs import QUICK_FIT

SHAPE = (24, 28)


def write_medsam(root: Path, cases: int = 3, slices: int = 3) -> Path:
    """``cases`` CT volumes in CT/ (uint8 0-255, spacing in SimpleITK's x, y, z), a labelled colour and an
    unlabelled test image in 2D/, as MedSAM's preprocessing and the challenge's test set store them."""
    rng = np.random.default_rng(0)
    (root / "CT").mkdir(parents=True)
    (root / "2D").mkdir()
    for i in range(cases):
        image, label = phantom_volume(rng, slices, SHAPE)
        label[label == 3] = 0
        np.savez_compressed(root / "CT" / f"CT_Abd_FLARE22_Tr_{i:04d}.npz", imgs=(image * 255).astype(np.uint8),
                            gts=label, spacing=np.array([0.8, 0.7, 2.5]))
    colour = rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:9, 6:12] = 1
    np.savez_compressed(root / "2D" / "2DBox_Dermoscopy_0001.npz", imgs=colour, gts=mask)
    np.savez_compressed(root / "2D" / "2DBox_Dermoscopy_0002.npz", imgs=colour, boxes=np.array([[1, 2, 8, 9]]))
    return root


def write_synapse(root: Path, cases: tuple[str, ...] = ("case0005", "case0006", "case0007")) -> Path:
    """Slice files of each training case (written out of order, float labels as TransUNet's are) and one test
    volume."""
    rng = np.random.default_rng(1)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    for case in cases:
        image, label = phantom_volume(rng, 3, SHAPE)
        for z in (2, 0, 1):
            np.savez(root / "train_npz" / f"{case}_slice{z:03d}.npz", image=image[z], label=label[z].astype(np.float32))
    image, label = phantom_volume(rng, 4, SHAPE)
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"], f["label"] = image, label.astype(np.float32)
    return root


def test_medsam_npz_is_read_and_described(tmp_path):
    root = write_medsam(tmp_path / "medsam")
    ds = open_dataset(root)
    assert ds.layout == "medsam-npz"
    ct = [f"CT/CT_Abd_FLARE22_Tr_{i:04d}" for i in range(3)]
    assert ds.splits == {"train": ["2D/2DBox_Dermoscopy_0001", *ct[:2]], "val": ct[2:],
                         "test": ["2D/2DBox_Dermoscopy_0002"]}
    volume = ds.load("CT/CT_Abd_FLARE22_Tr_0001")
    with np.load(root / "CT" / "CT_Abd_FLARE22_Tr_0001.npz") as stored:
        np.testing.assert_array_equal(volume.image, stored["imgs"])  # 0-255 as stored: scaled later, per slice
        np.testing.assert_array_equal(volume.label, stored["gts"])
    assert volume.spacing == (2.5, 0.7, 0.8)  # SimpleITK's (x, y, z) as fewsam's (z, y, x)
    colour = ds.load("2D/2DBox_Dermoscopy_0001")
    assert colour.image.shape == (1, *SHAPE, 3) and colour.label.shape == (1, *SHAPE) and colour.spacing is None
    assert ds.load("2D/2DBox_Dermoscopy_0002").label is None and not ds.has_label("2D/2DBox_Dermoscopy_0002")
    info = dataset_info(root)
    assert info["layout"] == "medsam-npz" and "'segs'" in info["storage"]
    assert [(c["name"], c["stored_as"]) for c in info["classes"]] == [("background", 0), ("class1", 1), ("class2", 2)]
    assert info["splits"]["train"] == {"cases": 3, "slices": 7, "labelled": 3}
    result = CliRunner().invoke(app, ["info", str(root)])
    assert result.exit_code == 0 and "medsam-npz" in result.output, result.output


def test_unlabelled_medsam_files_are_for_prediction(tmp_path):
    root = tmp_path / "test_npz"
    root.mkdir()
    shapes = {"3DBox_CT_0566": (2, *SHAPE), "2DBox_Dermoscopy_0001": (*SHAPE, 3), "2DBox_XRay_0001": SHAPE}
    for name, shape in shapes.items():
        np.savez_compressed(root / f"{name}.npz", imgs=np.zeros(shape, np.uint8), boxes=np.zeros((1, 6)))
    ds = open_dataset(root)
    assert not ds.has_any_label() and ds.split("val") == ["2DBox_Dermoscopy_0001", "2DBox_XRay_0001", "3DBox_CT_0566"]
    assert ds.load("3DBox_CT_0566").image.shape == (2, *SHAPE) and ds.num_slices("3DBox_CT_0566") == 2
    assert ds.load("2DBox_XRay_0001").image.shape == (1, *SHAPE) and ds.num_slices("2DBox_Dermoscopy_0001") == 1


def test_medsam_predictions_are_segs_in_the_shape_of_gts_and_score_dice_1(tmp_path):
    root, pred = write_medsam(tmp_path / "medsam"), tmp_path / "pred"
    ds = open_dataset(root)
    for case_id in ds.split("val") + ["2D/2DBox_Dermoscopy_0001"]:
        case = ds.load(case_id)
        path = write_prediction(case, case.label, pred)
        with np.load(path) as written, np.load(root / case.rel_path) as stored:
            assert written.files == ["segs"] and written["segs"].shape == stored["gts"].shape
        np.testing.assert_array_equal(read_prediction(case, pred), case.label)
    result = evaluate(pred, root, "val", show_progress=False)
    assert result["mean"]["dice"] == pytest.approx(1.0)


def test_synapse_slices_are_assembled_in_slice_order_and_volumes_are_test(tmp_path):
    root = write_synapse(tmp_path / "synapse")
    ds = open_dataset(root)
    assert ds.layout == "synapse-npz"
    assert ds.splits == {"train": ["case0005", "case0006"], "val": ["case0007"], "test": ["case0001"]}
    case = ds.load("case0006")
    for z in range(3):
        with np.load(root / "train_npz" / f"case0006_slice{z:03d}.npz") as stored:
            np.testing.assert_array_equal(case.image[z], stored["image"])
            np.testing.assert_array_equal(case.label[z], stored["label"])
    assert case.label.dtype == np.uint8 and case.spacing is None and case.rel_path == "train_npz/case0006.npz"
    volume = ds.load("case0001")
    assert volume.image.shape == (4, *SHAPE) and volume.rel_path == "test_vol_h5/case0001.npy.h5"
    info = dataset_info(root)
    assert info["layout"] == "synapse-npz"
    assert [c["name"] for c in info["classes"]] == ["background", "class1", "class2", "class3"]
    assert info["splits"]["test"] == {"cases": 1, "slices": 4, "labelled": 1}
    assert list(open_dataset(root / "train_npz").entries) == ["case0005", "case0006", "case0007"]  # alone too
    assert open_dataset(root / "test_vol_h5").split("test") == ["case0001"]
    np.savez(root / "train_npz" / "case0005_slice1.npz", image=np.zeros(SHAPE), label=np.zeros(SHAPE))
    with pytest.raises(DataError, match="case0005_slice001.npz and .*case0005_slice1.npz are both slice 1"):
        open_dataset(root)


def test_synapse_predictions_npz_for_slice_cases_h5_for_volumes_score_dice_1(tmp_path):
    root, pred = write_synapse(tmp_path / "synapse"), tmp_path / "pred"
    ds = open_dataset(root)
    for case_id in ("case0007", "case0001"):
        case = ds.load(case_id)
        write_prediction(case, case.label, pred)
    with np.load(pred / "train_npz" / "case0007.npz") as written:
        assert written["pred"].shape == (3, *SHAPE)
    with h5py.File(pred / "test_vol_h5" / "case0001.npy.h5") as written:
        assert written["pred"].shape == (4, *SHAPE)
    for split in ("val", "test"):
        assert evaluate(pred, root, split, show_progress=False)["mean"]["dice"] == pytest.approx(1.0)


def write_synapse_test_volumes(root: Path, shape: tuple[int, int, int] = (3, 10, 12)) -> dict[str, np.ndarray]:
    """Two Synapse test volumes (``test_vol_h5/<case>.npy.h5``) whose organs lie off every axis' middle, so a
    prediction read mirrored or with two axes swapped scores below 1; returns each case's label."""
    (root / "test_vol_h5").mkdir(parents=True)
    rng = np.random.default_rng(2)
    labels = {}
    for case in ("case0001", "case0002"):
        label = np.zeros(shape, np.float32)
        label[:, 1:4, 2:9] = 1
        label[1:, 6:9, 8:11] = 2
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"], f["label"] = rng.random(shape).astype(np.float32), label
        labels[case] = label
    return labels


def save_as_transunet_test(folder: Path, case: str, image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                           z_spacing: int = 3) -> None:
    """What TransUNet's and SAMed's ``test_single_volume`` saves of a test volume: each (D, H, W) array as float32
    through SimpleITK's ``GetImageFromArray``, spacing (1, 1, z_spacing), ``<case>_img``, ``_pred``, ``_gt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for array, suffix in ((image, "_img"), (prediction, "_pred"), (label, "_gt")):
        itk = sitk.GetImageFromArray(array.astype(np.float32))
        itk.SetSpacing((1, 1, z_spacing))
        sitk.WriteImage(itk, f"{folder}/{case}{suffix}.nii.gz")


def test_transunet_test_predictions_of_synapse_volumes_are_read_voxel_for_voxel(tmp_path):
    """``<case>_pred.nii.gz`` beside ``_img`` and ``_gt`` in one folder, as TransUNet and SAMed leave them: a
    prediction equal to the label scores Dice 1 (read mirrored or transposed, it would not), one organ shifted
    by a voxel less."""
    root = tmp_path / "synapse"
    labels = write_synapse_test_volumes(root)
    for case, label in labels.items():
        save_as_transunet_test(tmp_path / "exact", case, np.zeros_like(label), label, label)
    result = CliRunner().invoke(app, ["evaluate", "--data", str(root), "--pred", str(tmp_path / "exact"), "--split",
                                      "test", "--json", str(tmp_path / "exact.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "exact.json").read_text())["mean"]["dice"] == pytest.approx(1.0)
    assert_a_shifted_organ_scores_less(tmp_path / "shifted", root, labels, save_as_transunet_test)


def assert_a_shifted_organ_scores_less(pred: Path, root: Path, labels: dict[str, np.ndarray],
                                       save: Callable[..., None]) -> None:
    """Saved by ``save`` into ``pred``, case0001's label scores Dice 1 in each class, case0002's shifted by a
    voxel less: read in the wrong axis order or mirrored, case0001 would not score 1."""
    for case, label in labels.items():
        shifted = np.roll(label, 1, axis=2) if case == "case0002" else label
        save(pred, case, np.zeros_like(label), label, shifted)
    cases = evaluate(pred, root, "test", show_progress=False)["cases"]
    dice = {c["case"]: [scores["dice"] for scores in c["per_class"].values()] for c in cases}
    assert dice["case0001"] == pytest.approx([1.0, 1.0])
    assert max(dice["case0002"]) < 0.9


def save_as_ssl4mis_3d_test(folder: Path, case: str, image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                            units: str | None = None) -> None:
    """What SSL4MIS's 3D ``test_all_case`` saves of a test volume: each array as it holds it (the h5 file's
    axes) through nibabel, ``Nifti1Image(array.astype(np.float32), np.eye(4))``, ``<case>_pred``, ``_img``,
    ``_gt``; ``units`` set as a writer that names them would."""
    folder.mkdir(parents=True, exist_ok=True)
    for array, suffix in ((prediction, "_pred"), (image, "_img"), (label, "_gt")):
        nifti = nib.Nifti1Image(array.astype(np.float32), np.eye(4))
        if units:
            nifti.header.set_xyzt_units(units)
        nib.save(nifti, f"{folder}/{case}{suffix}.nii.gz")


TEST_SCRIPT_SAVERS = {"SimpleITK": save_as_transunet_test, "nibabel": save_as_ssl4mis_3d_test}


@pytest.mark.parametrize("shape", [(3, 10, 12), (11, 11, 11)], ids=["non-cube", "cube"])
@pytest.mark.parametrize("writer", TEST_SCRIPT_SAVERS)
def test_test_script_predictions_saved_by_either_library_are_read_in_the_order_they_were_saved(
        tmp_path, writer, shape):
    """SSL4MIS's 3D test script saves ``<case>_pred.nii.gz`` with nibabel, the array in the h5 file's order,
    which SimpleITK reads reversed: so read, a non-cube would be refused for its shape and a cube scored
    transposed. The shape, and for a cube the header's writer, tells the two orders apart: the label scores
    Dice 1, a shifted organ less."""
    root = tmp_path / "synapse"
    labels = write_synapse_test_volumes(root, shape)
    assert_a_shifted_organ_scores_less(tmp_path / "pred", root, labels, TEST_SCRIPT_SAVERS[writer])


def test_a_cube_whose_header_names_no_writer_is_read_in_simpleitks_order_and_said(tmp_path, caplog, monkeypatch):
    """A cube reads in either axis order; a header that shows neither library (units of mm alone) leaves it to
    the test scripts' usual order, SimpleITK's, said once."""
    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level(logging.INFO, logger="fewsam")
    root = tmp_path / "synapse"
    labels = write_synapse_test_volumes(root, (11, 11, 11))
    for case, label in labels.items():
        save_as_ssl4mis_3d_test(tmp_path / "pred", case, label, label, label.transpose(), units="mm")
    assert evaluate(tmp_path / "pred", root, "test", show_progress=False)["mean"]["dice"] == pytest.approx(1.0)
    assert "its header does not settle which; read in SimpleITK's array order" in caplog.text


def test_a_synapse_volume_without_its_test_prediction_names_both_names(tmp_path):
    root = tmp_path / "synapse"
    labels = write_synapse_test_volumes(root)
    save_as_transunet_test(tmp_path / "pred", "case0001", labels["case0001"], labels["case0001"], labels["case0001"])
    with pytest.raises(DataError, match=r"prediction .*pred/test_vol_h5/case0002.npy.h5 \(or "
                                        r".*pred/case0002_pred.nii.gz\) for case case0002 not found"):
        evaluate(tmp_path / "pred", root, "test", show_progress=False)


def test_fairseg_npz_is_still_fairseg_and_image_label_npz_no_longer_is(tmp_path):
    fair = tmp_path / "fair"
    fair.mkdir()
    np.savez(fair / "data_001.npz", slo_fundus=np.ones(SHAPE, np.float32), disc_cup_mask=np.zeros(SHAPE, np.int8),
             race=0, gender=0)
    assert open_dataset(fair).layout == "fairseg-npz" and dataset_info(fair)["classes"][1]["stored_as"] == -1
    plain = tmp_path / "plain"
    plain.mkdir()
    np.savez(plain / "slice_a.npz", image=np.ones(SHAPE, np.float32), label=np.zeros(SHAPE, np.float32))
    ds = open_dataset(plain)  # was FairSeg, failing with "has no image key (slo_fundus or fundus_slo)"
    assert ds.layout == "synapse-npz" and ds.load("slice_a").image.shape == (1, *SHAPE)


def test_fit_fewshot_and_predict_on_medsam_npz(tiny_sam_phantom, tmp_path):
    root = write_medsam(tmp_path / "medsam")
    shutil.rmtree(root / "2D")  # the one labelled case a fit takes is then a CT volume holding both classes
    cache, run, pred = str(tmp_path / "cache"), tmp_path / "run", tmp_path / "pred"
    result = CliRunner().invoke(app, ["fit", "fewshot", "--data", str(root), "--cache", cache, "--out", str(run),
                                      *QUICK_FIT])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["predict", str(run), "--data", str(root), "--cache", cache, "--precision", "fp32",
                                      "--split", "val", "--out", str(pred)])
    assert result.exit_code == 0, result.output
    with np.load(pred / "CT" / "CT_Abd_FLARE22_Tr_0002.npz") as written:
        assert written.files == ["segs"] and written["segs"].shape == (3, *SHAPE)
    assert 0.0 <= evaluate(pred, root, "val", show_progress=False)["mean"]["dice"] <= 1.0


def test_a_label_written_back_replaces_gts_in_a_copy_and_a_slice_case_is_refused(tmp_path):
    """The studio's export writes a label as the dataset stores it: a MedSAM file's copy with new ``gts`` (its
    other arrays kept); a Synapse case assembled from slice files has no one file to copy, and is refused."""
    root, out = write_medsam(tmp_path / "medsam"), tmp_path / "export"
    ds = open_dataset(root)
    for case_id in ("CT/CT_Abd_FLARE22_Tr_0000", "2D/2DBox_Dermoscopy_0001"):
        case, entry = ds.load(case_id), ds.entries[case_id]
        flipped = np.ascontiguousarray(case.label[:, ::-1])
        path = write_label(case, flipped, out, ds.label_rel_path(entry), entry.image)
        with np.load(path) as written, np.load(entry.image) as stored:
            assert sorted(written.files) == sorted(stored.files)
            assert written["gts"].shape == stored["gts"].shape
        np.testing.assert_array_equal(open_dataset(out).load(case_id).label, flipped)
    synapse = open_dataset(write_synapse(tmp_path / "synapse"))
    with pytest.raises(DataError, match="assembled from 3 slice files"):
        synapse.label_rel_path(synapse.entries["case0005"])


def write_medsam_npy(root: Path) -> Path:
    """MedSAM's training folders: case A's slices (24 x 28 x 3 float 0-1, written out of order) with full-size gts,
    case B's with gts of half the size (MedSAM's low-resolution target), as 2 x 2 blocks of one value."""
    rng = np.random.default_rng(2)
    (root / "imgs").mkdir(parents=True)
    (root / "gts").mkdir()
    for case, scale in (("CT_Abd_A", 1), ("CT_Abd_B", 2)):
        for z in (2, 0, 1):
            grey = rng.random(SHAPE).astype(np.float32)
            np.save(root / "imgs" / f"{case}-{z:03d}.npy", np.repeat(grey[..., None], 3, axis=-1))
            small = np.zeros((SHAPE[0] // scale, SHAPE[1] // scale), np.uint8)
            small[z:z + 4, 2:6] = z + 1
            np.save(root / "gts" / f"{case}-{z:03d}.npy", small)
    return root


def test_medsam_npy_slices_are_stacked_and_small_gts_read_onto_the_image_grid(tmp_path):
    root, pred = write_medsam_npy(tmp_path / "npy"), tmp_path / "pred"
    ds = open_dataset(root)
    assert ds.layout == "medsam-npy" and list(ds.entries) == ["CT_Abd_A", "CT_Abd_B"]
    full = ds.load("CT_Abd_A")
    assert full.image.shape == (3, *SHAPE)  # grey repeated into RGB for SAM, read as the grey image it is
    for z in range(3):
        np.testing.assert_array_equal(full.image[z], np.load(root / "imgs" / f"CT_Abd_A-{z:03d}.npy")[..., 0])
        np.testing.assert_array_equal(full.label[z], np.load(root / "gts" / f"CT_Abd_A-{z:03d}.npy"))
    small = ds.load("CT_Abd_B")
    for z in range(3):
        stored = np.load(root / "gts" / f"CT_Abd_B-{z:03d}.npy")
        np.testing.assert_array_equal(small.label[z], np.repeat(np.repeat(stored, 2, axis=0), 2, axis=1))
    assert [c["name"] for c in dataset_info(root)["classes"]] == ["background", "class1", "class2", "class3"]
    write_prediction(small, small.label, pred)
    with np.load(pred / "CT_Abd_B.npz") as written:
        assert written.files == ["segs"] and written["segs"].shape == (3, *SHAPE)
    assert evaluate(pred, root, "val", show_progress=False)["mean"]["dice"] == pytest.approx(1.0)


@pytest.mark.parametrize("layout", ["synapse", "medsam-npy"])
def test_a_slice_file_holding_nan_is_the_file_named(tmp_path, layout):
    """A case kept in a file per slice named its first file for a NaN in any slice: the user was sent to
    a file with nothing wrong in it."""
    if layout == "synapse":
        root = write_synapse(tmp_path / "synapse")
        case, bad = "case0006", root / "train_npz" / "case0006_slice002.npz"
        np.savez(bad, image=np.full(SHAPE, np.nan, np.float32), label=np.zeros(SHAPE, np.uint8))
    else:
        root = write_medsam_npy(tmp_path / "npy")
        case, bad = "CT_Abd_A", root / "imgs" / "CT_Abd_A-001.npy"
        np.save(bad, np.full((*SHAPE, 3), np.nan, np.float32))
    with pytest.raises(DataError, match=rf"^{bad}: slice {2 if layout == 'synapse' else 1} of case {case} holds NaN"):
        open_dataset(root).load(case)


@pytest.mark.parametrize("damage", ["empty", "cut short"])
def test_a_medsam_case_file_that_is_no_npz_is_refused_not_left_out(tmp_path, damage):
    """A case file cut short by a download (or left empty) was said to hold no 'imgs' and left out: every
    split lost the case, and evaluate scored the others as if it were the whole set."""
    root = write_medsam(tmp_path / "medsam")
    bad = root / "CT" / "CT_Abd_FLARE22_Tr_0001.npz"
    bad.write_bytes(b"" if damage == "empty" else bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"cannot read {bad} \(truncated or not an npz\?\)"):
        open_dataset(root)


def test_a_case_whose_slice_numbers_skip_some_is_said(tmp_path, caplog, monkeypatch):
    """A slice file lost from the middle of a case made a volume of the others without a word, whose 3D
    distances then span the gap: said once, naming the case and the slice it lacks."""
    import logging

    from fewsam import progress

    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level(logging.INFO, logger="fewsam")
    root = write_synapse(tmp_path / "synapse")
    open_dataset(root)
    assert "skip some" not in caplog.text
    (root / "train_npz" / "case0006_slice001.npz").unlink()
    ds = open_dataset(root)
    assert ds.load("case0006").image.shape == (2, *SHAPE)
    assert "slice numbers of 1 case(s) skip some (case0006 lacks slice(s) 1)" in caplog.text
