"""Image and label files as users' tools and scripts write them, in their less usual voxel types,
shapes and codings: read as their values say, predictions written back in the input's own format
and geometry, and what cannot be read refused in one line."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from fewsam.data import open_dataset, read_prediction, write_prediction
from fewsam.errors import DataError

AFFINE = np.array([[-0.8, 0.0, 0.0, 10.0], [0.0, 0.9, 0.0, -5.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


def volume(seed: int = 0, shape=(8, 9, 4)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.integers(0, 3, size=shape).astype(np.uint8)


# ---------------------------------------------------------------- 64-bit integer voxels


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_an_itk_volume_and_label_of_64_bit_integers_are_read_and_predicted(tmp_path, ending):
    """numpy's default integer is int64, so NRRDs written by pynrrd or a script hold 64-bit voxels."""
    image, label = volume()
    for folder, array in (("images", (image * 100).astype(np.int64)), ("labels", label.astype(np.int64))):
        (tmp_path / folder).mkdir()
        file = sitk.GetImageFromArray(array.T)
        file.SetSpacing((0.8, 0.9, 3.0))
        sitk.WriteImage(file, str(tmp_path / folder / f"c{ending}"))
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "class1", 2: "class2"}
    case = ds.load("c")
    np.testing.assert_array_equal(case.image, (image * 100).astype(np.int64).transpose(2, 1, 0))
    np.testing.assert_array_equal(case.label, label.transpose(2, 1, 0))
    written = write_prediction(case, case.label, tmp_path / "pred")
    assert written.name == f"c{ending}"
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), case.label)


def test_a_cropped_nifti_label_of_64_bit_integers_is_placed_on_its_image(tmp_path):
    image, _ = volume(shape=(12, 10, 6))
    crop = np.ones((4, 3, 2), np.int64)
    shifted = AFFINE.copy()
    shifted[:3, 3] = AFFINE[:3, :3] @ np.array([3.0, 2.0, 1.0]) + AFFINE[:3, 3]
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    nib.save(nib.Nifti1Image(image, AFFINE), tmp_path / "images" / "p1.nii.gz")
    nib.save(nib.Nifti1Image(crop, shifted, dtype=np.int64), tmp_path / "labels" / "p1.nii.gz")
    expected = np.zeros(image.shape, np.uint8)
    expected[3:7, 2:5, 1:3] = 1
    np.testing.assert_array_equal(open_dataset(tmp_path).load("p1").label, expected.transpose(2, 1, 0))


# ---------------------------------------------------------------- 2D mask codings


def image_mask_folder(root: Path, masks: dict[str, np.ndarray], mask_ending: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, mask.shape).astype(np.uint8)).save(root / "images" / f"{name}.png")
        options = {"quality": 90} if mask_ending == ".jpg" else {}
        Image.fromarray(mask).save(root / "masks" / f"{name}{mask_ending}", **options)
    return root


def test_class_index_masks_whose_first_mask_shows_only_class_1_are_read_as_their_classes(tmp_path):
    """A multi-class set (nnU-Net 2D, a converter's 0/1/2 masks) whose first image shows only class 1."""
    first, second = np.zeros((6, 7), np.uint8), np.zeros((6, 7), np.uint8)
    first[1:3, 1:4] = 1
    second[1:3, 1:4], second[3:5, 2:6] = 1, 2
    ds = open_dataset(image_mask_folder(tmp_path, {"a": first, "b": second}))
    assert ds.class_map.names == {1: "class1", 2: "class2"}
    case = ds.load("images/b")
    np.testing.assert_array_equal(case.label[0], second)
    np.testing.assert_array_equal(np.asarray(Image.open(write_prediction(case, case.label, tmp_path / "pred"))), second)


def test_binary_masks_of_0_and_1_stay_one_class_written_as_0_and_1(tmp_path):
    first, second = np.zeros((6, 7), np.uint8), np.zeros((6, 7), np.uint8)
    first[1:3, 1:4], second[2:5, 2:6] = 1, 1
    ds = open_dataset(image_mask_folder(tmp_path, {"a": first, "b": second}))
    assert ds.class_map.names == {1: "foreground"}
    case = ds.load("images/b")
    np.testing.assert_array_equal(np.asarray(Image.open(write_prediction(case, case.label, tmp_path / "pred"))), second)


def test_a_jpeg_mask_saved_as_0_and_1_keeps_its_foreground(tmp_path):
    """JPEG blurs a 0/1 mask into 0-3; read as 0/255 (a threshold at 128) it was all background."""
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 12:44] = 1
    ds = open_dataset(image_mask_folder(tmp_path, {"a": mask}, ".jpg"))
    label = ds.load("images/a").label[0]
    assert (label[mask == 1] == 1).mean() > 0.95 and (label[mask == 0] == 0).mean() > 0.95
    bright = image_mask_folder(tmp_path / "bright", {"a": mask * 255}, ".jpg")
    np.testing.assert_array_equal(open_dataset(bright).load("images/a").label[0], mask)


# ---------------------------------------------------------------- NIfTI shapes


def test_a_coronal_slice_stored_with_one_voxel_along_y_is_one_image_without_a_false_notice(tmp_path, notices):
    """A slice taken out of a volume keeps its singleton axis: (x, 1, z). It is cut along y because y
    has one voxel, not because y's voxels are thick (they are 0.9 mm against z's 3 mm)."""
    image, label = volume(shape=(8, 1, 5))
    for folder, array in (("images", image), ("labels", label)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(array, AFFINE), tmp_path / folder / "c.nii.gz")
    case = open_dataset(tmp_path).load("c")
    assert case.image.shape == (1, 5, 8)
    np.testing.assert_array_equal(case.label[0], label[:, 0, :].T)
    assert "thick" not in notices.text
    written = nib.load(write_prediction(case, case.label, tmp_path / "pred"))
    assert written.shape == (8, 1, 5) and np.allclose(written.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)


def test_a_float_tiff_mask_is_rounded_to_its_classes_and_an_interpolated_one_refused(tmp_path):
    """A float32 mask stores 1 as 0.99999994 after a script's scaling or resampling; Pillow's
    conversion to 8 bits truncates it, so class 1 became background and class 2 class 1."""
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 1:4], mask[3:5, 2:6] = 1, 2
    root = image_mask_folder(tmp_path / "noisy", {"a": np.zeros_like(mask)})
    Image.fromarray((mask * np.float32(0.99999994)).astype(np.float32)).save(root / "masks" / "a.tif")
    (root / "masks" / "a.png").unlink()
    ds = open_dataset(root)
    assert ds.class_map.names == {1: "class1", 2: "class2"}
    np.testing.assert_array_equal(ds.load("images/a").label[0], mask)
    Image.fromarray(mask.astype(np.float32) / 2).save(root / "masks" / "a.tif")  # 0, 0.5, 1: interpolated
    with pytest.raises(DataError, match=r"a.tif: the label holds non-integer values \(0.5\)"):
        open_dataset(root).load("images/a")


# ---------------------------------------------------------------- linked folders


def test_image_and_mask_folders_linked_in_from_elsewhere_are_read(tmp_path):
    """Data linked in rather than copied (``ln -s /datasets/kvasir/images images``); a link back to
    the dataset itself is followed once, not forever."""
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 1:4] = 255
    store = image_mask_folder(tmp_path / "store", {"a": mask, "b": mask})
    data = tmp_path / "data"
    data.mkdir()
    for folder in ("images", "masks"):
        (data / folder).symlink_to(store / folder, target_is_directory=True)
    (data / "loop").symlink_to(data, target_is_directory=True)
    ds = open_dataset(data)
    assert list(ds.entries) == ["images/a", "images/b"] and ds.has_label("images/a")
    np.testing.assert_array_equal(ds.load("images/b").label[0], mask // 255)


def test_a_dicom_series_folder_linked_in_from_elsewhere_is_a_case(tmp_path):
    from test_dicom import arrays, write_series

    image, _ = arrays(0, (3, 6, 5))
    write_series(tmp_path / "store" / "cine", image)
    (tmp_path / "data" / "patient1").mkdir(parents=True)
    (tmp_path / "data" / "patient1" / "cine").symlink_to(tmp_path / "store" / "cine", target_is_directory=True)
    ds = open_dataset(tmp_path / "data")
    assert ds.layout == "dicom" and list(ds.entries) == ["patient1/cine"]
    np.testing.assert_array_equal(ds.load("patient1/cine").image, image)


def test_a_0_255_mask_with_blurred_edges_is_told_the_classes_json_that_thresholds_it(tmp_path):
    """A mask resized with interpolation holds values between 0 and 255 at its edges."""
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    blurred = np.asarray(Image.fromarray(mask).resize((97, 83), Image.BILINEAR))
    root = image_mask_folder(tmp_path / "data", {"a": blurred})
    with pytest.raises(DataError) as refused:
        open_dataset(root).load("images/a")
    message = str(refused.value)
    assert "values)" in message and len(message) < 500, message  # a few values and their count, not all
    advice = '{"1": {"name": "foreground", "min": 128}}'
    assert f"classes.json {advice}" in message
    (root / "classes.json").write_text(advice)
    np.testing.assert_array_equal(open_dataset(root).load("images/a").label[0], blurred >= 128)


def test_a_4d_metaimage_series_is_read_as_its_first_volume_like_a_4d_nifti(tmp_path, notices):
    """A cine or perfusion series saved as one 4D .mha / .nrrd; a 4D NIfTI was read, this refused."""
    image, label = volume(shape=(8, 9, 4))
    frames = [sitk.GetImageFromArray(np.ascontiguousarray((image + t).T)) for t in range(3)]
    for frame in frames:
        frame.SetSpacing((0.8, 0.9, 3.0))
        frame.SetOrigin((10.0, -5.0, 7.0))
        frame.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "images" / "cine.mha"))
    label_file = sitk.GetImageFromArray(np.ascontiguousarray(label.T))
    label_file.CopyInformation(frames[0])
    sitk.WriteImage(label_file, str(tmp_path / "labels" / "cine.mha"))
    case = open_dataset(tmp_path).load("cine")
    np.testing.assert_allclose(case.image, image.transpose(2, 1, 0))
    np.testing.assert_array_equal(case.label, label.transpose(2, 1, 0))
    assert "holds 3 volumes along its 4th axis" in notices.text
    written = sitk.ReadImage(str(write_prediction(case, case.label, tmp_path / "pred")))
    assert written.GetSize() == frames[0].GetSize()
    np.testing.assert_allclose(written.GetOrigin(), frames[0].GetOrigin())
    np.testing.assert_allclose(written.GetSpacing(), frames[0].GetSpacing())
    np.testing.assert_allclose(written.GetDirection(), frames[0].GetDirection())
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), case.label)


def test_a_one_volume_4d_metaimage_gets_a_one_volume_4d_prediction_as_a_nifti_does(tmp_path):
    image, label = volume(shape=(8, 9, 4))
    frame = sitk.GetImageFromArray(np.ascontiguousarray(image.T))
    frame.SetSpacing((0.8, 0.9, 3.0))
    frame.SetOrigin((10.0, -5.0, 7.0))
    series = sitk.JoinSeries(frame, 2.0, 0.5)  # a time origin and spacing of its own
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(series, str(tmp_path / "images" / "one.mha"))
    label_file = sitk.GetImageFromArray(np.ascontiguousarray(label.T))
    label_file.CopyInformation(frame)
    sitk.WriteImage(label_file, str(tmp_path / "labels" / "one.mha"))
    case = open_dataset(tmp_path).load("one")
    written = sitk.ReadImage(str(write_prediction(case, case.label, tmp_path / "pred")))
    assert written.GetSize() == series.GetSize() == (8, 9, 4, 1)
    np.testing.assert_allclose(written.GetOrigin(), series.GetOrigin())
    np.testing.assert_allclose(written.GetSpacing(), series.GetSpacing())
    np.testing.assert_allclose(written.GetDirection(), series.GetDirection())
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), case.label)


def test_nan_in_several_slices_is_said_in_plural():
    import numpy as np

    from fewsam.data.readers.common import check_finite

    image = np.zeros((4, 3, 3), np.float32)
    image[1, 0, 0] = image[3, 1, 1] = np.nan
    with pytest.raises(DataError, match=r"x.nii.gz: slices 1, 3 of case c hold NaN or Inf values"):
        check_finite(image, "x.nii.gz", "c")
