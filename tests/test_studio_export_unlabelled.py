"""The studio's export of volumes labelled on some slices: the unlabelled slices must read back as unannotated
(nnU-Net's "ignore" label, ``Case.ignore``), never as background, in fewsam and in the tools users train with;
wholly labelled volumes are exported as they are, with no ignore value.

Each test labels slices through ``Project``, exports, copies the export over a copy of the dataset (as a user
does) and opens that with ``open_dataset``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import write_tiny_acdc
from fewsam.data import open_dataset, select_labelled
from fewsam.data.phantom import write_phantom_dataset
from fewsam.data.types import ClassMap, SliceRef
from fewsam.labels import IGNORE, value_lut
from fewsam.studio.errors import StudioError
from fewsam.studio.project import EXPORT, EXPORT_MANIFEST, Project, export_ignore_value
from test_slicer_segmentations import blank, reference_volume, write_segmentation

CASE, SLICES = "phantom_000", 5
LABELLED = (1, 3)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("export") / "data", n_train=1, n_val=1, slices=SLICES)


def drawn(height: int, width: int, values: tuple[int, ...]) -> np.ndarray:
    label = np.zeros((height, width), np.uint8)
    for i, value in enumerate(values):
        label[4 + 8 * i: 10 + 8 * i, 4:20] = value
    return label


def label_slices(project: Project, case_id: str, zs: range | tuple[int, ...]) -> dict[int, np.ndarray]:
    """Save a label on each slice ``zs`` of ``case_id`` (two of the classes, drawn differently per slice)."""
    height, width = project.load_case(case_id).image.shape[1:3]
    classes = project.class_map.labels
    saved = {z: drawn(height, width, (classes[z % len(classes)], classes[-1 - z % len(classes)])) for z in zs}
    for z, label in saved.items():
        project.save_slice(case_id, z, label)
    return saved


def exported_into_copy(data: Path, project: Project, tmp_path: Path) -> Path:
    """Export, then copy the export over a copy of the dataset, as a user adds it to the dataset."""
    project.export()
    copy = shutil.copytree(data, tmp_path / "with_export")
    export = project.folder / EXPORT
    for path in export.rglob("*"):
        if path.is_file() and path.name != EXPORT_MANIFEST:
            (copy / path.relative_to(export)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, copy / path.relative_to(export))
    return copy


def test_a_partly_labelled_volume_reads_back_with_its_unlabelled_slices_unannotated(phantom, tmp_path):
    """The export wrote the 3 slices not labelled as 0: read back (by fewsam, nnU-Net, MONAI) as background
    where the heart lies, a wrong label no tool could tell from a true one."""
    project = Project(phantom, tmp_path / "project")
    saved = label_slices(project, CASE, LABELLED)
    copy = exported_into_copy(phantom, project, tmp_path)
    dataset = open_dataset(copy)
    assert dataset.class_map == ClassMap({1: "RV", 2: "Myo", 3: "LV"}, ignore=4)  # nnU-Net's: the highest value
    assert json.loads((copy / "dataset.json").read_text())["labels"] == {"background": 0, "RV": 1, "Myo": 2,
                                                                        "LV": 3, "ignore": 4}
    case = dataset.load(CASE)
    assert case.ignore == 4
    for z in range(SLICES):
        if z in saved:
            np.testing.assert_array_equal(case.label[z], saved[z])
        else:
            assert (value_lut(dataset.class_map.labels, case.ignore)[case.label[z]] == IGNORE).all()
    assert select_labelled(dataset, n_cases=1, annotated_only=True) == [SliceRef(CASE, z) for z in LABELLED]
    manifest = json.loads((project.folder / EXPORT / EXPORT_MANIFEST).read_text())
    assert (manifest["ignore"], manifest["ignore_file"]) == (4, "dataset.json")
    project.export()  # a second export replaces the first, dataset.json included (the manifest names it)


def test_a_wholly_labelled_volume_is_exported_without_an_ignore_value(phantom, tmp_path):
    project = Project(phantom, tmp_path / "project")
    saved = label_slices(project, CASE, range(SLICES))
    copy = exported_into_copy(phantom, project, tmp_path)
    export = project.folder / EXPORT
    assert sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()) == [
        EXPORT_MANIFEST, f"labelsTr/{CASE}.nii.gz"]
    assert "ignore" not in json.loads((export / EXPORT_MANIFEST).read_text())
    dataset = open_dataset(copy)
    assert dataset.class_map == open_dataset(phantom).class_map and dataset.class_map.ignore is None
    np.testing.assert_array_equal(dataset.load(CASE).label, np.stack([saved[z] for z in range(SLICES)]))


def test_beside_a_partly_labelled_volume_a_wholly_labelled_one_holds_only_its_classes(phantom, tmp_path):
    project = Project(phantom, tmp_path / "project")
    whole = label_slices(project, CASE, range(SLICES))
    label_slices(project, "phantom_001", LABELLED)
    copy = exported_into_copy(phantom, project, tmp_path)
    dataset = open_dataset(copy)
    assert dataset.class_map.names == open_dataset(phantom).class_map.names  # the ignore value is no class
    np.testing.assert_array_equal(dataset.load(CASE).label, np.stack([whole[z] for z in range(SLICES)]))
    assert set(np.unique(dataset.load("phantom_001").label)) == {0, 1, 2, 3, 4}


def write_plain_nifti(root: Path, slices: int) -> Path:
    """A plain NIfTI folder (images/ + labels/, no classes.json: classes named from the label values)."""
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for name in ("a", "b"):
        label = np.zeros((24, 20, slices), np.uint8)
        label[4:12, 4:12], label[14:20, 4:12] = 1, 2
        nib.save(nib.Nifti1Image(rng.random((24, 20, slices)).astype(np.float32), np.eye(4)),
                 root / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labels" / f"{name}.nii.gz")
    return root


def test_a_plain_nifti_folder_declares_its_unannotated_value_in_classes_json(tmp_path):
    """Without a classes.json the classes are the values the label files hold: the ignore value would be
    read as a class of its own, so the export names the classes and the ignore value in a classes.json."""
    data = write_plain_nifti(tmp_path / "plain", slices=4)
    project = Project(data, tmp_path / "project")
    saved = label_slices(project, "a", (2,))
    dataset = open_dataset(exported_into_copy(data, project, tmp_path))
    assert dataset.class_map == ClassMap({1: "class1", 2: "class2"}, ignore=3)
    label = dataset.load("a").label
    np.testing.assert_array_equal(label[2], saved[2])
    assert (label[[0, 1, 3]] == 3).all()


def test_an_acdc_h5_volume_labelled_on_some_slices_is_exported_as_slice_files(tmp_path):
    """ACDC's h5 layout has fixed classes and no ignore value, so the volume's unlabelled slice went out as
    background; its own slice files (SSL4MIS's training slices) carry the labelled slice alone."""
    volume = "patient002_frame01"
    data = write_tiny_acdc(tmp_path / "acdc", [volume])
    project = Project(data, tmp_path / "project")
    saved = label_slices(project, volume, (1,))
    assert project.export()["files"] == [f"data/{volume}_slice_1.h5"]
    dataset = open_dataset(exported_into_copy(data, project, tmp_path))
    case = dataset.load(f"{volume}_slice_1")
    np.testing.assert_array_equal(case.label[0], saved[1])
    np.testing.assert_array_equal(case.image[0], open_dataset(data).load(volume).image[1])
    np.testing.assert_array_equal(dataset.load(volume).label, open_dataset(data).load(volume).label)  # untouched


@pytest.mark.parametrize(("class_map", "value"), [
    (ClassMap({1: "RV", 2: "Myo", 3: "LV"}), 4),
    (ClassMap({1: "RV", 2: "Myo", 3: "LV"}, ignore=200), 200),  # the dataset's own
    (ClassMap({1: "a", 254: "b", 255: "c"}), 253),  # 256 is past a byte: the highest value no class holds
])
def test_the_ignore_value_is_no_class_and_fits_a_byte(class_map, value):
    assert export_ignore_value(class_map) == value


def test_a_slicer_segmentation_labelled_on_some_slices_is_refused_naming_the_case(tmp_path):
    """A segmentation's voxels outside every segment are background, so it cannot mark unlabelled slices: the
    export wrote the ignore value there, read back as background."""
    reference = reference_volume(tmp_path / "slicer" / "images" / "v.nrrd")
    label = blank()
    label[1:3, 2:5, 2:5] = 1
    write_segmentation(tmp_path / "slicer" / "labels" / "v.seg.nrrd", [label], [("liver", 1, 0)], reference)
    project = Project(tmp_path / "slicer", tmp_path / "project")
    label_slices(project, "v", (2,))
    with pytest.raises(StudioError, match=r"v is labelled on slice\(s\) \[2\] of 6, .* label every slice of it"):
        project.export()
    assert not (project.folder / EXPORT).exists()
    label_slices(project, "v", range(6))
    assert project.export()["files"] == ["labels/v.seg.nrrd"]  # wholly labelled: exported as ever
