"""A prediction as an RT structure set (RTSTRUCT), the form radiotherapy planning systems (Eclipse,
RayStation, Monaco, MIM) import contours in: ``fewsam predict --rtstruct`` writes ``<case>.rtstruct.dcm``
beside a DICOM series' NIfTI (``writers.write_dicom_rtstruct``).

- one ROI per class, numbered by its class value (so an organ keeps its ROINumber across cases), named as
  the class, RTROIInterpretedType ORGAN, ROIGenerationAlgorithm AUTOMATIC; a class predicted nowhere is
  an ROI without contours, so every case's structure set lists the same classes;
- each slice's mask becomes CLOSED_PLANAR polygons along its pixels' outer borders (``mask_outlines``):
  the outline of the pixel squares, a hole its own inner polygon. Read with the rule of fewsam's own
  reader and of scanline rasterisers (a voxel is in when its centre is inside, contours of one ROI on a
  slice combined even-odd), the polygons give back exactly the predicted voxels, since no voxel centre
  lies on a pixel border, and in a planning system the ROI's area is the predicted pixels' area.
  Marching squares at level 0.5 (``contourpy``) finds each outline with its corners cut; putting the
  corners back gives the border;
- vertices are placed in patient coordinates (mm) by the series' geometry (``SeriesGeometry``, the
  mapping the reader inverts), on the plane of the slice each contour references in its
  ContourImageSequence.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fewsam.data.dicom_text import dicom_label, set_character_set, unique_dicom_labels
from fewsam.data.readers.dicom_rtstruct import CLOSED_PLANAR, CONTOUR_DATA, RTSTRUCT_SOP_CLASS, SeriesGeometry

MM_DIGITS = 10  # significant digits of a coordinate: within the 16 characters of a DS value, sign and exponent too
ROI_COLOURS = ((255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (0, 200, 255), (255, 0, 255),
               (255, 128, 0), (128, 0, 255), (0, 128, 128), (128, 128, 0))  # cycled by class order
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
          "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber",
          "ReferringPhysicianName", "FrameOfReferenceUID", "PositionReferenceIndicator")
# the Patient, General Study and Frame of Reference modules, as the source series gives them
EMPTY_IF_MISSING = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "PositionReferenceIndicator")  # type 2: present, if empty
RTSTRUCT_SERIES_NUMBER = 9002  # beside the SEG's 9001: a viewer lists the prediction apart from the scanner's


@dataclass(frozen=True)
class SliceReference:
    """The image a slice of the series is: its instance (and frame, in a multi-frame file)."""

    sop_class: str
    sop_instance: str
    frame: int | None = None

    def item(self) -> Any:
        """A ContourImageSequence item naming it."""
        from pydicom.dataset import Dataset

        ref = Dataset()
        ref.ReferencedSOPClassUID = self.sop_class
        ref.ReferencedSOPInstanceUID = self.sop_instance
        if self.frame is not None:
            ref.ReferencedFrameNumber = self.frame
        return ref


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """The (N, 2) (column, row) vertices of the polygons along the outer borders of ``mask``'s pixels
    (H, W bool), vertices on pixel corners (half-integer indices), a hole an inner polygon: filled
    even-odd with a pixel in where its centre is inside, they are ``mask``. Found in the block the mask
    covers, padded by a pixel so outlines at the slice's edge close."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    block = mask[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
    offset = np.array([columns[0] - 1, rows[0] - 1], dtype=np.float64)  # undoes the crop and the padding
    return [_pixel_border(line) + offset for line in _marching_squares(np.pad(block, 1))]


def _marching_squares(padded: np.ndarray) -> list[np.ndarray]:
    """contourpy's closed lines at level 0.5 of a 0/1 image: (x, y) vertices on the midpoints between
    neighbouring pixel centres of unlike values, the first repeated last."""
    import contourpy

    generator = contourpy.contour_generator(z=padded.astype(np.float64), name="serial",
                                            line_type=contourpy.LineType.Separate)
    return list(generator.lines(0.5))


def _pixel_border(line: np.ndarray) -> np.ndarray:
    """A marching-squares line of a 0/1 image as the pixel border it cuts across: each of its vertices
    lies on the middle of a pixel edge, so between two of them the border passes the corner whose
    coordinates are the half-integer ones of either (the mean where neither has one: a straight run);
    the corners where the border turns are the polygon."""
    start, end = line[:-1], line[1:]
    corners = np.where(_is_half(start), start, np.where(_is_half(end), end, (start + end) / 2))
    before, after = corners - np.roll(corners, 1, axis=0), np.roll(corners, -1, axis=0) - corners
    turns = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
    return corners[turns]


def _is_half(values: np.ndarray) -> np.ndarray:
    return (values * 2) % 2 == 1


def slice_references(sources: Sequence[Any], depth: int) -> list[SliceReference]:
    """The image each of ``depth`` slices is: a file per slice, in slice order, or one multi-frame file
    whose frames are the slices in stored order (as the series reader reads them). A ValueError where the
    files map onto the slices neither way."""
    if len(sources) == depth:
        return [SliceReference(str(s.SOPClassUID), str(s.SOPInstanceUID)) for s in sources]
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames") or 1) == depth:
        return [SliceReference(str(sources[0].SOPClassUID), str(sources[0].SOPInstanceUID), z + 1)
                for z in range(depth)]
    raise ValueError(f"its {len(sources)} file(s) are not its {depth} slices")


def encode_rtstruct(sources: Sequence[Any], pred: np.ndarray, names: dict[int, str], geometry: SeriesGeometry,
                    uids: tuple[str, str], version: str) -> bytes:
    """The structure set's bytes (a Part 10 file): ``pred`` (D, H, W class values) of the series whose
    headers are ``sources`` (in slice order), an ROI per class of ``names``, ``uids`` its series and
    instance UIDs, ``version`` fewsam's."""
    from pydicom.dataset import Dataset

    references = slice_references(sources, pred.shape[0])
    check_one_frame_of_reference(sources)
    _check_slices_on_grid(sources, geometry)
    ds = Dataset()
    _copy_patient_and_study(ds, sources[0])
    _set_series_and_instance(ds, uids, version)
    frame_of_reference = str(sources[0].FrameOfReferenceUID)
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame(sources[0], frame_of_reference, references)]
    values = sorted(names)
    labels = unique_dicom_labels([names[value] for value in values])
    ds.StructureSetROISequence = [_roi(value, label, frame_of_reference, version)
                                  for value, label in zip(values, labels, strict=True)]
    ds.ROIContourSequence = [_roi_contours(value, k, pred, geometry, references) for k, value in enumerate(values)]
    ds.RTROIObservationsSequence = [_observation(value) for value in values]
    set_character_set(ds, names.values(), sources[0].get("SpecificCharacterSet"))
    return _part10_bytes(ds)


def check_one_frame_of_reference(sources: Sequence[Any]) -> None:
    """A ValueError where the files name several frames of reference: a structure set places all its contours
    in one (its ReferencedFrameOfReferenceSequence), a SEG its frames (its FrameOfReferenceUID), so some
    would lie in a space their image is not in."""
    frames = {str(source.get("FrameOfReferenceUID", "")) for source in sources}
    if len(frames) > 1:
        raise ValueError(f"its files name {len(frames)} frames of reference, where its slices must share one")


def _check_slices_on_grid(sources: Sequence[Any], geometry: SeriesGeometry) -> None:
    """A ValueError where a slice's file (ImagePositionPatient) places it off the series' grid
    (``SeriesGeometry.slices_off_grid``): the contours are placed on the grid (the NIfTI's, stacking the
    slices along their normal), so on a gantry-tilted CT they would miss the images they reference.
    Multi-frame files (positions in their functional groups) are left as they are."""
    if len(sources) < 2 or any("ImagePositionPatient" not in source for source in sources):
        return
    off = geometry.slices_off_grid(np.array([[float(v) for v in source.ImagePositionPatient] for source in sources]))
    if off is not None:
        worst = int(off.argmax())
        raise ValueError(f"slice {worst + 1} lies {off[worst]:.3g} mm from where the series' slices, stacked along "
                         "their normal, would place it (a gantry tilt?), and its contours would miss it")


def _copy_patient_and_study(ds: Any, source: Any) -> None:
    """The Patient, General Study and Frame of Reference modules from the series, so the structure set files
    under its patient and study and lies in the series' frame of reference."""
    for keyword in COPIED:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
        elif keyword in EMPTY_IF_MISSING:
            setattr(ds, keyword, "")


def _set_series_and_instance(ds: Any, uids: tuple[str, str], version: str) -> None:
    """The RT Series, General Equipment, Structure Set and SOP Common modules' own values: dated now, an
    automatic structure set awaiting a clinician's approval (UNAPPROVED)."""
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SeriesInstanceUID, ds.SOPInstanceUID = uids
    ds.Modality = "RTSTRUCT"
    ds.SeriesNumber, ds.InstanceNumber = RTSTRUCT_SERIES_NUMBER, 1
    ds.SeriesDescription = "fewsam prediction"
    ds.OperatorsName = ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "fewsam", "fewsam", version
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.StructureSetLabel = "fewsam"
    ds.StructureSetName = "fewsam prediction"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ApprovalStatus = "UNAPPROVED"


def _referenced_frame(source: Any, frame_of_reference: str, references: list[SliceReference]) -> Any:
    """ReferencedFrameOfReferenceSequence's item: the frame of reference -> the study -> the series ->
    every image of the series (ContourImageSequence)."""
    from pydicom.dataset import Dataset

    series = Dataset()
    series.SeriesInstanceUID = str(source.SeriesInstanceUID)
    series.ContourImageSequence = [r.item() for r in dict.fromkeys(
        SliceReference(r.sop_class, r.sop_instance) for r in references)]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, as the standard names it
    study.ReferencedSOPInstanceUID = str(source.StudyInstanceUID)
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference
    frame.RTReferencedStudySequence = [study]
    return frame


def _roi(value: int, label: str, frame_of_reference: str, version: str) -> Any:
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber = value
    roi.ReferencedFrameOfReferenceUID = frame_of_reference
    roi.ROIName = label
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = dicom_label(f"fewsam {version}")
    return roi


def _roi_contours(value: int, order: int, pred: np.ndarray, geometry: SeriesGeometry,
                  references: list[SliceReference]) -> Any:
    """An ROI's ROIContourSequence item: its colour and, where the class was predicted, its contours slice
    by slice (none where it was predicted nowhere: the item stands without a ContourSequence)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedROINumber = value
    item.ROIDisplayColor = list(ROI_COLOURS[order % len(ROI_COLOURS)])
    contours = [_contour(outline, z, geometry, references[z])
                for z in np.flatnonzero((pred == value).any(axis=(1, 2)))
                for outline in mask_outlines(pred[z] == value)]
    for number, contour in enumerate(contours, start=1):
        contour.ContourNumber = number
    if contours:
        item.ContourSequence = contours
    return item


def _contour(outline: np.ndarray, z: int, geometry: SeriesGeometry, reference: SliceReference) -> Any:
    """One CLOSED_PLANAR contour: ``outline``'s (column, row) vertices on slice ``z``, in patient mm."""
    from pydicom.dataset import Dataset

    points = geometry.patient_points(np.column_stack([outline, np.full(len(outline), float(z))]))
    contour = Dataset()
    contour.ContourImageSequence = [reference.item()]
    contour.ContourGeometricType = CLOSED_PLANAR
    contour.NumberOfContourPoints = len(outline)
    contour[CONTOUR_DATA] = _decimal_strings(points)
    return contour


def _decimal_strings(points: np.ndarray) -> Any:
    """ContourData's DS values as the bytes the file holds (``MM_DIGITS`` significant digits, backslashes
    between, padded to an even length), kept raw through the write (``_part10_bytes``): pydicom checks and
    converts each value it is given one by one, seconds for a CT's contours, of values formatted here within
    DS's limits anyway."""
    from pydicom.dataelem import RawDataElement

    text = "\\".join(f"{v:.{MM_DIGITS}g}" for v in np.round(points, 6).ravel() + 0.0).encode()  # + 0.0: no "-0"
    text += b" " * (len(text) % 2)
    return RawDataElement(CONTOUR_DATA, "DS", len(text), text, 0, False, True)


def _observation(value: int) -> Any:
    from pydicom.dataset import Dataset

    observation = Dataset()
    observation.ObservationNumber = value
    observation.ReferencedROINumber = value
    observation.RTROIInterpretedType = "ORGAN"
    observation.ROIInterpreter = ""
    return observation


def _part10_bytes(ds: Any) -> bytes:
    """``ds`` as a DICOM file: the preamble and file meta group, explicit VR little endian."""
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):  # written as they are: ContourData's raw bytes kept
            contour.set_original_encoding(False, True, contour._character_set)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
