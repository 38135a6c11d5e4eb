"""RT structure sets (RTSTRUCT, RT Structure Set Storage) as the labels of the series they were drawn on.

Radiotherapy planning systems, and archives such as TCIA, keep a series' contours as an RT structure set:
its ROIs (StructureSetROISequence: ROINumber, ROIName), each with its contours (ROIContourSequence), each
contour a polygon in patient coordinates (ContourData: x, y, z in mm) on one slice. Read with pydicom:

- a structure set belongs to the series its ReferencedFrameOfReferenceSequence -> RTReferencedStudySequence
  -> RTReferencedSeriesSequence names; without, to the one series of its frame of reference
  (``rtstruct_references``; the pairing, shared with DICOM SEG, is ``dicom_labels.label_objects_by_case``);
- each ROI is a class of its ROIName, the same class in every case (letter case aside), numbered in
  natural order of the names: ROINumber is the order a planner drew the ROIs in, not a class code, and
  the left-out External usually holds number 1. ``classes.json`` chooses which ROIs are classes, and
  their values, by name: ROIs it does not name are left out (said);
- without a classes.json, the ROIs around the patient are left out (said): those named External, Body,
  Skin or Outline (with a number: External_1), those whose name starts with Couch, and those the file
  marks as EXTERNAL or SUPPORT (RTROIInterpretedType). The body outline holds every organ and the couch
  lies outside it; as classes they would take every voxel the organs do not. Naming them in classes.json
  makes them classes;
- a contour lies on the series' slice nearest its plane, within half a slice spacing: contours are drawn
  on the slices of the series they reference. One whose points span more than half a slice (drawn on
  another plane), lies exactly between two slices, or lies beyond the series' first or last slice is
  refused in one line: read on the nearest slice, the structure would be moved or cut without a word;
- only CLOSED_PLANAR contours hold an area; POINT, OPEN_PLANAR and OPEN_NONPLANAR ones (markers, lines)
  are skipped, said once, and an ROI of those alone (an isocentre, a reference point) is no class;
- a contour's voxels are those whose centre lies inside its polygon. A centre exactly on an edge counts
  on the polygon's left and top sides (lower column and row indices) and not on its right and bottom,
  the rule of scanline rasterisers, so two ROIs drawn along one shared border split its voxels rather
  than both claiming them, and a polygon whose vertices lie on voxel centres covers as many voxels as
  its area. Vertices are placed at their voxel indices rounded to a millionth, so a vertex on a voxel
  centre or border is on it whatever the rounding of its millimetres. Several contours of one ROI on one
  slice are combined even-odd, as RT planning systems do: a contour inside another is a hole (a ring);
- ROIs overlap in RT (organs touch at their borders, a target lies inside an organ): fewsam segments one
  class per voxel, so a voxel of several ROIs is given to the smallest of them in the case (by voxel
  count), the structure inside keeping its voxels, said once per structure set with the voxel counts.

Memory: each ROI is held as the block of slices, rows and columns its contours cover, so a structure
set of many small organs holds about one label map, not a volume per ROI.

Speed: a CT's structure set holds millions of ContourData numbers, stored as decimal strings. pydicom
converts such a value lazily, on first access, into an object per number (seconds for one structure
set), so opening a dataset reads each structure set's headers and contour types alone and never
touches ContourData, and loading a case parses each ContourData from the bytes the file stores, in one
pass (``contour_values``), to the same numbers pydicom gives.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from fewsam.data.readers.common import first_line, natural_sorted
from fewsam.data.readers.slicer_segmentation import Segment, SegmentClasses, class_values, name_key
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.labels import label_dtype
from fewsam.progress import say_once

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
CLOSED_PLANAR = "CLOSED_PLANAR"
AROUND_THE_PATIENT = re.compile(r"(external|body|skin|outline)[\s_-]*\d*|couch.*")  # on ``name_key``
AROUND_THE_PATIENT_TYPES = {"EXTERNAL", "SUPPORT"}  # RTROIInterpretedType of the body outline and the couch
OFF_GRID_PIXELS = 0.1  # how far (in pixels) a slice's file may place it from where the series' grid has it
INDEX_DECIMALS = 6  # voxel indices are rounded to a millionth: a vertex on a centre or border is on it
HALF_SLICE = 0.5
CONTOUR_DATA = 0x30060050
CONTOUR_GEOMETRIC_TYPE = 0x30060042
DS_ENCODING = "iso8859"  # the bytes of DS and CS values as pydicom decodes them, whatever SpecificCharacterSet says


def rtstruct_references(ds: Any) -> tuple[tuple[str, ...], str | None]:
    """The series a structure set names (ReferencedFrameOfReferenceSequence -> RTReferencedStudySequence ->
    RTReferencedSeriesSequence) and its frame of reference (that of its referenced frame, else of its ROIs)."""
    frames = list(ds.get("ReferencedFrameOfReferenceSequence", []))
    series = tuple(str(item.SeriesInstanceUID) for frame in frames
                   for study in frame.get("RTReferencedStudySequence", [])
                   for item in study.get("RTReferencedSeriesSequence", []) if "SeriesInstanceUID" in item)
    given = [str(f.FrameOfReferenceUID) for f in frames if f.get("FrameOfReferenceUID")]
    given += [str(r.ReferencedFrameOfReferenceUID) for r in ds.get("StructureSetROISequence", [])
              if r.get("ReferencedFrameOfReferenceUID")]
    return series, given[0] if given else None


def roi_segments(ds: Any, named: ClassMap | None) -> tuple[tuple[Segment, ...], tuple[str, ...]]:
    """The ROIs of a structure set that are classes (as ``Segment``: ``index`` their place in the file,
    ``name`` their ROIName) and the names of those left out: with ``named`` (classes.json), the ROIs it
    names; without, every ROI but those around the patient (``is_around_the_patient``). ROIs without a
    closed contour here (markers, an isocentre, or a structure not drawn in this case) add no voxel and
    are passed over; their points and lines are said once (``_say_not_areas``)."""
    around = _around_the_patient_numbers(ds)
    closed, not_areas = _contour_kinds(ds)
    _say_not_areas(Path(str(getattr(ds, "filename", "") or "an RT structure set")), not_areas)
    wanted = None if named is None else {name_key(name) for name in named.names.values()}
    kept: list[Segment] = []
    left_out: list[str] = []
    for index, (number, name) in enumerate(_rois(ds).items()):
        if number not in closed:
            continue
        is_class = (name_key(name) in wanted) if wanted is not None else not (
            number in around or is_around_the_patient(name))
        if is_class:
            kept.append(Segment(index=index, name=name, layer=0, label_value=None))
        else:
            left_out.append(name)
    return tuple(kept), tuple(left_out)


def is_around_the_patient(name: str) -> bool:
    """Whether an ROI's name says it is the body outline or the couch (``AROUND_THE_PATIENT``)."""
    return AROUND_THE_PATIENT.fullmatch(name_key(name)) is not None


def _rois(ds: Any) -> dict[int, str]:
    """Each ROI's ROIName by its ROINumber (``roi<N>`` where the name, which the standard requires, is missing)."""
    rois: dict[int, str] = {}
    for k, item in enumerate(ds.get("StructureSetROISequence", [])):
        number = roi_number(item.get("ROINumber", k + 1))
        rois[number] = str(item.get("ROIName", "") or "").strip() or f"roi{number}"
    return rois


def roi_number(value: Any) -> int:
    """An ROINumber or ReferencedROINumber as a whole number; -1 (no ROI) where a damaged file gives none."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _contour_kinds(ds: Any) -> tuple[set[int], Counter[str]]:
    """The ROIs (by number) with a closed contour, and the count of contours of other kinds (POINT,
    OPEN_PLANAR, OPEN_NONPLANAR), which enclose no area."""
    closed: set[int] = set()
    not_areas: Counter[str] = Counter()
    for item in ds.get("ROIContourSequence", []):
        for contour in item.get("ContourSequence", []):
            kind = contour_kind(contour)
            if kind == CLOSED_PLANAR:
                closed.add(roi_number(item.get("ReferencedROINumber")))
            else:
                not_areas[kind or "untyped"] += 1
    return closed, not_areas


def _around_the_patient_numbers(ds: Any) -> set[int]:
    """The ROIs the file marks as the body outline or the couch (RTROIInterpretedType EXTERNAL, SUPPORT)."""
    return {roi_number(item.get("ReferencedROINumber")) for item in ds.get("RTROIObservationsSequence", [])
            if str(item.get("RTROIInterpretedType", "") or "").upper() in AROUND_THE_PATIENT_TYPES}


def say_left_out_rois(root: Path, left_out: dict[Path, tuple[str, ...]], named: ClassMap | None) -> None:
    """The ROIs that are no classes, said once for the dataset: which, and how to make them classes."""
    names: dict[str, str] = {}
    for found in left_out.values():
        for name in found:
            names.setdefault(name_key(name), name)
    if not names:
        return
    shown = ", ".join(repr(names[key]) for key in natural_sorted(names)[:6]) + (", ..." if len(names) > 6 else "")
    why = ("name no class of classes.json" if named is not None else
           "lie around the patient (the body outline holds every organ, the couch lies outside it); name them in "
           "classes.json to make them classes")
    say_once(f"{root}: ROI(s) {shown} of {len(left_out)} RT structure set(s) are left out: they {why}",
             key=f"rtstruct-left-out-{root}-{named is not None}")


def read_rtstruct_on(path: Path, grid: sitk.Image, source_files: list[str],
                     classes: SegmentClasses | None) -> np.ndarray:
    """The structure set at ``path`` as (D, H, W) uint8 class values on ``grid`` (the series' geometry):
    each ROI's closed contours filled on the slices they lie on, as the class of its name in ``classes``
    (ROIs of no class left out; None: the ROIs ``roi_segments`` keeps, by their place in the file).
    ``source_files`` is unused: contours are placed by their coordinates, not by the images they name."""
    ds = _read(path)
    rois = _rois(ds)
    if classes is None:
        kept, _ = roi_segments(ds, None)
        classes = {name_key(s.name): v for s, v in zip(kept, class_values(kept, None, path))}
    contours = _contours_by_class(ds, rois, classes, grid, path)
    shape = grid.GetSize()[::-1]
    names = {value: name for name in rois.values() if (value := classes.get(name_key(name))) is not None}
    masks = [_class_mask(value, names[value], by_slice, shape) for value, by_slice in contours.items()]
    return _smaller_wins([m for m in masks if m is not None], shape, path)


def _read(path: Path) -> Any:
    """The whole structure set (its contours are its data); a file pydicom cannot read is a DataError."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError) as err:
        raise DataError(f"cannot read RT structure set {path}: {first_line(err)}") from None


Contours = dict[int, dict[int, list[np.ndarray]]]  # class value -> slice -> contours, (N, 2) column and row indices


def _contours_by_class(ds: Any, rois: dict[int, str], classes: SegmentClasses, grid: sitk.Image,
                       path: Path) -> Contours:
    """The closed contours of each class on the series' slices (points and lines, which enclose no area,
    left out)."""
    contours: Contours = {}
    geometry = SeriesGeometry.of_grid(grid)
    for item in ds.get("ROIContourSequence", []):
        name = rois.get(roi_number(item.get("ReferencedROINumber")))
        value = None if name is None else classes.get(name_key(name))
        if value is None:
            continue
        for contour in item.get("ContourSequence", []):
            if contour_kind(contour) != CLOSED_PLANAR:
                continue
            z, points = _on_slice(contour, geometry, grid.GetDepth(), name, path)  # type: ignore[arg-type]
            contours.setdefault(value, {}).setdefault(z, []).append(points)
    return contours


def _say_not_areas(path: Path, not_areas: Counter[str]) -> None:
    """Contours of points and lines are skipped: said once, for the first structure set holding them."""
    if not_areas:
        counted = ", ".join(f"{n} {kind}" for kind, n in sorted(not_areas.items()))
        say_once(f"{path}: its contours that enclose no area ({counted}: points and lines) are skipped, and so "
                 f"in any other RT structure set; only {CLOSED_PLANAR} contours are filled, and an ROI of points "
                 "or lines alone is no class", key="rtstruct-not-areas")


def _on_slice(contour: Any, geometry: SeriesGeometry, depth: int, name: str, path: Path) -> tuple[int, np.ndarray]:
    """The slice a contour lies on and its vertices as (column, row) voxel indices on that slice; a contour
    on no one slice of the ``depth`` slices of the series is refused (module docstring)."""
    try:
        data = contour_values(contour)
    except (TypeError, ValueError):
        data = np.zeros(1)  # no numbers: refused below as values that are no triplets
    if data.size == 0 or data.size % 3 or not np.isfinite(data).all():
        raise DataError(f"{path}: a contour of ROI {name!r} holds no x, y, z triplets of numbers in its ContourData "
                        f"({data.size} value(s)); export the structure set again")
    indices = geometry.indices(data.reshape(-1, 3))
    planes = indices[:, 2]
    if np.ptp(planes) > HALF_SLICE:
        raise DataError(f"{path}: a contour of ROI {name!r} spans slices {planes.min():.3g} to {planes.max():.3g} "
                        "of its series: drawn on another plane than the series' slices; save the structure set "
                        "on the series it references")
    plane = float(planes.mean())
    z = int(round(plane))
    beyond = not -HALF_SLICE < plane < depth - HALF_SLICE
    if beyond or abs(plane - z) >= HALF_SLICE:
        where = f"beyond the {depth} slices" if beyond else "between two slices"
        first = ", ".join(f"{v:.6g}" for v in data[:3])
        raise DataError(f"{path}: a contour of ROI {name!r} at ({first}) mm lies {where} of its series (at slice "
                        f"{plane:.3g}): drawn on another series of its frame of reference; save the structure set "
                        "on the series it references")
    return z, indices[:, :2]


def contour_values(contour: Any) -> np.ndarray:
    """A contour's ContourData as float64 numbers, flat. Parsed from the bytes the file stores, split at the
    backslashes and each value read by Python's float, as pydicom reads each DS value, in one pass instead
    of through an object per number; a value pydicom has already converted (or holds under another VR) is
    taken as it gives it. A ValueError where a value is no number (``_on_slice`` refuses the contour)."""
    stored = _stored_text(contour, CONTOUR_DATA, "DS")
    if stored is None:
        return np.asarray(contour.get("ContourData", []), dtype=np.float64).ravel()
    return np.array([float(value) for value in stored.strip().split("\\")], dtype=np.float64)


def contour_kind(contour: Any) -> str:
    """A contour's ContourGeometricType, upper case ("" where missing), read from its stored bytes as pydicom
    reads a CS value (trailing spaces and NULs dropped) without converting the element: opening a dataset
    asks it of every contour."""
    stored = _stored_text(contour, CONTOUR_GEOMETRIC_TYPE, "CS")
    value = contour.get("ContourGeometricType", "") if stored is None or "\\" in stored else stored.rstrip(" \x00")
    return str(value or "").upper()


def _stored_text(item: Any, tag: int, vr: str) -> str | None:
    """The value of ``tag`` in ``item`` as the text the file stores, where pydicom has read it but not converted
    it and it is of ``vr`` (or of no VR: an implicit VR file); None otherwise (absent, converted, of another VR)."""
    from pydicom.dataelem import RawDataElement

    element = item.get_item(tag) if tag in item else None
    if not isinstance(element, RawDataElement) or element.value is None or element.VR not in (vr, None):
        return None
    return bytes(element.value).decode(DS_ENCODING)


@dataclass(frozen=True)
class SeriesGeometry:
    """Where a series' voxels lie in patient coordinates (mm): voxel index i at origin + axes @ i, ``axes``
    the direction's columns times the spacing. The one mapping both ways, so a structure set fewsam writes
    (``patient_points``) lands where its reader looks (``indices``)."""

    origin: np.ndarray
    axes: np.ndarray

    @classmethod
    def of(cls, origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]) -> SeriesGeometry:
        """From ITK's origin, spacing and row-major direction (the series' ImagePositionPatient,
        PixelSpacing and ImageOrientationPatient as SimpleITK reads them)."""
        axes = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
        return cls(np.asarray(origin, dtype=np.float64), axes)

    @classmethod
    def of_grid(cls, grid: sitk.Image) -> SeriesGeometry:
        """The geometry of a series read by SimpleITK."""
        return cls.of(grid.GetOrigin(), grid.GetSpacing(), grid.GetDirection())

    @cached_property
    def to_indices(self) -> np.ndarray:
        """The matrix taking millimetres from the origin to indices (row vectors on the left): inverted once
        per series, not for each of its thousands of contours."""
        return np.linalg.inv(self.axes).T

    def indices(self, points: np.ndarray) -> np.ndarray:
        """Patient coordinates (N, 3) as continuous (x, y, z) indices, rounded to ``INDEX_DECIMALS`` so a
        vertex on a voxel centre or border is on it whatever the rounding of its millimetres."""
        return np.round((points - self.origin) @ self.to_indices, INDEX_DECIMALS)

    def patient_points(self, indices: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) indices (N, 3) as patient coordinates in mm."""
        return self.origin + np.asarray(indices, dtype=np.float64) @ self.axes.T

    def slices_off_grid(self, positions: np.ndarray) -> np.ndarray | None:
        """How far (mm) each slice's file (its ImagePositionPatient, ``positions`` (N, 3) in slice order) places
        it from where this grid, stacking the slices along their normal, has it; None where every slice lies
        within ``OFF_GRID_PIXELS`` of its place (rounding in the files). A gantry-tilted CT, its slices shifted
        across their plane from one to the next, lies off the grid the further the later its slice."""
        on_grid = self.patient_points(np.column_stack([np.zeros((len(positions), 2)), np.arange(len(positions))]))
        off = np.linalg.norm(np.asarray(positions, dtype=np.float64) - on_grid, axis=1)
        pixel = float(np.linalg.norm(self.axes[:, :2], axis=0).min())
        return off if off.max() > OFF_GRID_PIXELS * pixel else None

    def tilt_degrees(self, positions: np.ndarray) -> float:
        """The angle between the slices' normal and the way the files' positions step from the first slice to
        the last (``positions`` (N, 3), N > 1): a gantry tilt."""
        step = np.asarray(positions[-1], dtype=np.float64) - np.asarray(positions[0], dtype=np.float64)
        normal = self.axes[:, 2] / np.linalg.norm(self.axes[:, 2])
        cosine = abs(float(step @ normal)) / float(np.linalg.norm(step))
        return math.degrees(math.acos(min(cosine, 1.0)))


def filled(contours: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The (height, width) voxels inside ``contours`` ((N, 2) column and row indices) combined even-odd
    (``filled_box`` on the whole plane)."""
    mask = np.zeros((height, width), dtype=bool)
    box = filled_box(contours, height, width)
    mask[box.rows, box.columns] = box.voxels
    return mask


@dataclass(frozen=True)
class PlaneBox:
    """The voxels of one slice within the rectangle of rows and columns that can hold them."""

    top: int
    left: int
    voxels: np.ndarray  # (rows, columns) bool

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.voxels.shape[0])

    @property
    def columns(self) -> slice:
        return slice(self.left, self.left + self.voxels.shape[1])

    def placed(self, top: int, left: int) -> tuple[slice, slice]:
        """Where the box lies in a block whose first row and column are ``top`` and ``left``."""
        return (slice(self.rows.start - top, self.rows.stop - top),
                slice(self.columns.start - left, self.columns.stop - left))


def filled_box(contours: list[np.ndarray], height: int, width: int) -> PlaneBox:
    """The voxels of a (height, width) slice inside ``contours`` ((N, 2) column and row indices) combined
    even-odd, within the rows and columns the contours span: a voxel is in where a row's edge crossings
    left of its centre are odd in number. An edge crosses the rows r with low <= r < high of its ends,
    and a crossing at column x toggles the centres c >= x: the left and top sides of a polygon are in,
    its right and bottom sides out (module docstring). Every crossing lies between the contours' least
    and greatest column and each row holds an even number of them, so no voxel outside that box is in:
    counting within it alone spares scanning the whole plane for each contour of a CT."""
    vertices = np.concatenate(contours)
    top, bottom = _span(vertices[:, 1], height)
    left, right = _span(vertices[:, 0], width)
    box_width = right - left
    flat: list[np.ndarray] = []
    for points in contours:
        rows, columns = _crossings(points, top, bottom, width)
        flat.append((rows - top) * (box_width + 1) + np.clip(columns, left, right) - left)
    counts = np.bincount(np.concatenate(flat), minlength=(bottom - top) * (box_width + 1))
    toggles = counts.reshape(bottom - top, box_width + 1)
    return PlaneBox(top, left, (np.cumsum(toggles, axis=1)[:, :box_width] & 1).astype(bool))


def _span(coordinates: np.ndarray, size: int) -> tuple[int, int]:
    """The first and past-the-last voxel (0 to ``size``) whose centre can lie between the least and the
    greatest of ``coordinates``, by the rule that a centre on the low side is in, on the high side out."""
    low = min(max(math.ceil(coordinates.min()), 0), size)
    return low, min(max(math.ceil(coordinates.max()), low), size)


def _crossings(points: np.ndarray, top: int, bottom: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where a closed polygon's edges cross the rows top..bottom - 1: each crossing's row, and the first
    column whose centre lies at or right of it (0 to ``width``)."""
    following = np.concatenate((points[1:], points[:1]))  # each vertex's next, the last's the first
    x0, y0, x1, y1 = points[:, 0], points[:, 1], following[:, 0], following[:, 1]
    first = np.clip(np.ceil(np.minimum(y0, y1)), top, bottom).astype(np.int64)
    stop = np.clip(np.ceil(np.maximum(y0, y1)), top, bottom).astype(np.int64)
    counts = np.maximum(stop - first, 0)
    edge = np.repeat(np.arange(len(points)), counts)
    rows = np.repeat(first, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    crossing = x0[edge] + (rows - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    return rows, np.clip(np.ceil(np.round(crossing, INDEX_DECIMALS)), 0, width).astype(np.int64)


@dataclass(frozen=True)
class ClassMask:
    """One class's voxels in a case, as the block they lie in (``box``: slices of the label map)."""

    value: int
    name: str
    box: tuple[slice, slice, slice]
    voxels: np.ndarray

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.voxels))


def _class_mask(value: int, name: str, by_slice: dict[int, list[np.ndarray]],
                shape: tuple[int, ...]) -> ClassMask | None:
    """A class's contours filled slice by slice, each within its own box, then written into the block
    the boxes cover; None where they cover no voxel."""
    boxes = {z: box for z, contours in by_slice.items()
             if (box := filled_box(contours, shape[1], shape[2])).voxels.any()}
    if not boxes:
        return None
    z0, z1 = min(boxes), max(boxes) + 1
    top, left = min(b.top for b in boxes.values()), min(b.left for b in boxes.values())
    bottom, right = max(b.rows.stop for b in boxes.values()), max(b.columns.stop for b in boxes.values())
    voxels = np.zeros((z1 - z0, bottom - top, right - left), dtype=bool)
    for z, box in boxes.items():
        voxels[z - z0][box.placed(top, left)] = box.voxels
    return ClassMask(value, name, (slice(z0, z1), slice(top, bottom), slice(left, right)), voxels)


def _smaller_wins(masks: list[ClassMask], shape: tuple[int, ...], path: Path) -> np.ndarray:
    """The label map of ``masks`` (16-bit where a class value is above 255, ``label_dtype``), each shared
    voxel given to the smallest class holding it (painted largest first), the overlaps said once for the
    structure set with their voxel counts."""
    label = np.zeros(shape, dtype=label_dtype(max((m.value for m in masks), default=0)))
    names = {m.value: m.name for m in masks}
    overlaps: list[str] = []
    for mask in sorted(masks, key=lambda m: (-m.count, m.value)):
        block = label[mask.box]
        under = block[mask.voxels]
        values, counts = np.unique(under[under != 0], return_counts=True)
        overlaps += [f"{mask.name!r} inside {names[int(v)]!r} ({n} voxels)" for v, n in zip(values, counts)]
        block[mask.voxels] = mask.value
    if overlaps:
        say_once(f"{path}: ROIs overlap ({'; '.join(overlaps)}); fewsam segments one class per voxel, so a shared "
                 "voxel is given to the smaller ROI", key=f"rtstruct-overlap-{path}")
    return label
