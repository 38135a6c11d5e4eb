"""Files as MONAI, nnU-Net, scanners and annotation tools write them: read with the right voxels
and values, predictions written back on the input's own geometry, mistakes refused in one line."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from fewsam import progress
from fewsam.data import open_dataset, read_prediction, write_prediction
from fewsam.errors import DataError

from test_dicom import arrays, write_series

AFFINE = np.array([[-0.8, 0.0, 0.0, 10.0], [0.0, 0.9, 0.0, -5.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


def nifti_pair(root: Path, case: str, image: np.ndarray, label: np.ndarray, label_affine: np.ndarray,
               image_affine: np.ndarray = AFFINE) -> None:
    for folder, array, affine in (("images", image, image_affine), ("labels", label, label_affine)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, affine), root / folder / f"{case}.nii.gz")


def volume(seed: int = 0, shape=(8, 9, 5)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.integers(0, 3, size=shape).astype(np.uint8)


# ---------------------------------------------------------------- NIfTI label orientation


def test_a_label_stored_in_another_orientation_is_read_on_the_image_grid(tmp_path):
    image, label = volume()
    flipped_x = AFFINE.copy()
    flipped_x[0, 0], flipped_x[0, 3] = 0.8, 10.0 - 0.8 * 7  # same voxels, stored RAS instead of LAS
    nifti_pair(tmp_path, "flip", image, label[::-1].copy(), flipped_x)
    nifti_pair(tmp_path, "swap", image, label.transpose(1, 0, 2).copy(), AFFINE[:, [1, 0, 2, 3]])
    flipped_z = AFFINE.copy()
    flipped_z[2, 2], flipped_z[2, 3] = -3.0, 7.0 + 3.0 * 4
    nifti_pair(tmp_path, "four", image, label[:, :, ::-1, None].copy(), flipped_z)  # (x, y, z, 1)
    nifti_pair(tmp_path, "same", image, label, AFFINE)
    ds = open_dataset(tmp_path)
    for case in ("flip", "swap", "four", "same"):
        assert np.array_equal(ds.load(case).label, label.transpose(2, 1, 0)), case


def test_a_label_shifted_in_the_same_orientation_is_read_voxel_for_voxel(tmp_path):
    image, label = volume()
    shifted = AFFINE.copy()
    shifted[:3, 3] += 50.0
    nifti_pair(tmp_path, "c", image, label, shifted)
    assert np.array_equal(open_dataset(tmp_path).load("c").label, label.transpose(2, 1, 0))


def test_a_label_with_a_bare_affine_in_another_orientation_is_refused(tmp_path):
    image, label = volume()
    nifti_pair(tmp_path, "c", image, label, np.eye(4))  # np.eye: RAS at the origin, image LAS
    with pytest.raises(DataError, match=r"labels/c.nii.gz is oriented RAS .*image's affine"):
        open_dataset(tmp_path).load("c")


def test_a_label_whose_affine_has_a_zero_axis_is_refused(tmp_path):
    image, label = volume()
    nifti_pair(tmp_path, "c", image, label, AFFINE)
    broken = nib.load(tmp_path / "labels" / "c.nii.gz")
    broken.header.set_qform(None, code=0)
    broken.header["srow_z"] = [0.0, 0.0, 0.0, 7.0]  # a damaged header: no z axis
    nib.Nifti1Image(label, None, broken.header).to_filename(tmp_path / "labels" / "c.nii.gz")
    with pytest.raises(DataError, match=r"labels/c.nii.gz and its image have affines that are not both"):
        open_dataset(tmp_path).load("c")


def test_a_prediction_another_tool_saved_in_another_orientation_is_scored_on_the_image_grid(tmp_path):
    """Evaluate pairs predictions of any tool by path: one saved reoriented (RAS, as many tools do)
    was scored mirrored, voxel for voxel."""
    image, label = volume()
    nifti_pair(tmp_path / "data", "c", image, label, AFFINE)
    case = open_dataset(tmp_path / "data").load("c")
    canonical = nib.as_closest_canonical(nib.Nifti1Image(label, AFFINE))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    (tmp_path / "pred").mkdir()
    nib.save(canonical, tmp_path / "pred" / "c.nii.gz")
    assert np.array_equal(read_prediction(case, tmp_path / "pred"), case.label)
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "pred" / "c.nii.gz")
    with pytest.raises(DataError, match=r"prediction .*c.nii.gz is oriented RAS .*image's affine"):
        read_prediction(case, tmp_path / "pred")


def test_nnunet_region_based_labels_become_one_class_per_label_value(tmp_path, caplog, monkeypatch):
    """BraTS in nnU-Net: overlapping regions over label values 1-3. fewsam segments the values, each
    named as what its voxels are (value 1 is the whole tumour less its core, not the whole tumour); a
    region is their union, and the user is told so."""
    monkeypatch.setattr(progress, "_said", {})
    image, _ = volume()
    label = np.zeros(image.shape, np.uint8)
    label[2:8, 2:8, 1:3], label[3:7, 3:7, 1:3], label[4:6, 4:6, 1:3] = 1, 2, 3
    for folder, name, array in (("imagesTr", "c1_0000", image), ("labelsTr", "c1", label)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(array, AFFINE), tmp_path / folder / f"{name}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "FLAIR"}, "numTraining": 1, "file_ending": ".nii.gz",
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        "regions_class_order": [1, 2, 3]}))
    with caplog.at_level(logging.INFO, logger="fewsam"):
        dataset = open_dataset(tmp_path)
    assert dataset.class_map.names == {1: "whole tumor without tumor core", 2: "tumor core without enhancing tumor",
                                       3: "enhancing tumor"}
    assert set(np.unique(dataset.load("c1").label)) == {0, 1, 2, 3}
    assert any("region-based labels (whole tumor = [1, 2, 3], tumor core = [2, 3], enhancing tumor = [3])"
               in r.getMessage() for r in caplog.records)
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "FLAIR"}, "numTraining": 1, "labels": {"background": 0, "tumour": [1, 2], "core": [2]}}))
    assert open_dataset(tmp_path).class_map.names == {1: "tumour without core", 2: "core"}
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "FLAIR"}, "numTraining": 1, "labels": {"background": 0, "tumour": [1, "x"]}}))
    with pytest.raises(DataError, match=r"bad labels entry 'tumour'"):
        open_dataset(tmp_path)


def test_an_nnunet_training_image_without_a_label_is_said_and_left_unlabelled(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress, "_said", {})
    image, label = volume()
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for case in ("c1", "c2", "c3"):
        nib.save(nib.Nifti1Image(image, AFFINE), tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
    for case in ("c1", "c3"):
        nib.save(nib.Nifti1Image(label, AFFINE), tmp_path / "labelsTr" / f"{case}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    with caplog.at_level(logging.INFO, logger="fewsam"):
        dataset = open_dataset(tmp_path)
    assert any("1 training image(s) have no label file (c2)" in r.getMessage() for r in caplog.records)
    assert dataset.load("c2").label is None and dataset.load("c1").label is not None


# ---------------------------------------------------------------- 2D NIfTI and MetaImage


def test_a_2d_nifti_gets_a_2d_prediction_on_its_affine(tmp_path):
    image, label = volume(shape=(8, 9))
    nifti_pair(tmp_path / "data", "c", image, label, AFFINE)
    case = open_dataset(tmp_path / "data").load("c")
    assert case.image.shape == (1, 9, 8)
    path = write_prediction(case, case.label, tmp_path / "pred")
    written = nib.load(path)
    assert written.shape == (8, 9) and written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, AFFINE)
    assert np.array_equal(np.asarray(written.dataobj), label)
    assert np.array_equal(read_prediction(case, tmp_path / "pred"), case.label)


@pytest.mark.parametrize("ending", [".png", ".tif"])
def test_an_nnunet_2d_dataset_of_png_or_tiff_reads_and_gets_predictions_in_its_format(tmp_path, ending):
    """nnU-Net v2's 2D sets (its natural-image reader): imagesTr/<case>_0000.png, labelsTr/<case>.png
    with the class values; one slice per case, the prediction an image of the same kind."""
    rng = np.random.default_rng(4)
    root = tmp_path / "Dataset001_Polyp"
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True)
    labels = {}
    for i in range(5):
        labels[f"p{i}"] = rng.integers(0, 3, (9, 11)).astype(np.uint8)
        Image.fromarray(rng.integers(0, 256, (9, 11)).astype(np.uint8)).save(root / "imagesTr" / f"p{i}_0000{ending}")
        Image.fromarray(labels[f"p{i}"]).save(root / "labelsTr" / f"p{i}{ending}")
    Image.fromarray(np.full((9, 11), 7, np.uint8)).save(root / "imagesTs" / f"t0_0000{ending}")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "grey"}, "numTraining": 5,
                                                   "labels": {"background": 0, "polyp": 1, "wall": 2},
                                                   "file_ending": ending}))
    dataset = open_dataset(root)
    assert sorted(dataset.split("train") + dataset.split("val")) == [f"p{i}" for i in range(5)]
    assert dataset.split("test") == ["t0"]
    case = dataset.load("p1")
    expected = np.asarray(Image.open(root / "imagesTr" / f"p1_0000{ending}"), np.float32)
    assert case.image.shape == (1, 9, 11) and np.array_equal(case.image[0], expected)
    assert np.array_equal(case.label[0], labels["p1"])
    path = write_prediction(case, case.label, tmp_path / "pred")
    assert path.name == f"p1{ending}"
    assert np.array_equal(np.asarray(Image.open(path)), labels["p1"])
    assert np.array_equal(read_prediction(case, tmp_path / "pred"), case.label)


def test_png_files_in_a_plain_images_folder_are_not_taken_for_volumes(tmp_path):
    """Only a dataset.json that names .png makes the NIfTI reader take 2D images; an images/ +
    masks/ folder of PNGs stays the 2D image-folder layout."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((6, 7), 9, np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.eye(6, 7, dtype=np.uint8) * 255).save(tmp_path / "masks" / "a.png")
    assert type(open_dataset(tmp_path)).__name__ == "PngFolderDataset"


def test_a_2d_colour_metaimage_is_one_rgb_slice_and_its_prediction_keeps_the_geometry(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(9, 8, 3)).astype(np.uint8)
    mask = rng.integers(0, 2, size=(9, 8)).astype(np.uint8)
    root = tmp_path / "data"
    for folder, array, vector in (("images", rgb, True), ("labels", mask, False)):
        (root / folder).mkdir(parents=True)
        itk = sitk.GetImageFromArray(array, isVector=vector)
        itk.SetSpacing((0.8, 0.9))
        itk.SetOrigin((10.0, -5.0))
        itk.SetDirection((0.0, -1.0, 1.0, 0.0))
        sitk.WriteImage(itk, str(root / folder / "c.mha"))
    case = open_dataset(root).load("c")
    assert case.image.shape == (1, 9, 8, 3)
    assert np.array_equal(case.image[0], rgb.astype(np.float32))
    assert np.array_equal(case.label[0], mask)
    written = sitk.ReadImage(str(write_prediction(case, case.label, tmp_path / "pred")))
    assert written.GetSize() == (8, 9) and written.GetPixelID() == sitk.sitkUInt8
    assert (written.GetSpacing(), written.GetOrigin(), written.GetDirection()) == \
        ((0.8, 0.9), (10.0, -5.0), (0.0, -1.0, 1.0, 0.0))
    assert np.array_equal(sitk.GetArrayFromImage(written), mask)


# ---------------------------------------------------------------- DICOM


def _element(group: int, element: int, vr: str, value: bytes) -> bytes:
    """One explicit-VR little-endian data element, its value padded to an even length."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    if vr in ("OB", "OW"):
        return struct.pack("<HH2s2xI", group, element, vr.encode(), len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def write_dicom_slice(path: Path, pixels: np.ndarray, z: float, slope: float, intercept: float,
                      series: str = "1.2.826.0.1.3680043.2.1125.5") -> None:
    """A minimal MR DICOM file (uint16 pixels, 0.5 mm, axial at height ``z``) with its own
    rescale slope and intercept: what a scanner writes per slice (PET, some MR)."""
    instance = f"{series}.{int(z * 10) + 1}"
    text = lambda s: str(s).encode()  # noqa: E731
    us = lambda v: struct.pack("<H", v)  # noqa: E731
    meta = (_element(0x0002, 0x0001, "OB", b"\0\1") + _element(0x0002, 0x0002, "UI", b"1.2.840.10008.5.1.4.1.1.4")
            + _element(0x0002, 0x0003, "UI", text(instance)) + _element(0x0002, 0x0010, "UI", b"1.2.840.10008.1.2.1"))
    rows, cols = pixels.shape
    body = b"".join([
        _element(0x0008, 0x0016, "UI", b"1.2.840.10008.5.1.4.1.1.4"), _element(0x0008, 0x0018, "UI", text(instance)),
        _element(0x0008, 0x0060, "CS", b"MR"), _element(0x0010, 0x0020, "LO", b"p1"),
        _element(0x0018, 0x0050, "DS", b"2"), _element(0x0020, 0x000D, "UI", text(series + ".1")),
        _element(0x0020, 0x000E, "UI", text(series)), _element(0x0020, 0x0013, "IS", text(int(z))),
        _element(0x0020, 0x0032, "DS", text(f"0\\0\\{z:g}")), _element(0x0020, 0x0037, "DS", b"1\\0\\0\\0\\1\\0"),
        _element(0x0028, 0x0002, "US", us(1)), _element(0x0028, 0x0004, "CS", b"MONOCHROME2"),
        _element(0x0028, 0x0010, "US", us(rows)), _element(0x0028, 0x0011, "US", us(cols)),
        _element(0x0028, 0x0030, "DS", b"0.5\\0.5"), _element(0x0028, 0x0100, "US", us(16)),
        _element(0x0028, 0x0101, "US", us(16)), _element(0x0028, 0x0102, "US", us(15)),
        _element(0x0028, 0x0103, "US", us(0)), _element(0x0028, 0x1052, "DS", text(f"{intercept:g}")),
        _element(0x0028, 0x1053, "DS", text(f"{slope:g}")),
        _element(0x7FE0, 0x0010, "OW", pixels.astype("<u2").tobytes())])
    group_length = _element(0x0002, 0x0000, "UL", b"")[:6] + struct.pack("<H", 4) + struct.pack("<I", len(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + group_length + meta + body)


def test_dicom_slices_with_their_own_rescale_keep_their_values(tmp_path):
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 1000, size=(4, 6, 5))
    slopes, intercepts = [1.0, 0.5, 2.5, 0.001], [0.0, 10.25, -100.0, 0.0]
    for z in range(4):  # file names out of slice order: the slices are sorted by position
        write_dicom_slice(tmp_path / "s" / f"IM{(z * 3) % 4}", raw[z], 2.0 * z, slopes[z], intercepts[z])
    case = open_dataset(tmp_path).load("s")
    expected = raw * np.array(slopes)[:, None, None] + np.array(intercepts)[:, None, None]
    assert case.image.dtype == np.float32
    np.testing.assert_allclose(case.image, expected, rtol=1e-6, atol=1e-6)
    assert case.spacing == pytest.approx((2.0, 0.5, 0.5))


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    image, _ = arrays(0)
    write_series(tmp_path / "s", image)
    (tmp_path / "s" / "slice5.dcm").unlink()
    with pytest.raises(DataError, match=r"not evenly spaced \(gap of 5 mm after slice 4 of 10, typical 2.5 mm\)"):
        open_dataset(tmp_path).load("s")


def test_a_dicom_series_with_junk_files_beside_it_reads(tmp_path):
    image, _ = arrays(0)
    write_series(tmp_path / "s", image)
    (tmp_path / "s" / "notes.txt").write_text("scanner export")
    (tmp_path / "s" / "broken.dcm").write_bytes(b"not dicom" * 20)
    assert np.array_equal(open_dataset(tmp_path).load("s").image, image.astype(np.float32))


def test_a_dicom_label_placed_off_the_series_is_refused(tmp_path):
    image, label = arrays(0)
    write_series(tmp_path / "s", image)
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(label), str(tmp_path / "labels" / "s.nii.gz"))  # no geometry
    with pytest.raises(DataError, match=r"labels/s.nii.gz does not lie on its DICOM series"):
        open_dataset(tmp_path).load("s")


# ---------------------------------------------------------------- 2D image folders


@pytest.mark.parametrize("top", [1, 255])
def test_binary_masks_get_predictions_in_their_own_values(tmp_path, top):
    rng = np.random.default_rng(3)
    masks = [np.zeros((6, 7), np.uint8)] + [(rng.random((6, 7)) > 0.5).astype(np.uint8) * top for _ in range(2)]
    for i, mask in enumerate(masks):  # the first mask is empty: the coding comes from the next
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "masks").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 7)).astype(np.uint8)).save(tmp_path / "data" / "images" / f"a{i}.png")
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"a{i}.png")
    case = open_dataset(tmp_path / "data").load("images/a1")
    assert np.array_equal(case.label[0], masks[1] > 0)
    written = np.asarray(Image.open(write_prediction(case, case.label, tmp_path / "pred")))
    assert np.array_equal(written, masks[1])
    assert np.array_equal(read_prediction(case, tmp_path / "pred"), case.label)


def _rgba(rgb: tuple[int, int, int] | np.ndarray, alpha: np.ndarray) -> Image.Image:
    pixels = np.empty((*alpha.shape, 4), np.uint8)
    pixels[..., :3], pixels[..., 3] = rgb, alpha
    return Image.fromarray(pixels, "RGBA")


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (200, 30, 30)])
def test_a_mask_drawn_in_the_alpha_channel_reads_its_foreground(tmp_path, colour):
    """One colour everywhere, foreground opaque, background transparent (a paint tool's stroke):
    converting to grey would give one value everywhere -- an all-foreground or empty mask."""
    drawn = np.zeros((6, 7), bool)
    drawn[1:4, 2:6] = True
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.arange(42, dtype=np.uint8).reshape(6, 7)).save(tmp_path / "images" / "a.png")
    _rgba(colour, np.where(drawn, 255, 0).astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    case = open_dataset(tmp_path).load("images/a")
    assert np.array_equal(case.label[0], drawn)


def test_transparent_pixels_of_a_coloured_mask_are_background_and_an_opaque_one_reads_as_grey(tmp_path):
    from fewsam.data.readers.png_folder import read_mask_pixels

    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[:, :] = (255, 255, 255)  # the canvas under the transparency is white
    rgb[2:5, 1:3] = (0, 0, 255)
    alpha = np.zeros((6, 7), np.uint8)
    alpha[2:5, 1:3] = 255
    _rgba(rgb, alpha).save(tmp_path / "overlay.png")
    grey_of_blue = np.asarray(Image.new("RGB", (1, 1), (0, 0, 255)).convert("L"))[0, 0]
    assert np.array_equal(read_mask_pixels(tmp_path / "overlay.png"), np.where(alpha > 0, grey_of_blue, 0))
    _rgba((0, 0, 0), np.full((6, 7), 255, np.uint8)).save(tmp_path / "empty.png")  # an empty mask saved as RGBA
    assert not read_mask_pixels(tmp_path / "empty.png").any()


def test_a_multi_page_tiff_is_read_as_its_first_page_and_said(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress, "_said", {})
    pages = [Image.fromarray(np.full((6, 7), 10 * (i + 1), np.uint8)) for i in range(3)]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    pages[0].save(tmp_path / "images" / "a.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(np.eye(6, 7, dtype=np.uint8) * 255).save(tmp_path / "masks" / "a.png")
    with caplog.at_level(logging.INFO, logger="fewsam"):
        case = open_dataset(tmp_path).load("images/a")
    assert case.image.shape == (1, 6, 7) and (case.image == 10).all()
    assert any("a.tif holds 3 pages (a stack)" in r.getMessage() for r in caplog.records)


def _plain_nifti_folder(root: Path, cases: int) -> Path:
    for i in range(cases):
        image, label = volume(i)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "images" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labels" / f"c{i}.nii.gz")
    return root


def test_a_val_list_in_the_data_folder_is_the_val_split_and_stays_out_of_train(tmp_path):
    """The SSL4MIS convention: a user's val.list names the validation cases. The computed split
    would have validated on other cases and put these in the labelled budget."""
    root = _plain_nifti_folder(tmp_path / "data", 6)
    (root / "val.list").write_text("c0\nc3\n")
    dataset = open_dataset(root)
    assert dataset.split("val") == ["c0", "c3"]
    assert dataset.split("train") == ["c1", "c2", "c4", "c5"]


def test_a_train_list_alone_gives_val_from_its_cases_and_none_of_them_is_trained_on(tmp_path):
    """A train.list without val.list (SSL4MIS' LA ships train.list + test.list): val is the list's last
    cases and leaves train, which keeps the list's order, so its first lines are the labelled budget's as
    the papers label them; a val drawn from every case held cases that train.list trains on."""
    root = _plain_nifti_folder(tmp_path / "data", 7)
    (root / "train.list").write_text("c6\nc5\nc4\nc3\nc2\n")
    dataset = open_dataset(root)
    train, val = dataset.split("train"), dataset.split("val")
    assert not set(train) & set(val) and set(train) | set(val) == {"c2", "c3", "c4", "c5", "c6"}
    assert val == ["c2"] and train == ["c6", "c5", "c4", "c3"]


def test_an_empty_val_of_a_train_list_alone_names_the_rule_it_is_drawn_by(tmp_path):
    """A train.list of one case leaves val empty: the error names how val is drawn from that list."""
    root = _plain_nifti_folder(tmp_path / "data", 3)
    (root / "train.list").write_text("c1\n")
    with pytest.raises(DataError, match=r"split 'val' .* is empty: it holds the last fifth of train.list's"):
        open_dataset(root).split("val")


def test_train_and_val_lists_both_name_their_splits(tmp_path):
    root = _plain_nifti_folder(tmp_path / "data", 6)
    (root / "val.txt").write_text("c5\n")
    (root / "train.list").write_text("c2\nc1\n")
    dataset = open_dataset(root)
    assert (dataset.split("train"), dataset.split("val")) == (["c2", "c1"], ["c5"])


def test_a_val_list_naming_a_case_the_folder_lacks_is_one_error(tmp_path):
    root = _plain_nifti_folder(tmp_path / "data", 3)
    (root / "val.list").write_text("c9\n")
    with pytest.raises(DataError, match="c9"):
        open_dataset(root)
