"""Prediction files: each format family written back in the input's own form, and read again."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import shared_data
from fewsam import progress
from fewsam.data import ClassMap, open_dataset, read_prediction, write_prediction
from fewsam.data.readers.nifti import slice_axis
from fewsam.errors import DataError
from test_readers import make_npz, make_nnunet, save_png, volume


def _random_pred(case, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes + 1, case.image.shape[:3]).astype(np.uint8)


def test_h5_slice_and_volume(tmp_path):
    ds = open_dataset(shared_data("acdc"))
    for cid, stored_ndim in (("patient099_frame01_slice_15", 2), ("patient028_frame01", 3)):
        case = ds.load(cid)
        pred = _random_pred(case, 3)
        path = write_prediction(case, pred, tmp_path / "pred")
        assert path == tmp_path / "pred" / f"{cid}.h5"
        with h5py.File(path) as f:
            assert f["pred"].ndim == stored_ndim and f["pred"].dtype == np.uint8
        np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", ds.class_map), pred)


def test_nifti_keeps_the_input_geometry(tmp_path):
    rng = np.random.default_rng(0)
    image, label = volume(rng, (5, 9, 7))
    root = make_nnunet(tmp_path / "data", {"v": (image, label)}, zooms=(0.7, 0.8, 6.0))
    case = open_dataset(root).load("v")
    pred = _random_pred(case, 2)
    path = write_prediction(case, pred, tmp_path / "pred")
    assert path.name == "v.nii.gz"
    written, source = nib.load(str(path)), nib.load(str(root / "imagesTr" / "v_0000.nii.gz"))
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), pred.transpose(2, 1, 0))
    a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(root / "imagesTr" / "v_0000.nii.gz"))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), pred)


@pytest.mark.parametrize("shape, zooms, axis", [
    ((6, 12, 10), (4.0, 0.5, 0.5), 0),   # sagittal slices stored along x
    ((12, 6, 10), (0.5, 4.0, 0.5), 1),   # coronal slices stored along y
    ((12, 10, 6), (0.5, 0.5, 4.0), 2),   # the usual axial storage
    ((6, 12, 10), (1.0, 1.0, 1.0), 2),   # isotropic or unknown spacing keeps z
    ((6, 12, 10), (1.2, 1.0, 1.0), 2),   # a slight anisotropy is no slice direction
    ((6, 12, 1), (4.0, 0.5, 0.5), 2),    # one slice is one slice, whatever its voxel sizes
    ((1, 12, 10), (0.5, 0.5, 0.5), 0),   # ... also when stored along x
])
def test_slice_axis_is_the_thick_voxel_axis(shape, zooms, axis):
    assert slice_axis(shape, list(zooms)) == axis


def test_a_series_stored_with_thick_x_voxels_is_cut_along_x_and_written_back(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress, "_said", {})
    rng = np.random.default_rng(0)
    stored = {"image": rng.random((6, 12, 10), dtype=np.float32),
              "label": rng.integers(0, 3, (6, 12, 10)).astype(np.uint8)}
    root = tmp_path / "data"
    for folder, key in (("images", "image"), ("labels", "label")):
        (root / folder).mkdir(parents=True)
        nib.save(nib.Nifti1Image(stored[key], np.diag([4.0, 0.5, 0.5, 1.0])), root / folder / "sag.nii.gz")
    dataset = open_dataset(root)
    with caplog.at_level(logging.INFO, logger="fewsam"):
        case = dataset.load("sag")
    # six sagittal slices of (z, y) pixels, 4 mm apart
    assert case.image.shape == (6, 10, 12) and dataset.num_slices("sag") == 6
    np.testing.assert_allclose(case.image[2], stored["image"][2].T)
    np.testing.assert_array_equal(case.label[4], stored["label"][4].T)
    assert case.spacing == pytest.approx((4.0, 0.5, 0.5))
    assert any("cut along x" in r.getMessage() for r in caplog.records)
    pred = _random_pred(case, 2)
    path = write_prediction(case, pred, tmp_path / "pred")
    written = nib.load(str(path))
    assert written.shape == (6, 12, 10)
    np.testing.assert_allclose(written.affine, np.diag([4.0, 0.5, 0.5, 1.0]))
    np.testing.assert_array_equal(np.asarray(written.dataobj)[3], pred[3].T)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), pred)


def test_nifti_scaled_and_4d_inputs_write_plain_3d_labels(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    img = nib.Nifti1Image(np.ones((4, 3, 2, 2), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_slope_inter(2.0, 10.0)
    nib.save(img, tmp_path / "imagesTr" / "x_0000.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), np.uint8), img.affine), tmp_path / "labelsTr" / "x.nii.gz")
    (tmp_path / "dataset.json").write_text('{"labels": {"background": 0, "a": 1}}')
    case = open_dataset(tmp_path).load("x")
    assert case.image.shape == (2, 3, 4) and case.image.max() == 12.0
    pred = np.ones((2, 3, 4), np.uint8)
    path = write_prediction(case, pred, tmp_path / "pred")
    written = nib.load(str(path))
    assert written.shape == (4, 3, 2)
    np.testing.assert_array_equal(written.get_fdata(), pred.transpose(2, 1, 0))


@pytest.mark.parametrize("folder, case_id, pixels", [
    ("busi", "benign/benign (1)", {0, 255}),
    ("multisite/Fundus", "Domain1/test/ROIs/image/gdrishtiGS_001", {0, 128, 255}),
    ("multisite/ProstateSlice", "BIDMC/train/image/00_00", {0, 255}),
])
def test_png_uses_the_dataset_coding(tmp_path, folder, case_id, pixels):
    ds = open_dataset(shared_data(folder))
    case = ds.load(case_id)
    path = write_prediction(case, case.label, tmp_path)
    assert path == tmp_path / case.rel_path
    written = np.asarray(Image.open(path))
    assert written.ndim == 2 and set(np.unique(written)) == pixels
    source_mask = case.rel_path.replace("/image/", "/mask/").replace(".png", "_mask.png" if folder == "busi" else ".png")
    np.testing.assert_array_equal(written, np.asarray(Image.open(ds.root / source_mask).convert("L")))
    np.testing.assert_array_equal(read_prediction(case, tmp_path, ds.class_map), case.label)


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_png_round_trip(h, w, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fundus_data"
        save_png(root / "images" / "a.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mask = rng.choice(np.array([0, 128, 255], np.uint8), (h, w))
        save_png(root / "masks" / "a.png", mask)
        ds = open_dataset(root)
        case = ds.load("images/a")
        assert ds.class_map.names == {1: "rim", 2: "cup"}
        np.testing.assert_array_equal(case.label[0], np.select([mask == 0, mask == 128], [2, 1], 0))
        pred = rng.integers(0, 3, (1, h, w)).astype(np.uint8)
        write_prediction(case, pred, Path(tmp) / "pred")
        np.testing.assert_array_equal(read_prediction(case, Path(tmp) / "pred"), pred)


def test_npz_writes_key_pred(tmp_path):
    make_npz(tmp_path / "data" / "data_00001.npz")
    case = open_dataset(tmp_path / "data").load("data_00001")
    pred = _random_pred(case, 2)
    path = write_prediction(case, pred, tmp_path / "pred")
    with np.load(path) as f:
        np.testing.assert_array_equal(f["pred"], pred[0])
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), pred)


def test_errors_and_atomic_overwrite(tmp_path):
    ds = open_dataset(shared_data("acdc"))
    case = ds.load("patient099_frame01_slice_15")
    out = tmp_path / "a" / "b"
    with pytest.raises(DataError, match="not found"):
        read_prediction(case, out)
    with pytest.raises(DataError, match="shape"):
        write_prediction(case, np.zeros((1, 3, 3), np.uint8), out)
    write_prediction(case, np.full(case.image.shape, 7, np.uint8), out)
    with pytest.raises(DataError, match=r"prediction values \[7\] in .*slice_15.h5"):
        read_prediction(case, out, ds.class_map)
    write_prediction(case, np.zeros(case.image.shape, np.uint8), out)
    assert [p.name for p in out.iterdir()] == ["patient099_frame01_slice_15.h5"]
    with pytest.raises(DataError, match="has shape"):
        read_prediction(replace(case, image=np.zeros((1, 3, 3), np.float32)), out)
    (out / "patient099_frame01_slice_15.h5").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read prediction"):
        read_prediction(case, out)


def test_png_prediction_with_foreign_values(tmp_path):
    ds = open_dataset(shared_data("busi"))
    case = ds.load("benign/benign (1)")
    save_png(tmp_path / case.rel_path, np.full(case.label.shape[1:], 17, np.uint8))
    with pytest.raises(DataError, match=r"prediction values \[17\]"):
        read_prediction(case, tmp_path, ClassMap({1: "lesion"}))
    with pytest.raises(DataError, match="cannot store"):
        write_prediction(case, np.full(case.label.shape, 2, np.uint8), tmp_path)


@pytest.mark.parametrize("ending, written_as", [(".mha", ".mha"), (".nrrd", ".nrrd"), (".mhd", ".mha")])
def test_metaimage_and_nrrd_volumes_read_and_predict_in_their_own_format(tmp_path, ending, written_as):
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.random((4, 9, 7)).astype(np.float32))
    label = sitk.GetImageFromArray(rng.integers(0, 3, (4, 9, 7)).astype(np.uint8))
    for item in (image, label):
        item.SetSpacing((0.7, 0.8, 3.0))
        item.SetOrigin((-12.0, 30.5, 7.0))
        item.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    sitk.WriteImage(image, str(root / "images" / f"c1{ending}"))
    sitk.WriteImage(label, str(root / "labels" / f"c1{ending}"))
    dataset = open_dataset(root)
    assert dataset.layout == "nifti" and dataset.class_map.names == {1: "class1", 2: "class2"}
    case = dataset.load("c1")
    np.testing.assert_allclose(case.image, sitk.GetArrayFromImage(image))
    np.testing.assert_array_equal(case.label, sitk.GetArrayFromImage(label))
    assert case.spacing == pytest.approx((3.0, 0.8, 0.7)) and dataset.num_slices("c1") == 4
    sitk.WriteImage(image, str(tmp_path / "as_nifti.nii.gz"))  # ITK's own LPS -> RAS conversion
    np.testing.assert_allclose(case.meta["affine"], nib.load(str(tmp_path / "as_nifti.nii.gz")).affine, atol=1e-5)
    pred = _random_pred(case, 2)
    path = write_prediction(case, pred, tmp_path / "pred")
    assert path.name == f"c1{written_as}"
    written = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), pred)
    for got, want in ((written.GetSpacing(), image.GetSpacing()), (written.GetOrigin(), image.GetOrigin()),
                      (written.GetDirection(), image.GetDirection())):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), pred)


def test_nnunet_dataset_with_mha_files(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "Dataset001"
    for folder, name, array in (("imagesTr", "a_0000", rng.random((3, 8, 8)).astype(np.float32)),
                                ("labelsTr", "a", rng.integers(0, 2, (3, 8, 8)).astype(np.uint8))):
        (root / folder).mkdir(parents=True)
        sitk.WriteImage(sitk.GetImageFromArray(array), str(root / folder / f"{name}.mha"))
    (root / "dataset.json").write_text('{"channel_names": {"0": "MR"}, "labels": {"background": 0, "gland": 1}, '
                                       '"numTraining": 1, "file_ending": ".mha"}')
    dataset = open_dataset(root)
    assert dataset.class_map.names == {1: "gland"} and dataset.entries["a"].rel_path == "a.mha"
    assert dataset.load("a").image.shape == (3, 8, 8)


def test_an_nnunet_bmp_set_reads_grey_bmp_labels_and_scores_nnunets_bmp_predictions(tmp_path):
    """A grey 8-bit BMP is a palette image, which ITK expanded to three equal colour channels: its label was
    refused as overlapping one-hot channels. nnU-Net writes a .bmp set's predictions as .bmp, which evaluate
    did not find beside the .png it names them."""
    from fewsam.evaluate import evaluate

    rng = np.random.default_rng(3)
    root = tmp_path / "Dataset002"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (tmp_path / "nnunet").mkdir()
    label = np.zeros((20, 24), np.uint8)
    label[5:12, 3:15], label[14:18, 2:6] = 1, 2
    for case in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(root / "imagesTr" / f"{case}_0000.bmp")
        Image.fromarray(label).save(root / "labelsTr" / f"{case}.bmp")
        Image.fromarray(label).save(tmp_path / "nnunet" / f"{case}.bmp")
    (root / "dataset.json").write_text('{"channel_names": {"0": "x"}, "labels": {"background": 0, "a": 1, "b": 2}, '
                                       '"numTraining": 2, "file_ending": ".bmp"}')
    dataset = open_dataset(root)
    np.testing.assert_array_equal(dataset.load("a").label, label[None])
    assert dataset.load("a").image.shape == (1, 20, 24)
    (tmp_path / "cases.list").write_text("a\nb\n")
    scores = evaluate(tmp_path / "nnunet", root, split=str(tmp_path / "cases.list"), show_progress=False)
    assert scores["mean"]["dice"] == pytest.approx(1.0)
