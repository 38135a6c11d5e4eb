"""Labels of more classes than uint8 class indices hold are refused in one line naming their count and the
limit, where a class 256 would wrap to the background; labels of few classes, 2D Slicer segmentations
included, are read as their classes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fewsam.data import open_dataset, write_prediction
from fewsam.data.readers.common import one_hot_to_indices
from fewsam.errors import DataError
from fewsam.labels import MAX_CLASSES

from test_slicer_segmentations import reference_volume, write_segmentation

SHAPE = (6, 10, 12)  # (z, y, x), as reference_volume writes it
MANY = 300


def numbered_voxels(count: int) -> np.ndarray:
    """A label whose first ``count`` voxels hold 1..count, the rest background."""
    label = np.zeros(SHAPE, dtype=np.uint16)
    label.reshape(-1)[:count] = np.arange(1, count + 1)
    return label


def write_label_map(path: Path, label: np.ndarray, reference: sitk.Image) -> None:
    image = sitk.GetImageFromArray(label)
    image.CopyInformation(reference)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_a_slicer_segmentation_of_more_segments_than_classes_fit_is_refused_naming_the_count(tmp_path):
    """300 segments: class 256 did not fit the uint8 label (a traceback, or a wrap to background)."""
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    write_segmentation(tmp_path / "labels" / "v.seg.nrrd", [numbered_voxels(MANY)],
                       [(f"structure{n}", n, 0) for n in range(1, MANY + 1)], reference)
    with pytest.raises(DataError, match=f"{MANY} classes, and fewsam segments at most {MAX_CLASSES}"):
        open_dataset(tmp_path).load("v")


def test_a_label_map_of_more_values_than_classes_fit_is_refused_naming_the_count(tmp_path):
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    write_label_map(tmp_path / "labels" / "v.nrrd", numbered_voxels(MANY), reference)
    with pytest.raises(DataError, match=f"holds {MANY} classes, fewsam at most {MAX_CLASSES}"):
        open_dataset(tmp_path).load("v")


def test_a_one_hot_label_of_more_channels_than_classes_fit_is_refused():
    """300 one-hot channels (channel 0 the background) were read as indices wrapped at 256."""
    one_hot = np.eye(MANY, dtype=np.uint8).reshape(1, 1, MANY, MANY)
    with pytest.raises(DataError, match=f"{MANY - 1} classes, and fewsam segments at most {MAX_CLASSES}"):
        one_hot_to_indices(one_hot, Path("one_hot.nii.gz"))


def test_structure_masks_of_more_structures_than_classes_fit_are_refused(tmp_path):
    case = tmp_path / "s0000"
    (case / "segmentations").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(case / "ct.nii.gz"))
    mask = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    for n in range(MAX_CLASSES + 1):
        nib.save(mask, str(case / "segmentations" / f"structure{n:03d}.nii"))
    with pytest.raises(DataError, match=f"{MAX_CLASSES + 1} classes, and fewsam segments at most {MAX_CLASSES}"):
        open_dataset(tmp_path)


def test_label_values_above_255_of_few_classes_are_read_as_their_values_not_wrapped(tmp_path):
    """FreeSurfer's values (2, 41, 1035, 2035): read as 16-bit class values, not wrapped to 11 and 243."""
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    label = np.zeros(SHAPE, dtype=np.uint16)
    label[0], label[1], label[2], label[3] = 2, 41, 1035, 2035
    write_label_map(tmp_path / "labels" / "v.nrrd", label, reference)
    read = open_dataset(tmp_path).load("v").label
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, label)


def test_as_many_classes_as_fit_are_read_as_they_are(tmp_path):
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    write_label_map(tmp_path / "labels" / "v.nrrd", numbered_voxels(MAX_CLASSES), reference)
    ds = open_dataset(tmp_path)
    assert ds.class_map.num_classes == MAX_CLASSES
    np.testing.assert_array_equal(ds.load("v").label, numbered_voxels(MAX_CLASSES))


def two_d_image(path: Path) -> sitk.Image:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 20, SHAPE[1:]).astype(np.float32))
    image.SetSpacing((0.8, 0.6))
    image.SetOrigin((4.0, -2.0))
    sitk.WriteImage(image, str(path))
    return image


@pytest.mark.parametrize("layered", [False, True])
def test_a_2d_slicer_segmentation_beside_its_image_is_read_by_segment(tmp_path, layered):
    """One slice segmented in Slicer (a.nrrd + a.seg.nrrd): one layer (two segments under values 1 and 7), or
    two layers ((layers, H, W), kinds "list domain domain") whose segments share label value 1."""
    reference = two_d_image(tmp_path / "a.nrrd")
    liver, tumour = np.zeros(SHAPE[1:], np.uint8), np.zeros(SHAPE[1:], np.uint8)
    liver[2:6, 3:8] = 1
    tumour[3:5, 4:6] = 1
    if layered:
        layers, segments = [liver, tumour], [("liver", 1, 0), ("tumour", 1, 1)]
    else:
        layers, segments = [np.where(tumour == 1, 7, liver)], [("liver", 1, 0), ("tumour", 7, 0)]
    image = sitk.GetImageFromArray(np.stack(layers, axis=-1) if layered else layers[0], isVector=layered)
    image.CopyInformation(reference)
    for n, (name, value, layer) in enumerate(segments):
        for field, text in (("ID", f"Segment_{n + 1}"), ("Name", name), ("LabelValue", value), ("Layer", layer)):
            image.SetMetaData(f"Segment{n}_{field}", str(text))
    sitk.WriteImage(image, str(tmp_path / "a.seg.nrrd"))
    path = tmp_path / "a.seg.nrrd"
    path.write_bytes(path.read_bytes().replace(b"kinds: vector domain", b"kinds: list domain", 1))
    if layered:
        assert b"kinds: list domain domain\n" in path.read_bytes()
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "liver", 2: "tumour"}
    case = ds.load("a")
    expected = np.where(tumour == 1, 2, liver)[None]
    np.testing.assert_array_equal(case.label, expected)
    written = sitk.ReadImage(str(write_prediction(case, case.label, tmp_path / "pred")))
    assert written.GetSize() == reference.GetSize() and written.GetSpacing() == reference.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected[0])


def test_a_mask_of_values_0_and_255_is_one_class_not_too_many(tmp_path):
    """The limit counts classes, not the values that code them."""
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:4] = 255
    write_label_map(tmp_path / "labels" / "v.nrrd", label, reference)
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {255: "class255"}
    np.testing.assert_array_equal(ds.load("v").label, label)


def test_a_label_map_of_255_classes_is_refused_as_its_last_class_would_be_the_ignored_pixels(tmp_path):
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    write_label_map(tmp_path / "labels" / "v.nrrd", numbered_voxels(255).astype(np.uint8), reference)
    with pytest.raises(DataError, match=f"the label files of .*: 255 classes, and fewsam segments at most {MAX_CLASSES}"):
        _ = open_dataset(tmp_path).class_map


def test_more_segments_than_classes_fit_are_refused_where_classes_json_names_a_few(tmp_path):
    """Segments named as no class are read by their place in the file: segment 256 had no uint8 class."""
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    write_segmentation(tmp_path / "labels" / "v.seg.nrrd", [numbered_voxels(MANY)],
                       [(f"structure{n}", n, 0) for n in range(1, MANY + 1)], reference)
    (tmp_path / "classes.json").write_text('{"1": "liver"}', encoding="utf-8")
    with pytest.raises(DataError, match=f"v.seg.nrrd: {MANY} classes, and fewsam segments at most {MAX_CLASSES}"):
        open_dataset(tmp_path).load("v")


def test_a_classes_json_of_more_classes_than_fit_is_refused(tmp_path):
    reference = reference_volume(tmp_path / "images" / "v.nrrd")
    write_label_map(tmp_path / "labels" / "v.nrrd", numbered_voxels(2).astype(np.uint8), reference)
    names = {str(n): f"structure{n}" for n in range(1, 256)}
    (tmp_path / "classes.json").write_text(json.dumps(names), encoding="utf-8")
    with pytest.raises(DataError, match=f"classes.json: 255 classes, and fewsam segments at most {MAX_CLASSES}"):
        _ = open_dataset(tmp_path).class_map
