"""The DICOM SEG and RT structure set ``fewsam predict --rtstruct`` writes are valid DICOM by the standard's
validator, dciodvfy (dicom3tools, installed by scripts/setup.sh), as viewers, PACS and planning systems
need them to be: no "Error" line, on a series that tests what a real one brings (a patient name in Latin-1,
an oblique plane at a table position, class names longer than a LO value, with a backslash, outside
ASCII). Read back by highdicom and by plain pydicom, and by fewsam as the prediction."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.data import open_dataset, read_prediction
from fewsam.data.dicom_text import dicom_label
from fewsam.data.phantom import phantom_volume
from fewsam.data.types import ClassMap
from fewsam.data.writers import write_dicom_rtstruct, write_dicom_seg
from test_dicom import write_series
from test_dicom_seg import FRAME_OF_REFERENCE
from test_formats_end_to_end import fit_tiny_run
from test_rtstruct_prediction import ORIENTATIONS, _assert_on_its_slice

DCIODVFY, DCENTVFY = shutil.which("dciodvfy"), shutil.which("dcentvfy")
NO_DICOM3TOOLS = ("dicom3tools (Debian's package of dciodvfy and dcentvfy) is not installed; "
                  "scripts/setup.sh installs it")
NAMES = {1: "Rechter Ventrikel über die ganze Länge der Herzachse, wie ihn die Planung zeigt",  # > 64 bytes
         2: "Myo\\Myocardium", 3: "LV"}
TABLE_POSITION = (-249.51171875, -412.3456789, -1834.56789012)  # a table position: DS values of 10 digits


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's "Error" lines about the object at ``path``: what the standard requires of its kind."""
    return _errors(DCIODVFY, path)


def _errors(tool: str, *paths: Path) -> list[str]:
    """A dicom3tools validator's "Error" lines about ``paths`` (it writes its findings to stderr)."""
    done = subprocess.run([tool, *map(str, paths)], capture_output=True, text=True, errors="replace", timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def latin1_series(folder: Path) -> list[pydicom.Dataset]:
    """A phantom series on an oblique plane at a table position, its patient named in Latin-1 as European
    scanners write names; its headers in slice order."""
    images, _ = phantom_volume(np.random.default_rng(7), slices=3, shape=(64, 72))
    write_series(folder, (images * 1000).astype(np.int16), uid="1.2.826.0.1.3680043.2.1125.81",
                 direction=ORIENTATIONS["oblique"], origin=TABLE_POSITION, extra_tags={"0020|0052": FRAME_OF_REFERENCE})
    for path in folder.glob("*.dcm"):
        header = pydicom.dcmread(path)
        header.SpecificCharacterSet, header.PatientName = "ISO_IR 100", "Müller^Jürgen"
        header.StudyDate, header.StudyTime = "20240312", "101500"  # one study: SimpleITK dates each file
        header.save_as(path)
    return sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")),
                  key=lambda h: int(h.InstanceNumber))


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """``fewsam predict --rtstruct`` by a tiny run of classes named as NAMES on the Latin-1 series: the data
    folder, the prediction folder and the series' headers."""
    tmp = tmp_path_factory.mktemp("validity")
    run = fit_tiny_run(tmp, NAMES)
    headers = latin1_series(tmp / "data" / "patient1" / "ct")
    (tmp / "data" / "classes.json").write_text(json.dumps({str(k): v for k, v in NAMES.items()}))
    done = CliRunner().invoke(app, ["predict", str(run), "--data", str(tmp / "data"), "--out", str(tmp / "pred"),
                                    "--split", "all", "--rtstruct", "--quiet"])
    assert done.exit_code == 0, done.output
    return tmp / "data", tmp / "pred" / "patient1", headers


@pytest.mark.skipif(DCIODVFY is None, reason=NO_DICOM3TOOLS)
@pytest.mark.parametrize("name", ["ct.seg.dcm", "ct.rtstruct.dcm"])
def test_the_predicted_dicom_objects_pass_dciodvfy_without_an_error(predicted, name):
    _, pred, _ = predicted
    assert dciodvfy_errors(pred / name) == []


@pytest.mark.skipif(DCENTVFY is None, reason=NO_DICOM3TOOLS)
def test_the_predicted_dicom_objects_agree_with_their_series_on_patient_and_study(predicted):
    """dcentvfy compares the patient and study of the series' files and the objects, byte for byte: a name
    copied from a Latin-1 series stays Latin-1 where the objects' text fits it."""
    data, pred, _ = predicted
    files = [*sorted((data / "patient1" / "ct").glob("*.dcm")), pred / "ct.seg.dcm", pred / "ct.rtstruct.dcm"]
    assert _errors(DCENTVFY, *files) == []


def test_the_seg_reads_with_highdicom_as_the_nifti_prediction_its_segments_named_as_the_classes(predicted):
    import highdicom as hd

    data, pred, headers = predicted
    seg = hd.seg.segread(pred / "ct.seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [dicom_label(name) for name in NAMES.values()]
    assert str(seg.PatientName) == "Müller^Jürgen" and seg.FrameOfReferenceUID == FRAME_OF_REFERENCE
    stored = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(stored, _nifti(pred))
    _assert_read_back_by_fewsam(data, pred, "ct.seg.dcm")


def test_the_structure_set_holds_valid_contours_on_the_slices_they_reference(predicted):
    data, pred, headers = predicted
    rt = pydicom.dcmread(pred / "ct.rtstruct.dcm")
    assert rt.FrameOfReferenceUID == FRAME_OF_REFERENCE and str(rt.PatientName) == "Müller^Jürgen"
    assert len(rt.StructureSetLabel) <= 16
    assert [r.ROIName for r in rt.StructureSetROISequence] == [dicom_label(name) for name in NAMES.values()]
    contours = [c for roi in rt.ROIContourSequence for c in roi.get("ContourSequence", [])]
    assert contours and all(len(roi.ROIDisplayColor) == 3 for roi in rt.ROIContourSequence)
    for contour in contours:
        assert len(contour.ContourData) == 3 * contour.NumberOfContourPoints
        assert all(len(str(value)) <= 16 for value in contour.ContourData)
        _assert_on_its_slice(contour, headers)
    _assert_read_back_by_fewsam(data, pred, "ct.rtstruct.dcm")


def _nifti(pred: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "ct.nii.gz")))


def _assert_read_back_by_fewsam(data: Path, pred: Path, name: str) -> None:
    """fewsam reads the DICOM object ``name`` alone (moved to a folder of its own) as the NIfTI prediction,
    its classes found by their names as the object spells them."""
    alone = pred.parent.parent / f"alone-{name}" / "patient1"
    alone.mkdir(parents=True)
    shutil.copy(pred / name, alone / name)
    case = open_dataset(data).load("patient1/ct")
    np.testing.assert_array_equal(read_prediction(case, alone.parent, ClassMap(NAMES)), _nifti(pred))


def edited_series_case(folder: Path, edit):  # noqa: ANN001, ANN201 - a callable on (header, slice index); a Case
    """A 4-slice axial series in ``folder``/s1, each file's header changed by ``edit`` (header, slice index),
    and its case."""
    images, _ = phantom_volume(np.random.default_rng(8), slices=4, shape=(24, 20))
    write_series(folder / "s1", (images * 1000).astype(np.int16), uid="1.2.826.0.1.3680043.2.1125.82",
                 extra_tags={"0020|0052": FRAME_OF_REFERENCE})
    for path in (folder / "s1").glob("*.dcm"):
        header = pydicom.dcmread(path)
        edit(header, int(header.InstanceNumber) - 1)
        header.save_as(path)
    return open_dataset(folder).load("s1")


def _without_slice_thickness(header: pydicom.Dataset, z: int) -> None:
    del header.SliceThickness


def _with_empty_slice_thickness(header: pydicom.Dataset, z: int) -> None:
    header.SliceThickness = None


@pytest.mark.parametrize("edit", [_without_slice_thickness, _with_empty_slice_thickness])
def test_a_series_whose_files_give_no_slice_thickness_gets_a_seg_of_its_slice_gap(tmp_path, edit):
    """SliceThickness is type 2 in an image (left empty or out by some converters), type 1 in the SEG's
    pixel measures: the SEG takes the series' slice gap."""
    import highdicom as hd

    case = edited_series_case(tmp_path / "data", edit)
    pred = np.zeros(case.image.shape[:3], np.uint8)
    pred[1:3, 4:9, 5:11] = 1
    written = write_dicom_seg(case, pred, {1: "Liver"}, tmp_path / "pred")
    assert written is not None
    measures = hd.seg.segread(written).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(case.meta["spacing"][2])
    if DCIODVFY is not None:
        assert dciodvfy_errors(written) == []


def test_a_multi_frame_series_without_patient_attributes_gets_valid_objects_referencing_its_frames(tmp_path):
    """An enhanced MR file written by a script, without the type 2 patient and study attributes a scanner
    writes (empty where unknown): its SEG and structure set hold them empty, and the contours name the
    frame they lie on."""
    import highdicom as hd
    from test_dicom_series_faults import enhanced_mr

    path = tmp_path / "data" / "s1" / "mr.dcm"
    enhanced_mr(path, np.random.default_rng(0).integers(0, 1000, (4, 4, 5)).astype("<u2"), [(1.0, 0.0)] * 4)
    header = pydicom.dcmread(path)
    header.FrameOfReferenceUID = FRAME_OF_REFERENCE
    header.save_as(path)
    assert "PatientID" not in header
    case = open_dataset(tmp_path / "data").load("s1")
    pred = np.zeros(case.image.shape[:3], np.uint8)
    pred[1:3, 1:3, 1:4] = 1
    seg = write_dicom_seg(case, pred, {1: "Liver"}, tmp_path / "pred")
    rtstruct = write_dicom_rtstruct(case, pred, {1: "Liver"}, tmp_path / "pred")
    assert seg is not None and rtstruct is not None
    assert hd.seg.segread(seg).PatientID == ""
    contours = pydicom.dcmread(rtstruct).ROIContourSequence[0].ContourSequence
    assert [c.ContourImageSequence[0].ReferencedFrameNumber for c in contours] == [2, 3]
    if DCIODVFY is not None:
        assert dciodvfy_errors(seg) == dciodvfy_errors(rtstruct) == []


def test_a_series_of_several_frames_of_reference_gets_no_seg_and_is_said_so(tmp_path, notices):
    """A SEG places all its frames in one frame of reference: a series whose files name two gets its NIfTI
    alone, the reason said as it is."""
    from test_rtstruct_prediction import _second_frame_of_reference

    case = edited_series_case(tmp_path / "data", _second_frame_of_reference)
    assert write_dicom_seg(case, np.zeros(case.image.shape[:3], np.uint8), {1: "Liver"}, tmp_path / "pred") is None
    assert "the DICOM SEG of a prediction is not written" in notices.text
    assert "2 frames of reference" in notices.text


def _latin1_patient(header: pydicom.Dataset, z: int) -> None:
    header.SpecificCharacterSet, header.PatientName = "ISO_IR 100", "Müller^Jürgen"


def test_a_class_name_outside_the_series_character_set_makes_the_objects_utf8(tmp_path):
    """Wątroba (liver, in Polish) is no Latin-1 text: the objects of a Latin-1 series holding it say UTF-8,
    the patient's name then written in UTF-8 too."""
    case = edited_series_case(tmp_path / "data", _latin1_patient)
    pred = np.zeros(case.image.shape[:3], np.uint8)
    pred[1:3, 4:9, 5:11] = 1
    for write in (write_dicom_seg, write_dicom_rtstruct):
        written = write(case, pred, {1: "Wątroba"}, tmp_path / "pred")
        ds = pydicom.dcmread(written)
        assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Müller^Jürgen"
        named = (ds.SegmentSequence[0].SegmentLabel if write is write_dicom_seg
                 else ds.StructureSetROISequence[0].ROIName)
        assert named == "Wątroba"
        if DCIODVFY is not None:
            assert dciodvfy_errors(written) == []


LONG = "Lymph node level " + "x" * 60  # two names differing past 64 bytes


@pytest.mark.parametrize("names", [{1: "a\\b", 2: "a/b"}, {1: "a/b", 2: "a\\b"},
                                   {1: LONG + " left", 2: LONG + " right"}],
                         ids=["backslash-first", "slash-first", "alike-in-64-bytes"])
def test_class_names_alike_as_dicom_labels_get_distinct_labels_that_read_back_as_their_classes(tmp_path, names):
    """Two class names one DICOM label (a backslash written as a slash, a cut to 64 bytes) would give two
    segments or ROIs of one name, which planning systems refuse and readers merge into one class."""
    case = edited_series_case(tmp_path / "data", lambda header, z: None)
    pred = np.zeros(case.image.shape[:3], np.uint8)
    pred[1:3, 4:9, 5:11], pred[2:4, 12:18, 3:8] = 1, 2
    for write, folder in ((write_dicom_seg, "seg"), (write_dicom_rtstruct, "rtstruct")):
        ds = pydicom.dcmread(write(case, pred, names, tmp_path / folder))
        labels = ([item.SegmentLabel for item in ds.SegmentSequence] if write is write_dicom_seg
                  else [item.ROIName for item in ds.StructureSetROISequence])
        assert len({label.casefold() for label in labels}) == len(names)
        assert all(len(label.encode()) <= 64 and "\\" not in label for label in labels)
        np.testing.assert_array_equal(read_prediction(case, tmp_path / folder, ClassMap(names)), pred)
