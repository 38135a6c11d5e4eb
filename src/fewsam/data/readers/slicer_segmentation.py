"""3D Slicer's segmentation files (``<volume>.seg.nrrd``): their segments, not their voxel values, are the classes.

Slicer saves a segmentation as an NRRD whose header names each segment (``SegmentN_Name``, with its
``SegmentN_LabelValue`` and ``SegmentN_Layer``). Segments that overlap are stored in several layers:
the file is then 4D, its first axis the layers (``kinds: list domain domain domain``), which ITK reads
as voxels of several components. A segment is the voxels of its layer equal to its label value, so
one layer may hold values 1 and 7, and two layers may both use 1 for different segments: read as
plain voxel values, such a file gave wrong or missing classes, or was taken for a one-hot label.
Here each segment becomes a class: the class named as the segment (``classes.json``, or the
segments' names where no classes are given), else, where some segment names no class, the
segment's place in the file (Segment0 as class 1), said. Where segments overlap, a voxel takes the
class of the later segment in the file's order, said, as the structure masks of a case folder do.
Files written by Slicer before layers (one binary layer per segment, no ``LabelValue``) are read the
same way: a segment without a label value is its layer's non-zero voxels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fewsam.data.readers.itk_volume import itk_ending, itk_reader, quiet_itk
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.labels import check_class_count
from fewsam.progress import say_once

SEGMENTATION_ENDINGS = (".nrrd", ".nhdr")


@dataclass(frozen=True)
class Segment:
    """One segment of a Slicer segmentation: where its voxels are (``layer``, ``label_value``; None: any
    non-zero voxel of its layer) and its ``name``, by which it is matched to a class."""

    index: int
    name: str
    layer: int
    label_value: int | None


def segments_of(path: Path) -> tuple[Segment, ...]:
    """The segments a file's header names, read without its voxels; empty for a file that is no Slicer
    segmentation (a plain label map), which is then read by its values as before."""
    if itk_ending(path.name) not in SEGMENTATION_ENDINGS:
        return ()
    reader = itk_reader(path)
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError:
        return ()  # reading the voxels names what is wrong with the file
    fields = {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys() if key.startswith("Segment")}
    layers = reader.GetNumberOfComponents()
    segments = []
    for n in itertools.count():
        if f"Segment{n}_ID" not in fields and f"Segment{n}_Name" not in fields:
            break
        name = fields.get(f"Segment{n}_Name") or fields.get(f"Segment{n}_ID") or f"segment{n}"
        layer = _integer(fields, f"Segment{n}_Layer", path, n if layers > 1 else 0) or 0
        if not 0 <= layer < layers:
            raise DataError(f"{path}: Segment{n}_Layer is {layer}, and the file holds {layers} layer(s); "
                            "save the segmentation again from 3D Slicer")
        segments.append(Segment(n, name, layer, _integer(fields, f"Segment{n}_LabelValue", path, None)))
    return tuple(segments)


def _integer(fields: dict[str, str], key: str, path: Path, default: int | None) -> int | None:
    if key not in fields:
        return default
    try:
        return int(fields[key])
    except ValueError:
        raise DataError(f"{path}: its header's {key} is {fields[key]!r}, not a whole number; save the "
                        "segmentation again from 3D Slicer") from None


def segment_names(path: Path) -> list[str]:
    """The names of a file's segments in its order (empty for a plain label map): its classes where no
    class names are given."""
    return [segment.name for segment in segments_of(path)]


def class_values(segments: tuple[Segment, ...], classes: ClassMap | None, path: Path) -> list[int]:
    """The class of each segment: the class named as it (letter case aside) where every segment names
    one, else its place in the file (Segment0 as class 1), said; more segments than classes fit are refused."""
    check_class_count(len(segments), path)
    if classes is not None:
        by_name = {name.strip().casefold(): value for value, name in classes.names.items()}
        if all(s.name.strip().casefold() in by_name for s in segments):
            return [by_name[s.name.strip().casefold()] for s in segments]
        say_once(f"{path}: its segments ({', '.join(s.name for s in segments)}) are not all named as the classes "
                 f"({', '.join(classes.names.values())}); segment N is read as class N + 1, in the file's order "
                 "(name the segments as the classes to match them by name)", key=f"slicer-segment-order-{path}")
    return [s.index + 1 for s in segments]


def segments_as_classes(voxels: np.ndarray, layers: int, segments: tuple[Segment, ...], classes: ClassMap | None,
                        path: Path) -> np.ndarray:
    """The class of each voxel (uint8, 0 = background) of a segmentation whose ``voxels`` hold its
    ``layers`` on their last axis (no such axis for one layer); where segments overlap the later one's."""
    stacked = voxels[..., None] if layers == 1 else voxels
    label = np.zeros(stacked.shape[:-1], dtype=np.uint8)
    owner = np.full(label.shape, -1, dtype=np.int32)
    overlaps: list[str] = []
    for segment, value in zip(segments, class_values(segments, classes, path)):
        layer = stacked[..., segment.layer]
        mask = layer != 0 if segment.label_value is None else layer == segment.label_value
        shared = owner[mask]
        if (shared >= 0).any():
            under = ", ".join(segments[i].name for i in np.unique(shared[shared >= 0]))
            overlaps.append(f"{segment.name} over {under} ({np.count_nonzero(shared >= 0)} voxels)")
        label[mask], owner[mask] = value, segment.index
    if overlaps:
        say_once(f"{path}: segments overlap ({'; '.join(overlaps)}); a voxel of several segments takes the class of "
                 "the later one in the file's order", key=f"slicer-overlap-{path}")
    return label


def itk_segments_as_classes(image: sitk.Image, segments: tuple[Segment, ...], classes: ClassMap | None,
                            path: Path) -> sitk.Image:
    """``segments_as_classes`` of an image as ITK reads the file: one class image on its grid."""
    voxels = sitk.GetArrayFromImage(image)
    label = sitk.GetImageFromArray(segments_as_classes(voxels, image.GetNumberOfComponentsPerPixel(), segments,
                                                       classes, path))
    label.SetOrigin(image.GetOrigin())
    label.SetSpacing(image.GetSpacing())
    label.SetDirection(image.GetDirection())
    return label
