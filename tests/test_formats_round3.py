"""Files as public releases and common tools name and store them: label names with a suffix,
multi-channel volumes as ITK writes them, predictions written by other tools."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from fewsam.data import open_dataset, read_prediction, write_prediction
from fewsam.errors import DataError

from test_dicom import arrays, write_label, write_series

AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])


def volume(seed: int = 0, shape=(8, 9, 5)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.integers(0, 3, size=shape).astype(np.uint8)


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


# ---------------------------------------------------------------- label file names


@pytest.mark.parametrize("suffix", ["_seg", "_gt", "_label", "_mask", "_segmentation"])
def test_a_plain_label_named_with_a_release_suffix_is_the_cases_label(tmp_path, suffix):
    image, label = volume()
    save(image, tmp_path / "images" / "p1.nii.gz")
    save(label, tmp_path / "labels" / f"p1{suffix}.nii.gz")
    ds = open_dataset(tmp_path)
    assert ds.has_label("p1")
    assert np.array_equal(ds.load("p1").label, label.transpose(2, 1, 0))


def test_label_files_that_match_no_image_are_said(tmp_path, notices):
    image, label = volume()
    save(image, tmp_path / "images" / "p1.nii.gz")
    save(label, tmp_path / "labels" / "p1-annotation.nii.gz")
    ds = open_dataset(tmp_path)
    assert not ds.has_any_label()
    assert "1 label file(s) match no image" in notices.text and "p1-annotation.nii.gz" in notices.text


def test_a_dicom_label_named_with_a_release_suffix_is_the_series_label(tmp_path):
    image, label = arrays(0)
    write_label(tmp_path / "labels" / "case1_seg.nii.gz", label, write_series(tmp_path / "images" / "case1", image))
    ds = open_dataset(tmp_path)
    assert ds.has_label("case1")
    np.testing.assert_array_equal(ds.load("case1").label, label)


# ---------------------------------------------------------------- multi-component NIfTI


def test_a_multi_component_nifti_as_itk_writes_it_reads_its_first_channel(tmp_path):
    """SimpleITK writes a vector image as (x, y, z, 1, channels) with a vector intent."""
    image, label = volume()
    channels = sitk.GetImageFromArray(np.stack([image.T, -image.T], axis=-1), isVector=True)
    channels.SetSpacing((0.8, 0.8, 3.0))
    (tmp_path / "images").mkdir()
    sitk.WriteImage(channels, str(tmp_path / "images" / "v.nii.gz"))
    assert nib.load(tmp_path / "images" / "v.nii.gz").shape == (8, 9, 5, 1, 2)
    flat = sitk.GetImageFromArray(label.T)
    flat.CopyInformation(channels)
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(flat, str(tmp_path / "labels" / "v.nii.gz"))
    ds = open_dataset(tmp_path)
    case = ds.load("v")
    np.testing.assert_allclose(case.image, image.transpose(2, 1, 0))
    np.testing.assert_array_equal(case.label, label.transpose(2, 1, 0))
    assert case.meta["channels_dropped"] == 1 and ds.num_slices("v") == 5
    written = nib.load(write_prediction(case, case.label, tmp_path / "pred"))
    assert written.shape == (8, 9, 5) and written.header.get_intent()[0] == "none"
    np.testing.assert_allclose(written.affine, nib.load(tmp_path / "images" / "v.nii.gz").affine)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), case.label)


# ---------------------------------------------------------------- predictions other tools wrote


def test_an_uncompressed_nifti_prediction_is_read_where_a_compressed_one_is_expected(tmp_path):
    """nnU-Net names its predictions with the dataset's file_ending: <case>.nii for a .nii dataset."""
    image, label = volume()
    save(image, tmp_path / "data" / "images" / "p1.nii")
    save(label, tmp_path / "data" / "labels" / "p1.nii")
    case = open_dataset(tmp_path / "data").load("p1")
    save(label, tmp_path / "nnunet" / "p1.nii")
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "nnunet"), case.label)
    written = write_prediction(case, case.label, tmp_path / "fewsam")
    assert written.name == "p1.nii.gz"
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "fewsam"), case.label)


@pytest.mark.parametrize("stored", ["p1.NII.GZ", "p1.NII"])
def test_a_prediction_whose_ending_another_tool_wrote_in_upper_case_is_read(tmp_path, stored):
    image, label = volume()
    save(image, tmp_path / "data" / "images" / "p1.nii.gz")
    save(label, tmp_path / "data" / "labels" / "p1.nii.gz")
    case = open_dataset(tmp_path / "data").load("p1")
    save(label, tmp_path / "other" / stored.lower())
    (tmp_path / "other" / stored.lower()).rename(tmp_path / "other" / stored)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "other"), case.label)


# ---------------------------------------------------------------- 2D masks of class indices


def test_grey_masks_of_class_indices_are_read_as_their_classes(tmp_path):
    """Masks storing classes as 0, 1, 2, 3 (nnU-Net's 2D sets, multi-class converters), a class absent
    from the first mask: every value found is a class, and predictions are written as the same values."""
    rng = np.random.default_rng(0)
    masks = [np.zeros((6, 7), np.uint8) for _ in range(3)]
    masks[0][1:3, 1:4], masks[0][3:5, 2:5] = 1, 2
    masks[2][0:2, 0:2], masks[2][4:6, 4:7] = 3, 1
    for i, mask in enumerate(masks):
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "masks").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 7)).astype(np.uint8)).save(tmp_path / "data" / "images" / f"a{i}.png")
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"a{i}.png")
    ds = open_dataset(tmp_path / "data")
    assert ds.class_map.names == {1: "class1", 2: "class2", 3: "class3"}
    case = ds.load("images/a2")
    np.testing.assert_array_equal(case.label[0], masks[2])
    written = np.asarray(Image.open(write_prediction(case, case.label, tmp_path / "pred")))
    np.testing.assert_array_equal(written, masks[2])
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", ds.class_map), case.label)
    (tmp_path / "data" / "classes.json").write_text('{"classes": {"1": "LV", "2": "MYO", "3": "RV"}}')
    assert open_dataset(tmp_path / "data").class_map.names == {1: "LV", 2: "MYO", 3: "RV"}


def test_a_camera_jpeg_turned_by_its_exif_orientation_lies_under_its_mask(tmp_path):
    """A camera stores its sensor's pixels and an EXIF tag saying how to turn them (6: 90 degrees
    clockwise); viewers and annotation tools show, and masks are drawn on, the turned picture."""
    shown = np.zeros((40, 60), np.uint8)
    shown[5:20, 10:50] = 1
    picture = (50 + 150 * shown).astype(np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(picture)).save(tmp_path / "images" / "x.jpg", exif=exif, quality=95)
    Image.fromarray(shown * 255).save(tmp_path / "masks" / "x.png")
    case = open_dataset(tmp_path).load("images/x")
    assert case.image.shape == (1, 40, 60) and case.label.shape == (1, 40, 60)
    assert case.image[0][shown == 1].mean() > 150 > 100 > case.image[0][shown == 0].mean()
    written = np.asarray(Image.open(write_prediction(case, case.label, tmp_path / "pred")))
    np.testing.assert_array_equal(written, shown * 255)


# ---------------------------------------------------------------- NIfTI files named for another compression


@pytest.mark.parametrize("stored_as", ["plain named .nii.gz", "gzipped named .nii", "NIfTI-2 gzipped named .nii"])
def test_a_nifti_whose_name_says_the_wrong_compression_is_read_by_its_content(tmp_path, stored_as, notices):
    """ITK (so nnU-Net and the viewers) reads such renamed files; nibabel goes by the name."""
    image, label = volume()
    image_class = nib.Nifti2Image if "NIfTI-2" in stored_as else nib.Nifti1Image
    content = image_class(image, AFFINE).to_bytes()
    name = "p1.nii.gz" if stored_as.endswith(".nii.gz") else "p1.nii"
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / name).write_bytes(content if stored_as.startswith("plain") else gzip.compress(content))
    save(label, tmp_path / "labels" / "p1.nii.gz")
    ds = open_dataset(tmp_path)
    assert ds.num_slices("p1") == 5
    case = ds.load("p1")
    np.testing.assert_allclose(case.image, image.transpose(2, 1, 0))
    np.testing.assert_array_equal(case.label, label.transpose(2, 1, 0))
    np.testing.assert_allclose(case.meta["affine"], AFFINE)
    assert "a renamed file" in notices.text
    written = nib.load(write_prediction(case, case.label, tmp_path / "pred"))
    np.testing.assert_allclose(written.affine, AFFINE)


def test_a_damaged_nifti_is_refused_in_one_line(tmp_path):
    image, label = volume()
    save(image, tmp_path / "images" / "p1.nii")
    save(label, tmp_path / "labels" / "p1.nii.gz")
    whole = (tmp_path / "images" / "p1.nii").read_bytes()
    (tmp_path / "images" / "p1.nii").write_bytes(whole[:400])  # cut inside the voxels
    ds = open_dataset(tmp_path)
    with pytest.raises(DataError, match=r"cannot read NIfTI .*p1.nii \(truncated\?\)") as err:
        ds.load("p1")
    assert "\n" not in str(err.value)
    (tmp_path / "images" / "p1.nii").write_bytes(b"not a NIfTI at all")
    with pytest.raises(DataError, match="cannot read NIfTI") as err:
        open_dataset(tmp_path).load("p1")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- header + voxel file pairs


@pytest.mark.parametrize("ending", [".mhd", ".nhdr"])
def test_a_header_whose_voxel_file_is_missing_is_refused_naming_it(tmp_path, ending):
    image, label = volume()
    for folder, array in (("images", image), ("labels", label)):
        (tmp_path / folder).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(array.T), str(tmp_path / folder / f"p1{ending}"))
    ds = open_dataset(tmp_path)
    np.testing.assert_allclose(ds.load("p1").image, image.transpose(2, 1, 0))
    voxels = [p for p in (tmp_path / "images").iterdir() if p.name != f"p1{ending}"]
    assert len(voxels) == 1
    voxels[0].unlink()
    with pytest.raises(DataError, match=rf"p1\{ending}: its voxel file .*{voxels[0].name} is missing"):
        ds.load("p1")


# ---------------------------------------------------------------- nnU-Net v1 raw data


def test_an_nnunet_v1_dataset_lists_cases_whose_files_are_per_channel(tmp_path):
    """nnU-Net v1's dataset.json lists ./imagesTr/x.nii.gz; its files are x_0000.nii.gz, x_0001.nii.gz..."""
    image, label = volume()
    for channel in (0, 1):
        save(image + 10 * channel, tmp_path / "imagesTr" / f"la_003_{channel:04d}.nii.gz")
        save(image, tmp_path / "imagesTs" / f"la_009_{channel:04d}.nii.gz")
    save(label, tmp_path / "labelsTr" / "la_003.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "modality": {"0": "MRI", "1": "MRI2"}, "labels": {"0": "background", "1": "a", "2": "b"},
        "training": [{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}],
        "test": ["./imagesTs/la_009.nii.gz"]}))
    ds = open_dataset(tmp_path)
    assert ds.split("all") == ["la_003", "la_009"] and ds.split("test") == ["la_009"]
    case = ds.load("la_003")
    np.testing.assert_allclose(case.image, image.transpose(2, 1, 0))
    np.testing.assert_array_equal(case.label, label.transpose(2, 1, 0))
    assert case.rel_path == "la_003.nii.gz" and ds.load("la_009").rel_path == "la_009.nii.gz"


# ---------------------------------------------------------------- labels saved on their own extent


def test_a_segmentation_saved_on_its_own_extent_is_placed_on_its_image(tmp_path, notices):
    """3D Slicer saves <volume>.seg.nrrd cropped to its segments, on the volume's voxel axes."""
    image, label = volume(shape=(26, 30, 6))
    label[:] = 0
    label[5:15, 8:20, 1:5], label[6:9, 10:14, 2:4] = 1, 2
    turn = np.cos(0.3), np.sin(0.3)
    volume_file = sitk.GetImageFromArray(image.T)
    volume_file.SetSpacing((0.9, 0.8, 3.5))
    volume_file.SetOrigin((12.5, -40.0, 7.0))
    volume_file.SetDirection((turn[0], -turn[1], 0, turn[1], turn[0], 0, 0, 0, 1))
    segmentation = sitk.GetImageFromArray(label.T)
    segmentation.CopyInformation(volume_file)
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    sitk.WriteImage(volume_file, str(tmp_path / "images" / "v.nrrd"))
    sitk.WriteImage(segmentation[5:15, 8:20, 1:5], str(tmp_path / "labels" / "v.seg.nrrd"))
    case = open_dataset(tmp_path).load("v")
    np.testing.assert_array_equal(case.label, label.transpose(2, 1, 0))
    assert "covers part of its image's voxel grid" in notices.text


def test_a_label_a_rounding_off_its_image_is_said_to_be_read_voxel_for_voxel_not_to_cover_part_of_it(
        tmp_path, notices):
    """A label whose origin differs from its image's by a few thousandths of a millimetre (its header written again
    by another tool) was said to be "saved on its own extent" and to cover part of the image, as a crop."""
    image, label = volume()
    save(image, tmp_path / "images" / "p1.nii.gz", AFFINE)
    shifted = AFFINE.copy()
    shifted[:3, 3] += 0.004
    save(label, tmp_path / "labels" / "p1.nii.gz", shifted)
    np.testing.assert_array_equal(open_dataset(tmp_path).load("p1").label, label.transpose(2, 1, 0))
    assert "differs from its image's by less than a hundredth of a voxel" in notices.text
    assert "covers part" not in notices.text


def test_a_cropped_nifti_label_is_placed_and_one_reaching_outside_the_image_is_refused(tmp_path):
    image, label = volume(shape=(12, 10, 6))
    label[:] = 0
    label[3:7, 2:5, 1:4] = 1
    save(image, tmp_path / "images" / "p1.nii.gz", AFFINE)
    shifted = AFFINE.copy()
    shifted[:3, 3] = AFFINE[:3, :3] @ np.array([3.0, 2.0, 1.0])  # the crop's first voxel is image voxel (3, 2, 1)
    save(label[3:7, 2:5, 1:4].copy(), tmp_path / "labels" / "p1.nii.gz", shifted)
    np.testing.assert_array_equal(open_dataset(tmp_path).load("p1").label, label.transpose(2, 1, 0))
    shifted[:3, 3] = AFFINE[:3, :3] @ np.array([10.0, 2.0, 1.0])  # would reach past the image's x = 12
    save(label[3:7, 2:5, 1:4].copy(), tmp_path / "labels" / "p1.nii.gz", shifted)
    with pytest.raises(DataError, match="image and label shapes differ"):
        open_dataset(tmp_path).load("p1")
