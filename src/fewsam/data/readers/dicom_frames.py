"""What the frames of one multi-frame DICOM file are: slices of one volume, or time points too.

ITK (GDCM) stacks every frame of an enhanced MR or CT file into one volume and exposes none of the
per-frame functional groups, so a cine series (each slice position repeated once per time point)
reads as a volume of interleaved time points with a made-up slice spacing. The header is walked
here, without a DICOM library, for each frame's ImagePositionPatient (0020,0032) and
TemporalPositionIndex (0020,9128), which sit in the per-frame functional groups' sequences.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

IMAGE_POSITION = (0x0020, 0x0032)
TEMPORAL_POSITION_INDEX = (0x0020, 0x9128)
PIXEL_DATA = (0x7FE0, 0x0010)
TRANSFER_SYNTAX = (0x0002, 0x0010)
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
UNDEFINED = 0xFFFFFFFF
# Explicit-VR elements whose length takes four bytes (after two reserved ones)
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
# Sequences that hold the frames' positions, known by tag where the VR is implicit
FRAME_SEQUENCES = frozenset({(0x5200, 0x9229), (0x5200, 0x9230), (0x0020, 0x9111), (0x0020, 0x9113)})
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
    """The frames' positions and temporal indices of a Part 10 file in (explicit or implicit) little-endian
    VR, None where it cannot be walked (another transfer syntax, a damaged header)."""
    with open(path, "rb") as file:
        try:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return None
        with data:
            try:
                return _walk(data)
            except (struct.error, ValueError, IndexError):
                return None


def _walk(data: mmap.mmap) -> FrameHeader | None:
    """Visit every element of the header, entering sequences and items, up to the pixel data."""
    if data[128:132] != b"DICM":
        return None  # no Part 10 preamble: where the header starts is not known here
    offset, explicit = 132, True
    positions: list[tuple[float, ...]] = []
    temporal: list[int] = []
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        tag = (group, element)
        if tag == PIXEL_DATA:
            break
        if group == 0xFFFE:  # an item (entered) or a delimiter
            offset += 8
            continue
        if group != 0x0002 and not explicit:
            length = struct.unpack_from("<I", data, offset + 4)[0]
            start, sequence = offset + 8, length == UNDEFINED or tag in FRAME_SEQUENCES
        else:
            vr = bytes(data[offset + 4:offset + 6])
            if vr in LONG_VRS:
                length = struct.unpack_from("<I", data, offset + 8)[0]
                start, sequence = offset + 12, vr == b"SQ"
            else:
                length = struct.unpack_from("<H", data, offset + 6)[0]
                start, sequence = offset + 8, False
            if length == UNDEFINED and not sequence:
                return None  # an undefined length outside a sequence: not walked here
        if sequence:
            offset = start
            continue
        value = bytes(data[start:start + length])
        if tag == TRANSFER_SYNTAX:
            syntax = value.rstrip(b"\0 ").decode("ascii", "replace")
            if syntax not in (IMPLICIT_LITTLE, EXPLICIT_LITTLE):
                return None
            explicit = syntax == EXPLICIT_LITTLE
        elif tag == IMAGE_POSITION:
            positions.append(_position(value))
        elif tag == TEMPORAL_POSITION_INDEX and length == 4:
            temporal.append(struct.unpack("<I", value)[0])
        offset = start + length
    return FrameHeader(positions, temporal)


def _position(value: bytes) -> tuple[float, ...]:
    """An ImagePositionPatient's ``x\\y\\z`` text as numbers to ``POSITION_DECIMALS`` decimals."""
    return tuple(float(f"{float(v):.{POSITION_DECIMALS}f}") for v in value.decode("ascii").strip("\0 ").split("\\"))
