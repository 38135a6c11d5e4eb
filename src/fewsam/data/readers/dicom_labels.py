"""DICOM objects that label a series: DICOM SEG (``dicom_seg.py``) and RT structure sets (``dicom_rtstruct.py``).

Both are objects without an image, kept in a folder of their own (TCIA downloads keep them beside each
series under patient/study/), that name the series they were drawn on. One pairing serves both kinds, so
that a SEG and a structure set of one series meet, and are refused together, as two SEG objects are:

- an object labels the series whose SeriesInstanceUID it references; without references, the one series
  of the dataset sharing its FrameOfReferenceUID (several series of one frame, a T1 and a T2 of one scan,
  leave it unplaced);
- one whose series is not in the dataset is said and read by none;
- a series with a ``labels/`` file is read from that file (an export the user chose, or a corrected
  copy), said;
- several objects of one series are refused in one line: fewsam does not choose between annotations.

Only headers are read when the dataset opens (``LabelObject``); the voxels when a case is loaded
(``LabelObject.read_on``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from fewsam.data.readers.common import Entry, first_line, natural_sorted
from fewsam.data.readers.dicom_frames import dicom_header
from fewsam.data.readers.dicom_rtstruct import (RTSTRUCT_SOP_CLASS, read_rtstruct_on, roi_segments,
                                                rtstruct_references, say_left_out_rois)
from fewsam.data.readers.dicom_seg import SEG_SOP_CLASS, read_seg_on, seg_references, seg_segments
from fewsam.data.readers.slicer_segmentation import Segment, SegmentationKind, SegmentClasses
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.progress import say_once

# its segments that are classes and the names of those left out, from its header and classes.json's classes
SegmentsOf = Callable[[Any, ClassMap | None], tuple[tuple[Segment, ...], tuple[str, ...]]]
ReadOn = Callable[[Path, sitk.Image, list[str], SegmentClasses | None], np.ndarray]


@dataclass(frozen=True)
class LabelKind(SegmentationKind):
    """What differs between the kinds of label objects: how messages name them (``many``, and one of them
    ``name``, with its article ``one``), what ``fewsam info`` says they store (``storage``), what a class is
    stored as in them (``part``), and how their header and voxels are read."""

    name: str
    one: str
    storage: str
    references: Callable[[Any], tuple[tuple[str, ...], str | None]]
    segments: SegmentsOf
    read_on: ReadOn


def _every_segment(ds: Any, named: ClassMap | None) -> tuple[tuple[Segment, ...], tuple[str, ...]]:
    """A SEG's segments are all classes (classes.json names them, ``segment_classes``)."""
    return seg_segments(ds), ()


PREDICTIONS = ("predictions: <case>.nii.gz label maps of class indices on the series' grid and <case>.seg.dcm "
               "DICOM SEG objects (with --rtstruct, <case>.rtstruct.dcm RT structure sets too)")
KINDS = {
    SEG_SOP_CLASS: LabelKind(
        many="DICOM SEG objects", part="segment", name="DICOM SEG", one="a DICOM SEG",
        storage=f"DICOM SEG objects: each class a segment of its SegmentLabel; {PREDICTIONS}",
        references=seg_references, segments=_every_segment, read_on=read_seg_on),
    RTSTRUCT_SOP_CLASS: LabelKind(
        many="RT structure sets", part="ROI", name="RT structure set", one="an RT structure set",
        storage="RT structure sets: each class an ROI of its ROIName, its closed contours filled on the series' "
                f"slices; {PREDICTIONS}",
        references=rtstruct_references, segments=roi_segments, read_on=read_rtstruct_on),
}


@dataclass(frozen=True)
class LabelObject:
    """What a label object's header says without its voxels: the series it references (``series_uids``),
    its frame of reference, its segments that are classes, and the names of those left out."""

    path: Path
    kind: LabelKind
    series_uids: tuple[str, ...]
    frame_of_reference: str | None
    segments: tuple[Segment, ...]
    left_out: tuple[str, ...] = ()

    def read_on(self, grid: sitk.Image, source_files: list[str], classes: SegmentClasses | None) -> np.ndarray:
        """Its voxels as (D, H, W) uint8 class values on ``grid``, the series' geometry."""
        return self.kind.read_on(self.path, grid, source_files, classes)


def label_object(path: Path, sop_class: str, named: ClassMap | None = None) -> LabelObject:
    """The ``LabelObject`` of a file of ``sop_class`` (one of ``KINDS``), read with pydicom (pixels left
    unread; ``named``: classes.json's classes); a file pydicom cannot read is a DataError naming it."""
    kind = KINDS[sop_class]
    ds = dicom_header(path)
    if ds is None:
        raise DataError(f"cannot read {kind.name} {path}: not a readable DICOM file")
    try:
        series, frame = kind.references(ds)
        segments, left_out = kind.segments(ds, named)
    except (ValueError, TypeError, AttributeError, KeyError) as err:  # a header pydicom reads, its values damaged
        raise DataError(f"cannot read {kind.name} {path}: {first_line(err)}") from None
    return LabelObject(path, kind, series, frame, segments, left_out)


Identities = dict[str, tuple[str | None, str | None]]  # case -> its series' SeriesInstanceUID, FrameOfReferenceUID


def label_objects_by_case(root: Path, objects: list[tuple[Path, str]], entries: list[Entry],
                          series: dict[Path, list[Path]], named: ClassMap | None) -> dict[str, LabelObject]:
    """The label object below root (``objects``: their files and SOP classes) that labels each case without a
    labels/ file (module docstring; ``series``: each case folder's files)."""
    if not objects:
        return {}
    identities = {e.case_id: series_identity(series[e.image]) for e in entries}
    found: dict[str, list[LabelObject]] = {}
    unpaired: list[tuple[str, str]] = []
    for path, sop_class in objects:
        try:
            header: LabelObject | None = label_object(path, sop_class, named)
        except DataError:
            header = None
        case_id = None if header is None else _referenced_case(header, identities)
        if case_id is None or header is None:
            unpaired.append((KINDS[sop_class].name, path.relative_to(root).as_posix()))
        else:
            found.setdefault(case_id, []).append(header)
    _say_unpaired(root, unpaired)
    labelled = natural_sorted(e.case_id for e in entries if e.label is not None and e.case_id in found)
    _say_labels_files_read(root, labelled, found)
    for case_id, headers in found.items():
        if len(headers) > 1 and case_id not in labelled:
            _refuse_several(root, case_id, headers)
    chosen = {case_id: headers[0] for case_id, headers in found.items() if case_id not in labelled}
    say_left_out_rois(root, {h.path: h.left_out for h in chosen.values() if h.left_out}, named)
    return chosen


def series_identity(files: list[Path]) -> tuple[str | None, str | None]:
    """A series folder's SeriesInstanceUID and FrameOfReferenceUID, from its first file's header."""
    header = dicom_header(natural_sorted(files, key=lambda p: p.name)[0], ["SeriesInstanceUID", "FrameOfReferenceUID"])
    if header is None:
        return None, None
    return (str(header.SeriesInstanceUID) if header.get("SeriesInstanceUID") else None,
            str(header.FrameOfReferenceUID) if header.get("FrameOfReferenceUID") else None)


def _referenced_case(header: LabelObject, identities: Identities) -> str | None:
    """The case an object labels: the series it references; without references, the one series sharing its
    frame of reference."""
    if header.series_uids:
        return next((case for case, (uid, _) in identities.items() if uid in header.series_uids), None)
    sharing = [case for case, (_, frame) in identities.items() if frame and frame == header.frame_of_reference]
    return sharing[0] if len(sharing) == 1 else None


def _say_unpaired(root: Path, unpaired: list[tuple[str, str]]) -> None:
    """Label objects whose series is not in the dataset are no cases and label none: said once per kind."""
    for kind in dict.fromkeys(name for name, _ in unpaired):
        paths = [path for name, path in unpaired if name == kind]
        shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        say_once(f"{root}: {len(paths)} {kind} object(s) reference no series of the dataset ({shown}) and are not "
                 "read: their series is not in the data folder (or, without references, no one series shares their "
                 "frame of reference)", key=f"dicom-label-object-unpaired-{kind}-{root}")


def _say_labels_files_read(root: Path, labelled: list[str], found: dict[str, list[LabelObject]]) -> None:
    """Series with both a labels/ file and a label object are read from the file: said once."""
    if labelled:
        kinds = " or ".join(dict.fromkeys(h.kind.one for case in labelled for h in found[case]))
        shown = ", ".join(labelled[:3]) + (", ..." if len(labelled) > 3 else "")
        say_once(f"{root}: {len(labelled)} series have both a labels/ file and {kinds} ({shown}); the labels/ "
                 "file is read", key=f"dicom-seg-and-label-{root}")


def _refuse_several(root: Path, case_id: str, headers: list[LabelObject]) -> None:
    shown = ", ".join(f"{h.path.relative_to(root).as_posix()}: {h.kind.name}" for h in headers[:3])
    raise DataError(f"{root}: series {case_id} is referenced by {len(headers)} DICOM label objects ({shown}); "
                    "fewsam does not choose between annotations: move all but one out of the data folder, "
                    f"or give the series a labels/{case_id}.nii.gz, which is read instead")
