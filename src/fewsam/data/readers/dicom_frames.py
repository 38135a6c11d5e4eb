"""What the frames of a DICOM file or series are: slices of one volume, or time points too.

ITK (GDCM) stacks every frame of an enhanced MR or CT file into one volume and exposes none of the
per-frame functional groups, so a cine series (each slice position repeated once per time point)
reads as a volume of interleaved time points with a made-up slice spacing. The same holds for a cine
written as single-frame files (one file per slice position and time point, sharing one series UID).
pydicom reads each file's header (pixels left unread) for each frame's ImagePositionPatient and
TemporalPositionIndex (a single-frame file's own ImagePositionPatient and TemporalPositionIdentifier).
TriggerTime alone marks no time point: the slices of a gated 3D stack each carry their own. The same
header read gives each frame's own rescale slope and intercept, which GDCM takes from the first frame.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

POSITION_DECIMALS = 3  # positions equal to a micrometre are one slice position


@dataclass(frozen=True)
class FrameHeader:
    """The frames of one file (or of a whole series, ``joined``): how many, and the positions and temporal
    indices their headers give, in file order (frames without one give none); ``rescales``: each frame's
    own (RescaleSlope, RescaleIntercept) where a multi-frame file's frames give their own, else None;
    ``orientations``: each frame's own ImageOrientationPatient where they give one (none where shared)."""

    frames: int
    positions: list[tuple[int, ...]]
    temporal_indices: list[int]
    rescales: list[tuple[float, float]] | None = None
    orientations: list[tuple[float, ...]] = field(default_factory=list)

    @staticmethod
    def joined(headers: Iterable[FrameHeader]) -> FrameHeader:
        """The frames of several files (a series) as one: time points may lie across its files."""
        headers = list(headers)
        return FrameHeader(sum(h.frames for h in headers), [p for h in headers for p in h.positions],
                           [t for h in headers for t in h.temporal_indices])

    def time_points(self) -> tuple[int, int] | None:
        """(time points, slice positions) where the frames hold several time points, else None: a position
        repeated (the most frames at one position are the time points), or, where not every frame gives
        its position, several temporal index values. Frames each at a position of its own are one volume
        whatever their temporal indices say (a vendor may number the slices of one volume in time)."""
        times = len(set(self.temporal_indices))
        places = len(set(self.positions))
        if len(self.positions) == self.frames:
            return (max(times, max(Counter(self.positions).values())), places) if places < self.frames else None
        return (times, max(self.frames // times, 1)) if times > 1 else None


def dicom_header(path: Path | str, tags: list[str] | None = None) -> Any | None:
    """A file's DICOM header as a pydicom Dataset, pixels left unread (``tags``: those alone); None where
    it cannot be read as DICOM. Bare data sets without a Part 10 preamble are read too (``force``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=tags)
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError):
        return None


def frame_header(path: Path) -> FrameHeader | None:
    """A file's frames with their positions and temporal indices: a multi-frame file's from its per-frame
    functional groups, a single-frame file's from its own header; None where the file cannot be read as
    DICOM (ITK's reader then says what is wrong with it). A bare data set without the Part 10 preamble and
    file meta group (older scanner and PACS exports) is read too (``force``): GDCM reads and stacks such
    files, so skipping them left their time points unseen and a one-slice cine read as a volume."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
        frames = int(dataset.get("NumberOfFrames") or 1)
        if not per_frame:
            return FrameHeader(frames, *_single_frame(dataset)) if frames == 1 else FrameHeader(frames, [], [])
        positions: list[tuple[int, ...]] = []
        temporal: list[int] = []
        orientations: list[tuple[float, ...]] = []
        for frame in per_frame:
            position = _first(frame, "PlanePositionSequence", "ImagePositionPatient")
            if position is not None:
                positions.append(_position_key(position))
            index = _first(frame, "FrameContentSequence", "TemporalPositionIndex")
            if index is not None:
                temporal.append(int(index))
            orientation = _first(frame, "PlaneOrientationSequence", "ImageOrientationPatient")
            if orientation is not None and len(orientation) == 6:
                orientations.append(tuple(float(v) for v in orientation))
        rescales = _frame_rescales(dataset, per_frame)
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError):
        return None
    return FrameHeader(frames, positions, temporal, rescales, orientations)


def _frame_rescales(dataset, per_frame) -> list[tuple[float, float]] | None:  # noqa: ANN001 - pydicom's
    """Each frame's (RescaleSlope, RescaleIntercept) where every frame gives its own (a Pixel Value
    Transformation in its functional groups, as enhanced MR exports scale each frame), None otherwise: a
    rescale shared by all frames, or the file's own, GDCM applies itself to every frame."""
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [None])[0]
    if shared is not None and shared.get("PixelValueTransformationSequence"):
        return None
    rescales = [_rescale(frame) for frame in per_frame]
    return rescales if all(r is not None for r in rescales) else None  # type: ignore[return-value]


def _rescale(frame) -> tuple[float, float] | None:  # noqa: ANN001 - a pydicom Dataset
    """A frame's own slope and intercept, None where its functional groups give none."""
    slope = _first(frame, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _first(frame, "PixelValueTransformationSequence", "RescaleIntercept")
    return None if slope is None or intercept is None else (float(slope), float(intercept))


def _single_frame(dataset) -> tuple[list[tuple[int, ...]], list[int]]:  # noqa: ANN001 - a pydicom Dataset
    """A single-frame file's position and temporal position identifier, each as a list of none or one."""
    position = dataset.get("ImagePositionPatient")
    index = dataset.get("TemporalPositionIdentifier")
    return ([_position_key(position)] if position is not None and len(position) == 3 else [],
            [int(index)] if index not in (None, "") else [])


def _position_key(position) -> tuple[int, ...]:  # noqa: ANN001 - pydicom's multi-valued DS element
    """A position in whole units of ``POSITION_DECIMALS`` (micrometres): positions equal to that are one."""
    return tuple(int(np.rint(float(v) * 10 ** POSITION_DECIMALS)) for v in position)


def _first(frame, sequence: str, keyword: str):  # noqa: ANN001, ANN202 - pydicom's Dataset and element values
    """``keyword`` in the first item of ``frame``'s ``sequence``, None where either is absent."""
    items = frame.get(sequence)
    return items[0].get(keyword) if items else None
