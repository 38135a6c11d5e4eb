"""DICOM SEG objects (Segmentation Storage) as the labels of the series they reference.

PACS, OHIF and 3D Slicer keep a series' segmentation as a DICOM SEG: one object naming its segments
(SegmentNumber, SegmentLabel) and holding each segment's frames, each frame tied to the slice it was
drawn on by its source image reference, or by its plane position. Read with highdicom:

- a SEG belongs to the series its ReferencedSeriesSequence names; without references, to the one series
  of the dataset in its FrameOfReferenceUID (``seg_references``, its header alone read when the dataset
  opens; the pairing, shared with RT structure sets, is ``dicom_labels.label_objects_by_case``);
- each segment is a class of its SegmentLabel, the same class in every case whatever its number there;
  the class value is the SegmentNumber where every case numbers each label alike
  (``slicer_segmentation.classes_of_segment_names``), and ``classes.json`` may name the classes instead;
- frames are placed on the series' slices by their source instances (or source frames of a multi-frame
  series); those of a SEG that references none of the series' instances (made without references, or on
  a copy of the series with new UIDs), each on the slice at its plane position, a frame on no slice refused;
- BINARY segments are read as stored, FRACTIONAL ones as the voxels of at least 0.5;
- segments that overlap are refused in one line: fewsam segments one class per voxel, and a voxel
  given to whichever segment came last would move a border without a word.

Memory: a segment at a time is decoded to (D, H, W), so a SEG of a hundred structures (TotalSegmentator's)
holds one label map and one segment's voxels, not a volume per segment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from fewsam.data.readers.common import first_line
from fewsam.data.readers.dicom_frames import dicom_header
from fewsam.data.readers.slicer_segmentation import Segment, SegmentClasses, class_values
from fewsam.errors import DataError
from fewsam.labels import label_dtype

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
FRACTIONAL_THRESHOLD = 0.5  # a FRACTIONAL segment holds the voxels of at least this probability or occupancy


def seg_references(ds: Any) -> tuple[tuple[str, ...], str | None]:
    """The series a SEG header references (its ReferencedSeriesSequence) and its frame of reference: what
    pairs it with its series (``dicom_labels.label_objects_by_case``)."""
    series = tuple(str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])
                   if "SeriesInstanceUID" in item)
    return series, str(ds.FrameOfReferenceUID) if ds.get("FrameOfReferenceUID") else None


def seg_segments(ds: Any) -> tuple[Segment, ...]:
    """The segments a SEG header declares (``Segment.number`` the SegmentNumber, ``Segment.name`` the
    SegmentLabel), read without its pixels."""
    return tuple(_segment(item, k) for k, item in enumerate(ds.get("SegmentSequence", [])))


def _segment(item: Any, k: int) -> Segment:
    """One item of a SegmentSequence as a ``Segment``: its number and label (``segment<N>`` where the
    label, which the standard requires, is missing)."""
    number = int(item.get("SegmentNumber", k + 1))
    name = str(item.get("SegmentLabel", "") or "").strip() or f"segment{number}"
    return Segment(index=number - 1, name=name, layer=0, label_value=number, number=number)


def read_seg_on(path: Path, grid: sitk.Image, source_files: list[str], classes: SegmentClasses | None) -> np.ndarray:
    """The SEG at ``path`` as (D, H, W) class values (uint8, or uint16 where a class value is above 255) on
    ``grid`` (the series' geometry, its slices those of ``source_files`` in order): each frame on the slice
    it references, or, where its frames reference none of the series' instances, on the slice at its plane
    position. Each segment is the class of its name in ``classes`` (None: its SegmentNumber)."""
    seg = _segread(path)
    segments = seg_segments(seg)
    values = class_values(segments, classes, path)
    referenced = _referenced_sources(seg, source_files)
    masks = (_masks_by_source(seg, segments, referenced, path) if referenced is not None
             else _masks_by_position(seg, segments, grid, path))
    label = np.zeros(grid.GetSize()[::-1], label_dtype(max(values, default=0)))
    owner = np.zeros(label.shape, np.int32)
    for segment, value, mask in zip(segments, values, masks):
        _refuse_overlap(owner, mask, segment, segments, path)
        label[mask], owner[mask] = value, segment.number
    return label


def _segread(path: Path) -> Any:
    """The SEG as highdicom's ``Segmentation``, its frames read whole: highdicom's lazy reading cuts
    BINARY frames that do not fill whole bytes wrongly. A bare data set without the Part 10 header is read
    too (``with_transfer_syntax``), as its series' files are. A file highdicom does not take for a
    segmentation is a DataError naming it."""
    import highdicom as hd
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return hd.seg.Segmentation.from_dataset(with_transfer_syntax(pydicom.dcmread(path, force=True)), copy=False)
    except (InvalidDicomError, ValueError, TypeError, AttributeError, KeyError, OSError, EOFError) as err:
        raise DataError(f"cannot read DICOM SEG {path}: {first_line(err)}") from None


def with_transfer_syntax(ds: Any) -> Any:
    """``ds`` with the transfer syntax it was read in named in its file meta group: a bare data set (no
    Part 10 header) has none, which highdicom needs to decode its frames; it is uncompressed, in the
    encoding pydicom found it in."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


@dataclass(frozen=True)
class Referenced:
    """How the series' slices are named in a SEG's source references: the SOP instance of each slice
    file, or the frames of one multi-frame file (``frames``: their count)."""

    instances: list[str]
    frames: int = 0


def _referenced_sources(seg: Any, source_files: list[str]) -> Referenced | None:
    """The series' instances, where the SEG's frames reference any of them; None where none (the SEG
    was made without source references, or on a copy of the series with new UIDs), so that the frames
    are placed by their positions instead."""
    headers = [dicom_header(name, ["SOPInstanceUID", "NumberOfFrames"]) or {} for name in source_files]
    instances = [str(h.get("SOPInstanceUID", "")) for h in headers]
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    if not referenced & set(instances):
        return None
    frames = int(headers[0].get("NumberOfFrames", 1) or 1) if len(headers) == 1 else 0
    return Referenced(instances, frames if frames > 1 else 0)


Masks = Iterator[np.ndarray]  # each segment's (D, H, W) voxels on the series' slices


def _masks_by_source(seg: Any, segments: tuple[Segment, ...], referenced: Referenced, path: Path) -> Masks:
    """Each segment's voxels on the series' slices, frame by frame as the SEG references them (slices
    it holds no frame of are empty)."""
    for segment in segments:
        try:
            if referenced.frames:
                pixels = seg.get_pixels_by_source_frame(
                    referenced.instances[0], list(range(1, referenced.frames + 1)),
                    segment_numbers=[segment.number], assert_missing_frames_are_empty=True, dtype=np.float32)
            else:
                pixels = seg.get_pixels_by_source_instance(
                    referenced.instances, segment_numbers=[segment.number], assert_missing_frames_are_empty=True,
                    dtype=np.float32)
        except (ValueError, RuntimeError, KeyError) as err:
            raise DataError(f"cannot place DICOM SEG {path} on the slices of its series: {first_line(err)}") from None
        yield pixels[..., 0] >= FRACTIONAL_THRESHOLD


def _masks_by_position(seg: Any, segments: tuple[Segment, ...], grid: sitk.Image, path: Path) -> Masks:
    """Each segment's voxels on the series' slices, each frame on the slice at its plane position: the
    frames of a SEG made without source references, or on a copy of the series with new UIDs. A frame
    lying on no slice (another grid, a slice missing from the series) is refused naming it."""
    depth, (width, height) = grid.GetDepth(), grid.GetSize()[:2]
    if (int(seg.Rows), int(seg.Columns)) != (height, width):
        raise DataError(f"{path}: its frames are {seg.Rows} x {seg.Columns} pixels, the slices of its series "
                        f"{height} x {width}; save the SEG on the series' images")
    scale = float(seg.get("MaximumFractionalValue", 1) or 1) if seg.SegmentationType == "FRACTIONAL" else 1.0
    frames: dict[int, list[tuple[int, int]]] = {}  # segment number -> (frame index, slice) of its frames
    for k, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frames.setdefault(number, []).append((k, _slice_at(frame, grid, k, path)))
    for segment in segments:
        mask = np.zeros((depth, height, width), dtype=bool)
        for k, z in frames.get(segment.number or 0, []):
            stored = np.asarray(seg.get_stored_frame(k, as_index=True), dtype=np.float32)
            mask[z] |= stored / scale >= FRACTIONAL_THRESHOLD
        yield mask


POSITION_TOLERANCE_MM = 0.01  # a frame this close to a slice's first pixel lies on that slice


def _slice_at(frame: Any, grid: sitk.Image, k: int, path: Path) -> int:
    """The series slice a SEG frame lies on, by its ImagePositionPatient (the place of its first pixel)."""
    try:
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
    except (AttributeError, IndexError, TypeError, ValueError):
        raise DataError(f"{path}: its frame {k + 1} gives neither a source image nor a plane position, so its slice "
                        "is unknown; save the SEG with references to the series' images") from None
    z = int(round(grid.TransformPhysicalPointToContinuousIndex(position)[2]))
    corner = grid.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(z)))
    if not 0 <= z < grid.GetDepth() or np.linalg.norm(np.subtract(corner, position)) > POSITION_TOLERANCE_MM:
        raise DataError(f"{path}: its frame {k + 1} at {position} lies on no slice of its series; save the SEG on "
                        "the series' images")
    return z


def _refuse_overlap(owner: np.ndarray, mask: np.ndarray, segment: Segment, segments: tuple[Segment, ...],
                    path: Path) -> None:
    """Refuse segments that share voxels: fewsam segments one class per voxel, and a voxel given to
    whichever segment came last would move a structure's border without a word."""
    shared = mask & (owner != 0)
    if not shared.any():
        return
    voxel = tuple(int(i) for i in np.argwhere(shared)[0])
    other = next(s.name for s in segments if s.number == owner[voxel])
    raise DataError(f"{path}: its segments {other!r} and {segment.name!r} overlap ({np.count_nonzero(shared)} "
                    f"voxels, e.g. (z, y, x) {voxel}); fewsam segments one class per voxel: save segments that do "
                    "not overlap, or one label map as labels/<case>.nii.gz, which is read instead")
