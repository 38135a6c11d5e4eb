"""What the frames of one multi-frame DICOM file are: slices of one volume, or time points too.

ITK (GDCM) stacks every frame of an enhanced MR or CT file into one volume and exposes none of the
per-frame functional groups, so a cine series (each slice position repeated once per time point)
reads as a volume of interleaved time points with a made-up slice spacing. pydicom reads the header
(pixels left unread) for each frame's ImagePositionPatient and TemporalPositionIndex.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

POSITION_DECIMALS = 3  # positions equal to a micrometre are one slice position


@dataclass(frozen=True)
class FrameHeader:
    """The positions and temporal indices a multi-frame file's header gives, in file order."""

    positions: list[tuple[float, ...]]
    temporal_indices: list[int]

    def time_points(self, frames: int) -> tuple[int, int] | None:
        """(time points, slice positions) where the ``frames`` frames hold several time points, else None:
        several TemporalPositionIndex values, or one position per frame with positions repeated."""
        times = len(set(self.temporal_indices))
        places = len(set(self.positions))
        if times > 1:
            return times, places if len(self.positions) == frames else frames // times
        if len(self.positions) == frames and places < frames:
            return frames // places, places
        return None


def frame_header(path: Path) -> FrameHeader | None:
    """The frames' positions and temporal indices from the per-frame functional groups; None where
    the file cannot be read as DICOM (ITK's reader then says what is wrong with it)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    positions: list[tuple[float, ...]] = []
    temporal: list[int] = []
    for frame in dataset.get("PerFrameFunctionalGroupsSequence", []):
        position = _first(frame, "PlanePositionSequence", "ImagePositionPatient")
        if position is not None:
            positions.append(tuple(round(float(v), POSITION_DECIMALS) for v in position))
        index = _first(frame, "FrameContentSequence", "TemporalPositionIndex")
        if index is not None:
            temporal.append(int(index))
    return FrameHeader(positions, temporal)


def _first(frame, sequence: str, keyword: str):  # noqa: ANN001, ANN202 - pydicom's Dataset and element values
    """``keyword`` in the first item of ``frame``'s ``sequence``, None where either is absent."""
    items = frame.get(sequence)
    return items[0].get(keyword) if items else None
