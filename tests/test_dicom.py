"""DICOM series written with SimpleITK: read as cases with their geometry, labels from NIfTI,
predictions written as NIfTI on the series' grid, and the mistakes a user can make."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from fewsam.data import open_dataset, read_prediction, select_labelled, write_prediction
from fewsam.errors import DataError

SPACING = (0.7, 0.8, 2.5)  # (x, y, z) mm
ORIGIN = (-10.0, 5.0, 3.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)  # coronal: rows run along -z


def series_image(array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def write_series(folder: Path, array: np.ndarray, uid: str = "1.2.826.0.1.3680043.2.1125.7",
                 extra_tags: dict[str, str] | None = None, **geometry) -> sitk.Image:
    """One .dcm file per slice of ``array`` (z, y, x), with the tags that place each slice (and
    ``extra_tags``, e.g. the series' number and description, in every file)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = series_image(array, **geometry)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        s = image[:, :, z]
        tags = {"0020|000e": uid, "0020|000d": uid + ".1", "0008|0060": "MR", "0020|0013": str(z + 1),
                "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))),
                "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))),
                "0018|0050": str(image.GetSpacing()[2]), **(extra_tags or {})}
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z + 1}.dcm"))  # slice10 sorts before slice2: GDCM orders by position
        writer.Execute(s)
    return image


def write_label(path: Path, label: np.ndarray, reference: sitk.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(label)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path))


def arrays(seed: int, shape=(11, 6, 5)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(-500, 1500, shape).astype(np.int16), rng.integers(0, 3, shape).astype(np.uint8)


def test_series_with_labels_geometry_and_natural_order(tmp_path):
    image2, label2 = arrays(0)
    image10, _ = arrays(1, (3, 6, 5))
    ref = write_series(tmp_path / "images" / "case2", image2, uid="1.2.3.2")
    write_series(tmp_path / "images" / "case10", image10, uid="1.2.3.10")
    write_label(tmp_path / "labels" / "case2.nii.gz", label2, ref)
    ds = open_dataset(tmp_path)
    assert ds.layout == "dicom" and ds.split("all") == ["case2", "case10"]
    assert ds.has_label("case2") and not ds.has_label("case10") and ds.has_any_label()
    assert ds.class_map.names == {1: "class1", 2: "class2"}
    assert ds.split("train") == ["case2"] and ds.split("test") == ["case10"]
    case = ds.load("case2")
    np.testing.assert_array_equal(case.image, image2.astype(np.float32))
    np.testing.assert_array_equal(case.label, label2)
    assert case.format == "dicom" and case.rel_path == "case2.nii.gz"
    assert case.spacing == pytest.approx(SPACING[::-1])
    np.testing.assert_allclose(case.meta["origin"], ORIGIN, atol=1e-6)
    np.testing.assert_allclose(case.meta["direction"], DIRECTION, atol=1e-6)
    assert ds.num_slices("case2") == 11 and ds.num_slices("case10") == 3
    assert [r.z for r in select_labelled(ds, n_cases=1)] == list(range(11))


def test_prediction_is_nifti_on_the_series_geometry(tmp_path):
    image, label = arrays(2)
    ref = write_series(tmp_path / "data" / "p1" / "t2", image)
    (tmp_path / "data" / "classes.json").write_text(json.dumps({"1": "prostate", "2": "lesion"}))
    ds = open_dataset(tmp_path / "data")
    assert ds.split("val") == ["p1/t2"] and ds.subject_of("p1/t2") == "p1"
    case = ds.load("p1/t2")
    path = write_prediction(case, label, tmp_path / "pred")
    assert path == tmp_path / "pred" / "p1" / "t2.nii.gz"
    written = sitk.ReadImage(str(path))
    assert written.GetSize() == ref.GetSize() and written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(written.GetSpacing(), SPACING, rtol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), DIRECTION, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), label)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", ds.class_map), label)
    # the prediction overlays the series voxel by voxel: same physical point for the same index
    np.testing.assert_allclose(written.TransformIndexToPhysicalPoint((4, 5, 10)),
                               ref.TransformIndexToPhysicalPoint((4, 5, 10)), atol=1e-4)


def test_series_without_labels_opens_for_prediction(tmp_path, caplog):
    image, _ = arrays(3, (2, 4, 4))
    write_series(tmp_path / "s1", image)
    write_series(tmp_path / "s2", image, uid="1.2.3.99")
    caplog.set_level(logging.INFO, logger="fewsam")
    ds = open_dataset(tmp_path)
    assert not ds.has_any_label() and ds.split("val") == ["s1", "s2"]
    assert any("no labels found" in r.getMessage() for r in caplog.records)
    case = ds.load("s2")
    assert case.label is None and case.image.shape == (2, 4, 4)
    assert write_prediction(case, np.ones((2, 4, 4), np.uint8), tmp_path / "pred").name == "s2.nii.gz"


def test_single_slice_and_files_right_in_root(tmp_path):
    image, label = arrays(4, (1, 5, 7))
    ref = write_series(tmp_path / "xray", image)
    write_label(tmp_path / "xray" / "labels" / "xray.nii.gz", label, ref)
    ds = open_dataset(tmp_path / "xray")
    case = ds.load("xray")
    assert case.image.shape == (1, 5, 7) and case.rel_path == "xray.nii.gz"
    np.testing.assert_array_equal(case.label, label)


def test_files_named_as_scanners_name_them_are_found_by_their_dicm_marker(tmp_path):
    image, label = arrays(5)
    names = {"p1/t2": lambda z: f"IM{z:04d}", "p2/t2": lambda z: f"1.2.840.113619.2.55.{z}"}
    for i, (series, rename) in enumerate(names.items()):
        ref = write_series(tmp_path / series, image, uid=f"1.2.826.0.1.3680043.2.1125.{i + 1}")
        for z, path in enumerate(sorted((tmp_path / series).glob("*.dcm"))):
            path.rename(path.with_name(rename(z)))
        write_label(tmp_path / "labels" / f"{series}.nii.gz", label, ref)
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # an index, no image
    (tmp_path / "p1" / "NOTES").write_text("acquired on the 3T scanner")
    ds = open_dataset(tmp_path)
    assert ds.layout == "dicom" and sorted(ds.entries) == ["p1/t2", "p2/t2"]
    for case_id in ds.entries:
        case = ds.load(case_id)
        np.testing.assert_array_equal(case.image, image.astype(np.float32))
        np.testing.assert_array_equal(case.label, label)


def test_label_stored_in_another_orientation_is_resampled(tmp_path):
    image, label = arrays(5)
    ref = write_series(tmp_path / "images" / "c1", image)
    # the same voxels in the same places, stored x- and z-reversed (as a RAS-reorienting converter would)
    flipped = sitk.Flip(_with_geometry(sitk.GetImageFromArray(label), ref), (True, False, True))
    sitk.WriteImage(flipped, str(_mkdir(tmp_path / "labels") / "c1.nii.gz"))
    assert not np.array_equal(sitk.GetArrayFromImage(flipped), label)
    np.testing.assert_array_equal(open_dataset(tmp_path).load("c1").label, label)


def test_label_cropped_to_its_structures_is_placed_on_the_series(tmp_path):
    """3D Slicer and ITK-SNAP can export a segmentation cropped to its extent: same spacing and
    direction, a smaller block whose origin sits on a voxel of the series."""
    image, _ = arrays(5)
    ref = write_series(tmp_path / "images" / "c1", image)
    label = np.zeros(image.shape, np.uint8)
    label[3:7, 2:5, 1:4] = 1
    label[4:6, 3, 2] = 2
    block = sitk.GetImageFromArray(label[3:7, 2:5, 1:4].copy())
    block.CopyInformation(ref[1:4, 2:5, 3:7])  # x, y, z slicing keeps the block's physical origin
    sitk.WriteImage(block, str(_mkdir(tmp_path / "labels") / "c1.nii.gz"))
    np.testing.assert_array_equal(open_dataset(tmp_path).load("c1").label, label)


def test_a_crop_reaching_past_the_series_is_refused(tmp_path):
    image, _ = arrays(5)
    ref = write_series(tmp_path / "images" / "c1", image)
    block = sitk.GetImageFromArray(np.ones((4, 3, 3), np.uint8))
    block.CopyInformation(ref[1:4, 2:5, 3:7])
    block.SetOrigin(ref.TransformIndexToPhysicalPoint((1, 2, 9)))  # its last slices lie past the series
    sitk.WriteImage(block, str(_mkdir(tmp_path / "labels") / "c1.nii.gz"))
    with pytest.raises(DataError, match=r"c1.nii.gz does not lie on its DICOM series"):
        open_dataset(tmp_path).load("c1")


def _with_geometry(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    image.CopyInformation(reference)
    return image


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_mistakes_are_data_errors(tmp_path):
    image, label = arrays(6, (3, 6, 5))
    write_series(tmp_path / "images" / "ok", image)
    wider = np.pad(label, ((0, 0), (0, 0), (0, 2)))
    write_label(tmp_path / "labels" / "ok.nii.gz", wider, series_image(wider))
    write_series(tmp_path / "images" / "mixed", image, uid="1.2.3.3")
    write_series(tmp_path / "images" / "mixed", image[:2] + 1, uid="1.2.3.4")
    ds = open_dataset(tmp_path)
    with pytest.raises(DataError, match=r"label .*ok.nii.gz has size \(7, 6, 3\), its series \(5, 6, 3\)"):
        ds.load("ok")
    with pytest.raises(DataError, match="mixed holds 2 DICOM series; put each series in its own folder"):
        ds.load("mixed")
    (tmp_path / "labels" / "ok.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="cannot read label .*ok.nii.gz"):
        ds.load("ok")


def write_files_named_as_dicom(folder: Path) -> None:
    """Files named ``.dcm`` that are no DICOM: empty, text, and a PNG and a NIfTI file renamed."""
    _mkdir(folder)
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.dcm").write_bytes(b"not a dicom file" * 20)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 5), np.uint8)), str(folder / "slice.png"))
    (folder / "slice.png").rename(folder / "slice.dcm")
    sitk.WriteImage(series_image(np.zeros((3, 6, 5), np.int16)), str(folder / "volume.nii.gz"))
    (folder / "volume.nii.gz").rename(folder / "volume.dcm")


def test_a_folder_of_dcm_files_none_of_them_dicom_is_no_case_and_said_as_the_data_opens(tmp_path, caplog):
    image, _ = arrays(7, (3, 6, 5))
    write_series(tmp_path / "p1" / "ct", image)
    write_files_named_as_dicom(tmp_path / "p2" / "ct")
    caplog.set_level(logging.INFO, logger="fewsam")
    ds = open_dataset(tmp_path)
    assert ds.split("all") == ["p1/ct"]
    [said] = [r.getMessage() for r in caplog.records if "are not cases" in r.getMessage()]
    assert "1 folder(s) are not cases (p2/ct)" in said and "none of them is" in said, said


def test_a_series_with_files_beside_it_that_are_no_dicom_is_read(tmp_path):
    image, _ = arrays(8, (3, 6, 5))
    write_series(tmp_path / "ct", image)
    write_files_named_as_dicom(tmp_path / "ct")
    ds = open_dataset(tmp_path)
    assert ds.split("all") == ["ct"]
    np.testing.assert_array_equal(ds.load("ct").image, image.astype(np.float32))


def test_data_whose_dcm_files_are_none_of_them_dicom_is_refused_naming_them(tmp_path):
    from conftest import assert_one_line_error, run_fewsam

    write_files_named_as_dicom(tmp_path / "data" / "p1")
    write_files_named_as_dicom(tmp_path / "data" / "p2")
    with pytest.raises(DataError, match=r"no DICOM series found in .*data: the files in p1, p2 are named as DICOM"):
        open_dataset(tmp_path / "data")
    assert_one_line_error(run_fewsam("info", str(tmp_path / "data"), cwd=tmp_path), "the files in p1, p2 are named")


def test_a_series_label_named_flat_as_patient_underscore_series_is_found(tmp_path, caplog, monkeypatch):
    from fewsam import progress

    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level(logging.INFO, logger="fewsam")
    image, label = arrays(4)
    ref = write_series(tmp_path / "p1" / "cine", image)
    write_label(tmp_path / "labels" / "p1_cine.nii.gz", label, ref)
    write_label(tmp_path / "labels" / "p9_cine.nii.gz", label, ref)  # no such series
    ds = open_dataset(tmp_path)
    np.testing.assert_array_equal(ds.load("p1/cine").label, label)
    assert any("p9_cine.nii.gz" in r.getMessage() and "match no image" in r.getMessage() for r in caplog.records)


def _split_into(folder: Path, first: Path, second: Path, keep: int) -> None:
    """The series in ``folder`` moved into two folders, its first ``keep`` slices in ``first``."""
    files = sorted(folder.iterdir(), key=lambda p: int(p.stem[5:]))
    for target, part in ((first, files[:keep]), (second, files[keep:])):
        target.mkdir(parents=True, exist_ok=True)
        for path in part:
            path.rename(target / path.name)


def test_a_series_split_across_two_folders_is_refused_naming_them(tmp_path):
    """Each folder was a case of half the volume (its prediction a half volume), and nothing said so."""
    from conftest import assert_one_line_error, run_fewsam

    write_series(tmp_path / "export", arrays(3, (8, 6, 5))[0], uid="1.2.3.8")
    ct = tmp_path / "data" / "p1" / "ct"
    _split_into(tmp_path / "export", ct / "0001", ct / "0002", 4)
    write_series(tmp_path / "data" / "p2" / "ct", arrays(4)[0], uid="1.2.3.9")
    with pytest.raises(DataError, match=r"data: 2 folders hold parts or copies of one DICOM series \(p1/ct/0001, "
                                        r"p1/ct/0002: SeriesInstanceUID 1\.2\.3\.8\), each read as a case of part"):
        open_dataset(tmp_path / "data")
    assert_one_line_error(run_fewsam("info", str(tmp_path / "data"), cwd=tmp_path), "2 folders hold parts or copies")


def test_a_series_copied_into_a_second_folder_is_refused(tmp_path):
    """The two copies were two cases of one patient's volume, which a split could put in training and validation."""
    import shutil

    write_series(tmp_path / "p1" / "ct", arrays(3)[0], uid="1.2.3.8")
    shutil.copytree(tmp_path / "p1" / "ct", tmp_path / "p1" / "ct copy")
    with pytest.raises(DataError, match=r"2 folders hold parts or copies of one DICOM series \(p1/ct, p1/ct copy: "):
        open_dataset(tmp_path)


def test_the_echoes_of_one_series_each_in_a_folder_of_its_own_are_each_a_case(tmp_path):
    """A two-echo series at the same slice positions, split by echo into folders as fewsam asks of such a series."""
    for echo in (1, 2):
        write_series(tmp_path / "p1" / f"echo{echo}", arrays(echo)[0], uid="1.2.3.8")
    dataset = open_dataset(tmp_path)
    assert dataset.split("all") == ["p1/echo1", "p1/echo2"]
    np.testing.assert_array_equal(dataset.load("p1/echo2").image, arrays(2)[0].astype(np.float32))


def test_series_beside_copies_of_one_localizer_are_each_a_case(tmp_path):
    """A scanner export copies the scout into each series' folder: its first file names one series for both."""
    for series, uid in (("t1", "1.2.3.1"), ("t2", "1.2.3.2")):
        write_series(tmp_path / "scout", arrays(9, (1, 6, 5))[0], uid="1.2.3.9")
        (tmp_path / "scout" / "slice1.dcm").rename(tmp_path / "scout" / "a_scout.dcm")
        write_series(tmp_path / "data" / "p1" / series, arrays(5)[0], uid=uid)
        (tmp_path / "scout" / "a_scout.dcm").rename(tmp_path / "data" / "p1" / series / "a_scout.dcm")
    dataset = open_dataset(tmp_path / "data")
    assert dataset.split("all") == ["p1/t1", "p1/t2"]
    assert dataset.load("p1/t2").image.shape == (11, 6, 5)
