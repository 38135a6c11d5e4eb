"""Predictions written as RT structure sets (``write_dicom_rtstruct``): a valid RTSTRUCT of the series (its
patient, study, frame of reference and instances referenced, an ROI per class), contours on the planes of
the slices they reference, and read back by fewsam's own RT structure set reader as the prediction, voxel for
voxel, on axial, coronal and oblique series, holes and separate blobs on one slice included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from fewsam.data import open_dataset, read_prediction
from fewsam.data.readers.dicom_rtstruct import RTSTRUCT_SOP_CLASS, filled, read_rtstruct_on
from fewsam.data.readers.slicer_segmentation import name_key
from fewsam.data.rtstruct_writer import SliceReference, mask_outlines, slice_references
from fewsam.data.types import ClassMap
from fewsam.data.writers import dicom_rtstruct_path, write_dicom_rtstruct
from test_dicom import arrays, write_series
from test_dicom_seg import FRAME_OF_REFERENCE, assert_uids_follow_the_prediction

SHAPE = (4, 12, 10)  # (z, y, x)
NAMES = {1: "Liver", 2: "Spleen", 3: "Kidney"}  # Kidney is predicted nowhere


def _oblique() -> tuple[float, ...]:
    """A direction tilted about two axes, as a gantry-tilted or double-oblique MR series lies."""
    a, b = np.radians(25.0), np.radians(-15.0)
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return tuple(float(v) for v in (about_z @ about_x).ravel())


ORIENTATIONS = {"axial": (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), "coronal": (1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0),
                "oblique": _oblique()}


def prediction() -> np.ndarray:
    """Slice 1: a ring of Liver (a hole in it) and a second Liver blob apart, and Spleen touching the slice's
    edge; slices 2 and 3: Spleen along two image borders; slice 0 empty."""
    pred = np.zeros(SHAPE, np.uint8)
    pred[1, 1:7, 1:6] = 1
    pred[1, 3:5, 2:4] = 0
    pred[1, 8:10, 7:9] = 1
    pred[1, 0:2, 8:10] = 2
    pred[2:4, 6:12, 0:4] = 2
    pred[3, 11, 9] = 2  # one voxel in the far corner
    return pred


def dicom_case(folder: Path, uid: str, direction: tuple[float, ...]):
    """A DICOM series of SHAPE in ``folder``/s1 (with the tags a structure set copies), its case and its
    headers in slice order."""
    image, _ = arrays(0, SHAPE)
    write_series(folder / "s1", image, uid=uid, direction=direction,
                 extra_tags={"0020|0052": FRAME_OF_REFERENCE, "0010|0020": "PAT-7", "0010|0010": "Doe^Jane"})
    headers = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in (folder / "s1").glob("*.dcm")),
                     key=lambda h: int(h.InstanceNumber))
    return open_dataset(folder).load("s1"), headers


def grid_of(case) -> sitk.Image:
    grid = sitk.Image([int(n) for n in case.image.shape[::-1]], sitk.sitkUInt8)
    grid.SetOrigin(case.meta["origin"])
    grid.SetSpacing(case.meta["spacing"])
    grid.SetDirection(case.meta["direction"])
    return grid


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_the_structure_set_reads_back_as_the_prediction_through_fewsams_reader(tmp_path, orientation):
    case, _ = dicom_case(tmp_path / "data", "1.2.826.0.1.3680043.2.1125.301", ORIENTATIONS[orientation])
    pred = prediction()
    written = write_dicom_rtstruct(case, pred, NAMES, tmp_path / "pred")
    assert written == tmp_path / "pred" / "s1.rtstruct.dcm" == dicom_rtstruct_path(tmp_path / "pred" / "s1.nii.gz")
    classes = {name_key(name): value for value, name in NAMES.items()}
    np.testing.assert_array_equal(read_rtstruct_on(written, grid_of(case), [], classes), pred)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", ClassMap(NAMES)), pred)


def test_the_structure_set_names_its_series_patient_study_and_an_roi_per_class(tmp_path):
    case, headers = dicom_case(tmp_path / "data", "1.2.826.0.1.3680043.2.1125.302", ORIENTATIONS["oblique"])
    written = write_dicom_rtstruct(case, prediction(), NAMES, tmp_path / "pred")
    assert written.read_bytes()[128:132] == b"DICM"
    rt = pydicom.dcmread(written)
    assert rt.SOPClassUID == rt.file_meta.MediaStorageSOPClassUID == RTSTRUCT_SOP_CLASS
    assert rt.SOPInstanceUID == rt.file_meta.MediaStorageSOPInstanceUID
    assert rt.Modality == "RTSTRUCT" and rt.StructureSetLabel and rt.StructureSetDate and rt.StructureSetTime
    assert (rt.PatientID, str(rt.PatientName), rt.StudyInstanceUID) == \
        ("PAT-7", "Doe^Jane", headers[0].StudyInstanceUID)
    assert rt.SeriesInstanceUID not in (headers[0].SeriesInstanceUID, rt.SOPInstanceUID)
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == FRAME_OF_REFERENCE
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == [h.SOPInstanceUID for h in headers]
    assert [(r.ROINumber, r.ROIName, r.ROIGenerationAlgorithm) for r in rt.StructureSetROISequence] == \
        [(value, name, "AUTOMATIC") for value, name in NAMES.items()]
    assert [(o.ReferencedROINumber, o.RTROIInterpretedType) for o in rt.RTROIObservationsSequence] == \
        [(value, "ORGAN") for value in NAMES]
    liver, spleen, kidney = rt.ROIContourSequence
    assert "ContourSequence" not in kidney and len(liver.ROIDisplayColor) == 3
    assert len(liver.ContourSequence) == 3  # the ring's outline, its hole and the blob apart, on slice 1
    for contour in [*liver.ContourSequence, *spleen.ContourSequence]:
        _assert_on_its_slice(contour, headers)


def _assert_on_its_slice(contour, headers: list) -> None:
    """A contour is CLOSED_PLANAR and lies on the plane of the slice it references (that slice's
    ImagePositionPatient and ImageOrientationPatient), its vertices on pixel corners."""
    assert contour.ContourGeometricType == "CLOSED_PLANAR"
    points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
    assert contour.NumberOfContourPoints == len(points) >= 4
    header = next(h for h in headers if h.SOPInstanceUID == contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
    along_row, along_column = np.asarray(header.ImageOrientationPatient, dtype=np.float64).reshape(2, 3)
    offsets = points - np.asarray(header.ImagePositionPatient, dtype=np.float64)
    np.testing.assert_allclose(offsets @ np.cross(along_row, along_column), 0, atol=1e-5)
    row_mm, column_mm = (float(v) for v in header.PixelSpacing)
    pixels = np.column_stack([offsets @ along_row / column_mm, offsets @ along_column / row_mm])
    np.testing.assert_allclose(pixels % 1, 0.5, atol=1e-5)


def test_a_prediction_predicted_again_keeps_its_uids_and_a_changed_one_gets_new_ones(tmp_path):
    """A planning system keeps one structure set per SOP instance UID: the same prediction imported twice
    is one object, a changed one is not taken for it."""
    case, _ = dicom_case(tmp_path / "data", "1.2.826.0.1.3680043.2.1125.303", ORIENTATIONS["axial"])
    assert_uids_follow_the_prediction(write_dicom_rtstruct, case, prediction(), NAMES, tmp_path)


def test_a_series_without_a_frame_of_reference_gets_no_structure_set_and_is_said(tmp_path, notices):
    image, _ = arrays(0, SHAPE)
    write_series(tmp_path / "data" / "s1", image, uid="1.2.826.0.1.3680043.2.1125.304")
    case = open_dataset(tmp_path / "data").load("s1")
    assert write_dicom_rtstruct(case, prediction(), NAMES, tmp_path / "pred") is None
    assert not (tmp_path / "pred").exists()
    assert "the RT structure set of a prediction is not written" in notices.text


def _shifted_across(millimetres: float):  # noqa: ANN202 - an edit of a header
    """Each slice's file placing it ``millimetres`` further along its rows than the one before: a gantry tilt
    (the slices' plane not square to the axis they are stacked along) or, small, rounding."""
    def edit(header: pydicom.Dataset, z: int) -> None:
        along_row = np.asarray(header.ImageOrientationPatient[:3], dtype=np.float64)
        position = np.asarray(header.ImagePositionPatient, dtype=np.float64) + millimetres * z * along_row
        header.ImagePositionPatient = [round(float(v), 6) for v in position]
    return edit


def _second_frame_of_reference(header: pydicom.Dataset, z: int) -> None:
    if z == 2:
        header.FrameOfReferenceUID = "1.2.826.0.1.3680043.2.1125.99"


@pytest.mark.parametrize(("edit", "said"), [(_shifted_across(0.37), "gantry tilt"),
                                            (_second_frame_of_reference, "2 frames of reference")])
def test_a_series_its_contours_would_miss_gets_no_structure_set_and_is_said(tmp_path, notices, edit, said):
    """Contours are placed on the grid the slices are read on: slices shifted across their plane from one to
    the next (a gantry-tilted CT) lie elsewhere, and one structure set holds one frame of reference."""
    from test_dicom_validity import edited_series_case

    case = edited_series_case(tmp_path / "data", edit)
    pred = np.zeros(case.image.shape[:3], np.uint8)
    pred[1:3, 4:9, 5:11] = 1
    assert write_dicom_rtstruct(case, pred, {1: "Liver"}, tmp_path / "pred") is None
    assert not (tmp_path / "pred" / "s1.rtstruct.dcm").exists()
    assert "the RT structure set of a prediction is not written" in notices.text and said in notices.text


def test_a_tilted_series_says_its_tilt_and_how_far_its_nifti_prediction_lies_off(tmp_path, notices):
    """ITK stacks a gantry-tilted CT's slices along their normal: the user hears the tilt, that the NIfTI
    prediction lies on the untilted stack (its last slice off by the shear) and that the SEG is exact."""
    from test_dicom_validity import edited_series_case

    shift = 0.37
    case = edited_series_case(tmp_path / "data", _shifted_across(shift))
    depth, gap = case.image.shape[0], float(pydicom.dcmread(case.meta["source_files"][0]).SliceThickness)
    said = [r.getMessage() for r in notices.records if "gantry tilt" in r.getMessage()]
    assert len(said) == 1
    assert f"tilted {np.degrees(np.arctan2(shift, gap)):.3g} degrees" in said[0]
    assert f"last slice {shift * (depth - 1):.3g} mm from where its file places it" in said[0]
    assert "SEG beside it" in said[0] and "exact" in said[0]


def test_slice_positions_rounded_in_their_files_are_no_tilt(tmp_path, notices):
    from test_dicom_validity import edited_series_case

    edited_series_case(tmp_path / "data", _shifted_across(0.001))
    assert "gantry tilt" not in notices.text


def test_slice_positions_rounded_in_their_files_still_get_a_structure_set(tmp_path):
    from test_dicom_validity import edited_series_case

    case = edited_series_case(tmp_path / "data", _shifted_across(0.001))
    pred = np.zeros(case.image.shape[:3], np.uint8)
    pred[1:3, 4:9, 5:11] = 1
    assert write_dicom_rtstruct(case, pred, {1: "Liver"}, tmp_path / "pred") is not None


def test_pixel_border_outlines_filled_even_odd_by_centres_are_the_mask():
    """Random masks of every density (blobs, holes, pixels touching at corners, the image's edges): the
    reader's rule fills the outlines back to the mask, and every vertex lies on a pixel corner."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        height, width = (int(n) for n in rng.integers(1, 10, 2))
        mask = rng.random((height, width)) < rng.random()
        outlines = mask_outlines(mask)
        assert all(((o * 2) % 2 == 1).all() for o in outlines)
        got = filled(outlines, height, width) if outlines else np.zeros_like(mask)
        np.testing.assert_array_equal(got, mask)


def test_the_slices_of_one_multi_frame_file_are_referenced_by_their_frame_numbers():
    """An enhanced CT or MR series is one file: each contour names its instance and the frame it lies on."""
    header = pydicom.Dataset()
    header.SOPClassUID, header.SOPInstanceUID, header.NumberOfFrames = "1.2.840.10008.5.1.4.1.1.4.1", "1.2.3.4", 3
    assert slice_references([header], 3) == [SliceReference("1.2.840.10008.5.1.4.1.1.4.1", "1.2.3.4", z)
                                            for z in (1, 2, 3)]
    assert slice_references([header], 3)[1].item().ReferencedFrameNumber == 2
    with pytest.raises(ValueError, match="are not its 4 slices"):
        slice_references([header], 4)
