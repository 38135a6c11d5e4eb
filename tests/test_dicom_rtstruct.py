"""RT structure sets (RTSTRUCT) as the labels of the series they reference: contours filled on the series'
slices, ROIs as classes by name, the body outline left out, overlaps given to the smaller ROI, and the
pairing shared with DICOM SEG objects.

Contours are written as the test's own voxel rectangles, their corners turned into patient millimetres
by SimpleITK, so the expected label is a block of voxels: corners on voxel borders (x.5) cover the
voxels between them, corners on voxel centres cover the voxels from the first corner up to, not
including, the second (a centre on a left or top edge is in, on a right or bottom edge out)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from conftest import scores_of_labels_as_predictions
from fewsam.cli import app
from fewsam.data import open_dataset
from fewsam.data.readers import dicom_rtstruct
from fewsam.data.readers.dicom_rtstruct import CONTOUR_DATA, RTSTRUCT_SOP_CLASS, contour_values, filled
from fewsam.errors import DataError
from test_dicom import arrays, series_image, write_label, write_series
from test_dicom_seg import FRAME_OF_REFERENCE, ct_series, one_hot, resave_bare, save_seg

AXIAL = {"direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}
SHAPE = (5, 12, 10)  # (z, y, x)
Contour = tuple[float, list[tuple[float, float]], str]  # slice, (x, y) voxel indices of the corners, geometric type


def rectangle(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


GTV = [(z, rectangle(1.5, 2.5, 5.5, 6.5), "CLOSED_PLANAR") for z in (1, 2)]  # corners on voxel borders
RING = [(3, rectangle(1, 1, 8, 9), "CLOSED_PLANAR"), (3, rectangle(3, 3, 6, 7), "CLOSED_PLANAR")]  # on centres
BODY = [(z, rectangle(-0.5, -0.5, SHAPE[2] - 0.5, SHAPE[1] - 0.5), "CLOSED_PLANAR") for z in range(SHAPE[0])]


def expected_gtv_and_ring(gtv: int = 1, ring: int = 2) -> np.ndarray:
    """The label the contours above make, written as voxel blocks."""
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 3:7, 2:6] = gtv
    label[3, 1:9, 1:8] = ring
    label[3, 3:7, 3:6] = 0
    return label


def series(folder: Path, uid: str, seed: int = 0, **geometry) -> None:
    image, _ = arrays(seed, SHAPE)
    write_series(folder, image, uid=uid, extra_tags={"0020|0052": FRAME_OF_REFERENCE}, **(geometry or AXIAL))


def save_rtstruct(path: Path, series_uid: str, rois: dict[str, list[Contour]], **geometry) -> None:
    """An RT structure set referencing ``series_uid``: each ROI (numbered from 1 in order) with its contours,
    their corners turned into patient mm on the series' geometry."""
    grid = series_image(np.zeros(SHAPE, np.int16), **(geometry or AXIAL))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "RTSTRUCT", generate_uid(), series_uid + ".1"
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series_uid
    study = Dataset()
    study.RTReferencedSeriesSequence = [referenced_series]
    frame = Dataset()
    frame.FrameOfReferenceUID = FRAME_OF_REFERENCE
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, FRAME_OF_REFERENCE
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = [_contour(grid, z, corners, kind) for z, corners, kind in contours]
        ds.ROIContourSequence.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _contour(grid, z: float, corners: list[tuple[float, float]], kind: str) -> Dataset:
    contour = Dataset()
    contour.ContourGeometricType = kind
    points = [grid.TransformContinuousIndexToPhysicalPoint((x, y, float(z))) for x, y in corners]
    contour.NumberOfContourPoints = len(points)
    contour.ContourData = [round(v, 4) for point in points for v in point]
    return contour


def test_closed_contours_are_filled_on_their_slices_and_rois_are_classes_by_name(tmp_path, notices):
    """TCIA's layout: the CT and its structure set in folders of their own under patient/study/."""
    study = tmp_path / "P1" / "study"
    series(study / "1-CT", "1.2.826.0.1.3680043.2.1125.101")
    save_rtstruct(study / "2-RTSTRUCT" / "1-1.dcm", "1.2.826.0.1.3680043.2.1125.101",
                  {"BODY": BODY, "Rectum": RING, "GTV": GTV})
    dataset = open_dataset(tmp_path)
    assert list(dataset.entries) == ["P1/study/1-CT"]
    assert dataset.class_map.names == {1: "GTV", 2: "Rectum"}
    np.testing.assert_array_equal(dataset.load("P1/study/1-CT").label, expected_gtv_and_ring())


def test_a_contour_inside_another_on_one_slice_is_a_hole_on_any_slice_orientation(tmp_path):
    """The ring's inner contour is empty; on a coronal series (rows along -z) as on an axial one."""
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.102", direction=(1, 0, 0, 0, 0, 1, 0, -1, 0))
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.102", {"Ring": RING},
                  direction=(1, 0, 0, 0, 0, 1, 0, -1, 0))
    label = open_dataset(tmp_path).load("s1").label
    assert not label[3, 3:7, 3:6].any()
    np.testing.assert_array_equal(label, (expected_gtv_and_ring(gtv=0, ring=1)))


def test_the_body_outline_is_left_out_and_said_unless_classes_json_names_it(tmp_path, notices):
    """Without classes.json BODY (and the couch) are no classes; named, BODY is one and each organ inside it
    keeps its voxels, the overlap said with its count."""
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.103")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.103",
                  {"BODY": BODY, "CouchSurface": BODY[:1], "GTV": GTV, "Rectum": RING})
    assert open_dataset(tmp_path).class_map.names == {1: "GTV", 2: "Rectum"}
    assert "ROI(s) 'BODY', 'CouchSurface' of 1 RT structure set(s) are left out" in notices.text
    (tmp_path / "classes.json").write_text(json.dumps({"1": "Body", "2": "gtv", "3": "Rectum"}))
    dataset = open_dataset(tmp_path)
    assert dataset.class_map.names == {1: "Body", 2: "gtv", 3: "Rectum"}
    expected = expected_gtv_and_ring(gtv=2, ring=3)
    expected[expected == 0] = 1
    expected[3, 3:7, 3:6] = 1  # the ring's hole is the body's
    np.testing.assert_array_equal(dataset.load("s1").label, expected)
    assert "ROIs overlap ('Rectum' inside 'BODY' (44 voxels); 'GTV' inside 'BODY' (32 voxels))" in notices.text
    assert "'CouchSurface' of 1 RT structure set(s) are left out: they name no class of classes.json" in notices.text


def test_class_values_above_255_are_kept_in_16_bits(tmp_path):
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.113")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.113", {"GTV": GTV, "Rectum": RING})
    (tmp_path / "classes.json").write_text(json.dumps({"1": "GTV", "300": "Rectum"}))
    label = open_dataset(tmp_path).load("s1").label
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, expected_gtv_and_ring(ring=0) + 300 * (expected_gtv_and_ring(gtv=0) > 0))


def test_a_labels_file_is_read_before_a_structure_set_of_the_same_series(tmp_path, notices):
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.114")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.114", {"GTV": GTV})
    mine = expected_gtv_and_ring(gtv=0)
    write_label(tmp_path / "labels" / "s1.nii.gz", mine, series_image(mine, **AXIAL))
    np.testing.assert_array_equal(open_dataset(tmp_path).load("s1").label, mine)
    assert "1 series have both a labels/ file and an RT structure set (s1); the labels/ file is read" in notices.text


def test_points_and_lines_are_skipped_and_said(tmp_path, notices):
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.104")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.104",
                  {"GTV": [*GTV, (2, [(7.0, 7.0)], "POINT")], "Iso": [(2, [(4.0, 4.0)], "POINT")],
                   "Line": [(0, [(1.0, 1.0), (5.0, 5.0)], "OPEN_PLANAR")]})
    dataset = open_dataset(tmp_path)
    assert dataset.class_map.names == {1: "GTV"}
    np.testing.assert_array_equal(dataset.load("s1").label, expected_gtv_and_ring(ring=0))
    assert "its contours that enclose no area (1 OPEN_PLANAR, 2 POINT: points and lines) are skipped" in notices.text


def test_a_structure_set_of_a_series_not_in_the_dataset_is_said_and_read_by_none(tmp_path, notices):
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.105")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.999", {"GTV": GTV})
    dataset = open_dataset(tmp_path)
    assert list(dataset.entries) == ["s1"] and not dataset.has_any_label()
    assert "1 RT structure set object(s) reference no series of the dataset (rt/a.dcm) and are not read" in notices.text


@pytest.mark.parametrize("second", ["RT structure set", "DICOM SEG"])
def test_two_label_objects_of_one_series_are_refused_in_one_line(tmp_path, second):
    uid = "1.2.826.0.1.3680043.2.1125.106"
    image, label = arrays(0, SHAPE)
    sources = ct_series(tmp_path / "s1", image, uid)
    save_rtstruct(tmp_path / "rt" / "a.dcm", uid, {"GTV": GTV}, direction=(1, 0, 0, 0, 0, 1, 0, -1, 0))
    if second == "DICOM SEG":
        save_seg(tmp_path / "seg" / "b.dcm", sources, one_hot(label, [1]), ["GTV"])
    else:
        save_rtstruct(tmp_path / "rt2" / "b.dcm", uid, {"GTV": GTV}, direction=(1, 0, 0, 0, 0, 1, 0, -1, 0))
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path)
    message = str(err.value)
    assert "series s1 is referenced by 2 DICOM label objects (rt/a.dcm: RT structure set, " in message
    assert f"b.dcm: {second}); fewsam does not choose between annotations" in message and "\n" not in message


@pytest.mark.parametrize(("plane", "said"), [
    (SHAPE[0] + 2, "ROI 'GTV' at (-8.95, 7, 20.5) mm lies beyond the 5 slices of its series (at slice 7)"),
    (2.5, "ROI 'GTV' at (-8.95, 7, 9.25) mm lies between two slices of its series (at slice 2.5)"),
    (-0.5, "ROI 'GTV' at (-8.95, 7, 1.75) mm lies beyond the 5 slices of its series (at slice -0.5)")])
def test_a_contour_on_no_slice_of_the_series_is_refused_in_one_line(tmp_path, plane, said):
    """Within half a slice spacing of a slice is on it; half-way, or beyond the first or last slice, on none."""
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.107")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.107",
                  {"GTV": [(plane, rectangle(1.5, 2.5, 5.5, 6.5), "CLOSED_PLANAR")]})
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path).load("s1")
    message = str(err.value)
    assert said in message and "\n" not in message


def test_a_contour_within_half_a_slice_of_a_slice_lies_on_it(tmp_path):
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.109")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.109",
                  {"GTV": [(z + shift, corners, kind) for (z, corners, kind), shift in zip(GTV, (0.3, -0.45))]})
    np.testing.assert_array_equal(open_dataset(tmp_path).load("s1").label, expected_gtv_and_ring(ring=0))


def test_a_contour_whose_data_are_no_triplets_is_refused_in_one_line(tmp_path):
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.108")
    path = tmp_path / "rt" / "a.dcm"
    save_rtstruct(path, "1.2.826.0.1.3680043.2.1125.108", {"GTV": GTV})
    ds = pydicom.dcmread(path)
    ds.ROIContourSequence[0].ContourSequence[1].ContourData = [1.0, 2.0, 3.0, 4.0]
    ds.save_as(path)
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path).load("s1")
    assert str(err.value) == (f"{path}: a contour of ROI 'GTV' holds no x, y, z triplets of numbers in its ContourData "
                              "(4 value(s)); export the structure set again")


def test_two_rois_along_one_border_split_its_voxels():
    """Corners on voxel centres: the shared edge's voxels go to the right-hand square alone."""
    left = filled([np.array(rectangle(1, 1, 4, 4))], 6, 8)
    right = filled([np.array(rectangle(4, 1, 7, 4))], 6, 8)
    assert left.sum() == right.sum() == 9 and not (left & right).any()
    assert left[1:4, 1:4].all() and right[1:4, 4:7].all()


def test_info_describes_the_structure_sets_and_evaluate_scores_a_prediction_equal_to_the_label_as_dice_1(tmp_path):
    data = tmp_path / "data"
    for k in range(2):
        uid = f"1.2.826.0.1.3680043.2.1125.11{k}"
        series(data / f"P{k}" / "CT", uid, seed=k)
        save_rtstruct(data / f"P{k}" / "RTSTRUCT" / "1-1.dcm", uid, {"External": BODY, "GTV": GTV, "Rectum": RING})
    info = CliRunner().invoke(app, ["info", str(data)])
    assert info.exit_code == 0, info.output
    assert "RT structure sets: each class an ROI of its ROIName" in info.output
    assert "1 GTV (stored as ROI 'GTV'), 2 Rectum (stored as ROI 'Rectum')" in info.output
    scores = scores_of_labels_as_predictions(data, tmp_path)
    assert len(scores["cases"]) == 2 and scores["mean"]["dice"] == pytest.approx(1.0)


def test_a_label_file_beside_a_structure_set_and_a_seg_is_refused_naming_the_three_kinds(tmp_path):
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.131")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.131", {"GTV": GTV, "Rectum": RING})
    image, label = arrays(40)
    sources = ct_series(tmp_path / "s2", image, "1.2.826.0.1.3680043.2.1125.132")
    save_seg(tmp_path / "seg" / "a.dcm", sources, one_hot(label, [1]), ["Liver"])
    image, label = arrays(41)
    write_series(tmp_path / "s3", image, uid="1.2.826.0.1.3680043.2.1125.133")
    write_label(tmp_path / "labels" / "s3.nii.gz", label, series_image(image))
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path).class_map
    assert (f"the labels of {tmp_path} mix RT structure sets (ROIs 'GTV', 'Rectum') and DICOM SEG objects (segments "
            "'Liver') with plain label maps (values 1, 2), and no file says which value is which ROI or segment: "
            ) in str(err.value)


def test_a_structure_set_without_the_part_10_header_is_its_series_label(tmp_path):
    """As pydicom's own rtstruct.dcm and older planning systems' exports: a bare data set, without the
    preamble and DICM marker, is its series' label, not a series of its own that cannot be read."""
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.134")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.134", {"GTV": GTV, "Rectum": RING})
    resave_bare(tmp_path / "rt" / "a.dcm")
    dataset = open_dataset(tmp_path)
    assert list(dataset.entries) == ["s1"]
    np.testing.assert_array_equal(dataset.load("s1").label, expected_gtv_and_ring())


def test_opening_leaves_contour_data_unread_and_loading_parses_it_from_the_stored_bytes(tmp_path, monkeypatch):
    """A CT's structure set holds millions of ContourData numbers: opening a dataset reads the ROIs and their
    contour types alone, and loading a case parses each ContourData once, from the bytes the file holds,
    not through pydicom's conversion into an object per number."""
    series(tmp_path / "s1", "1.2.826.0.1.3680043.2.1125.135")
    save_rtstruct(tmp_path / "rt" / "a.dcm", "1.2.826.0.1.3680043.2.1125.135", {"GTV": GTV, "Rectum": RING})
    converted_tags: list[int] = []
    parsed: list[np.ndarray] = []
    convert, parse = pydicom.dataset.convert_raw_data_element, contour_values
    monkeypatch.setattr(pydicom.dataset, "convert_raw_data_element",
                        lambda raw, *args, **kwargs: converted_tags.append(raw.tag) or convert(raw, *args, **kwargs))
    monkeypatch.setattr(dicom_rtstruct, "contour_values", lambda contour: parsed.append(parse(contour)) or parsed[-1])
    dataset = open_dataset(tmp_path)
    assert dataset.class_map.names == {1: "GTV", 2: "Rectum"}
    assert parsed == [] and CONTOUR_DATA not in converted_tags
    np.testing.assert_array_equal(dataset.load("s1").label, expected_gtv_and_ring())
    assert len(parsed) == len(GTV) + len(RING) and CONTOUR_DATA not in converted_tags


@pytest.mark.parametrize("vr", ["DS", None])  # explicit VR, and implicit VR (the dictionary's DS)
@pytest.mark.parametrize("stored", [b"-1.5e+01 \\3\\4\\ +2.50\\1E2 \\.5\\-0\\7.000000001\\0.1 ",
                                    b"3\\4", b"12"])
def test_contour_data_parsed_from_its_bytes_equals_pydicom_s_values(vr, stored):
    contour = Dataset()
    contour[CONTOUR_DATA] = RawDataElement(CONTOUR_DATA, vr, len(stored), stored, 0, vr is None, True)
    fast = contour_values(contour)
    by_value = np.asarray(contour.ContourData, dtype=np.float64).ravel()
    np.testing.assert_array_equal(fast, by_value)
    assert fast.dtype == np.float64 and (np.signbit(fast) == np.signbit(by_value)).all()


@pytest.mark.parametrize("stored", [b"1\\abc\\3", b"1\\\\3 "])
def test_contour_data_that_is_no_numbers_is_a_value_error_as_with_pydicom(stored):
    contour = Dataset()
    contour[CONTOUR_DATA] = RawDataElement(CONTOUR_DATA, "DS", len(stored), stored, 0, False, True)
    with pytest.raises(ValueError):
        contour_values(contour)
    with pytest.raises((ValueError, TypeError)):
        np.asarray(contour.ContourData, dtype=np.float64)
