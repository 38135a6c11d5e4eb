"""3D Slicer's segmentation files (``<volume>.seg.nrrd``): their segments, not their voxel values, are the classes.

Slicer saves a segmentation as an NRRD whose header names each segment (``SegmentN_Name``, with its
``SegmentN_LabelValue`` and ``SegmentN_Layer``). Segments that overlap are stored in several layers:
the file is then 4D, its first axis the layers (``kinds: list domain domain domain``), which ITK reads
as voxels of several components. A segment is the voxels of its layer equal to its label value, so
one layer may hold values 1 and 7, and two layers may both use 1 for different segments: read as
plain voxel values, such a file gave wrong or missing classes, or was taken for a one-hot label.
Here each segment becomes a class by its name, the same in every case whatever the order of the
segments in each file (Slicer keeps the order each annotator added them in): the class named as the
segment (``classes.json``), or where no classes are given one class per segment name, in natural
order of the names (``classes_of_segment_names``). Where some segment names no class, segment N is
class N + 1, said, only where every file holds its segments in one order; else refused
(``segment_classes``). Where segments overlap, a voxel takes the class of the later segment in the
file's order, said, as the structure masks of a case folder do. Files written by Slicer before
layers (one binary layer per segment, no ``LabelValue``) are read the same way: a segment without a
label value is its layer's non-zero voxels. A segmentation without segments is background, said.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fewsam.data.readers.common import natural_sorted
from fewsam.data.readers.itk_volume import itk_ending, itk_reader, quiet_itk
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.labels import check_class_count
from fewsam.progress import say_once

SEGMENTATION_ENDINGS = (".nrrd", ".nhdr")


@dataclass(frozen=True)
class SegmentationKind:
    """How messages name a kind of label file whose classes are its named parts: the kind in the plural
    (``many``) and what a class is stored as in it (``part``: a segment, an RT structure set's ROI)."""

    many: str
    part: str


SLICER_SEGMENTATIONS = SegmentationKind("3D Slicer segmentations", "segment")


@dataclass(frozen=True)
class Segment:
    """One segment of a Slicer segmentation: where its voxels are (``layer``, ``label_value``; None: any
    non-zero voxel of its layer) and its ``name``, by which it is matched to a class. ``number``: the
    number the file declares for it (a DICOM SEG's SegmentNumber), which its class keeps where every
    file gives each name one number (``classes_of_segment_names``); None for Slicer's, whose order is
    only the order an annotator added them in."""

    index: int
    name: str
    layer: int
    label_value: int | None
    number: int | None = None


def segments_of(path: Path) -> tuple[Segment, ...] | None:
    """The segments a file's header names, read without its voxels: None for a file that is no Slicer
    segmentation (a plain label map, read by its values), empty for a Slicer segmentation that holds no
    segment (its header has ``Segmentation_`` fields and no ``SegmentN_`` ones), which is all background."""
    if itk_ending(path.name) not in SEGMENTATION_ENDINGS:
        return None
    reader = itk_reader(path)
    try:
        with quiet_itk(path):
            reader.ReadImageInformation()
    except RuntimeError:
        return None  # reading the voxels names what is wrong with the file
    fields = {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys() if key.startswith("Segment")}
    if not fields:
        return None
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


def segment_fields(names: dict[int, str]) -> dict[str, str]:
    """The header fields by which a label map of class indices names its classes as Slicer's segments
    (class c: the segment of label value c, named as the class): a prediction so written reads back,
    in fewsam or as a segmentation in Slicer, with the names of its classes, not as bare values."""
    fields = {"Segmentation_MasterRepresentation": "Binary labelmap",
              "Segmentation_ContainedRepresentationNames": "Binary labelmap|"}
    for n, (value, name) in enumerate(sorted(names.items())):
        fields.update({f"Segment{n}_ID": f"Segment_{value}", f"Segment{n}_Name": name,
                       f"Segment{n}_LabelValue": str(value), f"Segment{n}_Layer": "0"})
    return fields


def say_without_segments(path: Path) -> None:
    """Tell the user that a case's label is background because its segmentation holds no segment, as
    the readers read an all-empty segmentation: its voxel values name no class."""
    say_once(f"{path}: a Slicer segmentation without segments (its header names none); the case's label is "
             "background", key=f"slicer-no-segments-{path}")


def name_key(name: str) -> str:
    """What matches a segment to a class and to the segments of other cases: its name, letter case
    and surrounding spaces aside ("Liver " in one case is "liver" in another)."""
    return name.strip().casefold()


# A segment's class by its ``name_key``: the same for every case of a dataset, whatever the order
# of the segments in each file
SegmentClasses = dict[str, int]


def classes_of_segment_names(found: dict[Path, tuple[Segment, ...]]) -> dict[int, str]:
    """The classes of segmentations given no class names: one per segment name (letter case aside,
    spelled as the first file spells it), numbered in natural order of the names. The order of the
    segments in a file is no guide: Slicer keeps the order each annotator added them in, so "liver"
    would be class 1 of a dataset whose first case lists it first and class 2 of another, and a run
    fitted on one would be refused on the other; by name, the same segments give the same classes.
    Segments that declare their numbers (DICOM SEG) keep them as class values where those agree
    across the files (``_declared_numbers``)."""
    spelled: dict[str, str] = {}
    for segments in found.values():
        for segment in segments:
            spelled.setdefault(name_key(segment.name), segment.name.strip())
    declared = _declared_numbers(found, spelled)
    if declared is not None:
        return declared
    return {value: spelled[key] for value, key in enumerate(natural_sorted(spelled), start=1)}


def _declared_numbers(found: dict[Path, tuple[Segment, ...]], spelled: dict[str, str]) -> dict[int, str] | None:
    """Each name's declared number as its class value, where every segment declares one and each name
    has one number and each number one name in every file: a DICOM SEG's SegmentNumber is what a PACS
    or 3D Slicer shows, so its predictions' values match it. Where the numbering differs between files
    (segment 1 "liver" in one case, "spleen" in another), the names still match the segments across
    cases, numbered in natural order of the names (None), said once."""
    segments = [s for found_segments in found.values() for s in found_segments]
    if not segments or any(s.number is None for s in segments):
        return None
    numbers: dict[str, set[int]] = {}
    for segment in segments:
        numbers.setdefault(name_key(segment.name), set()).add(segment.number)  # type: ignore[arg-type]
    single = {key: next(iter(at)) for key, at in numbers.items() if len(at) == 1}
    if len(single) == len(numbers) and len(set(single.values())) == len(single):
        return {number: spelled[key] for key, number in sorted(single.items(), key=lambda item: item[1])}
    differing = ", ".join(repr(spelled[key]) for key in natural_sorted(numbers) if len(numbers[key]) > 1)
    say_once(f"segment numbers differ between the segmentations ({differing or 'one number, several names'}); "
             "segments are matched across cases by their names (SegmentLabel), classes numbered in natural "
             "order of the names", key="segment-numbers-differ")
    return None


def segment_classes(found: dict[Path, tuple[Segment, ...]], classes: ClassMap, where: object) -> SegmentClasses:
    """Each segment name's class across the dataset's segmentations ``found``: the class named as it
    (letter case aside). Where some segment names no class, segment N is class N + 1, said, but only
    where that reading is one for the whole dataset (each name at one place in every file, each place
    holding one name) and agrees with the segments named as classes: read file by file, "liver" would
    be class 1 in a case that lists it first and class 2 in one that lists it second. Otherwise refused,
    naming the segments that match no class (``where``: the dataset, for the message)."""
    by_name = {name_key(name): value for value, name in classes.names.items()}
    places = _places(found)
    unmatched = natural_sorted(key for key in places if key not in by_name)
    if not unmatched:
        return {key: by_name[key] for key in places}
    by_place = {key: next(iter(at)) + 1 for key, at in places.items() if len(at) == 1}
    agreed = len(by_place) == len(places) and len(set(by_place.values())) == len(by_place) and all(
        by_place[key] == by_name[key] for key in places if key in by_name)
    shown = ", ".join(repr(_spelling(found, key)) for key in unmatched[:4]) + (", ..." if len(unmatched) > 4 else "")
    class_names = ", ".join(classes.names.values())
    if not agreed:
        raise DataError(f"{where}: segment(s) {shown} name no class ({class_names}), and the segmentations do not hold "
                        "their segments in one order to match them by place (Segment0 as class 1) in every case; "
                        "name each segment as its class, or each class as its segment")
    say_once(f"{where}: segment(s) {shown} name no class ({class_names}); segment N is read as class N + 1, the "
             "segments being in one order in every case (name the segments as the classes to match them by name)",
             key=f"slicer-segment-order-{where}")
    return by_place


def _places(found: dict[Path, tuple[Segment, ...]]) -> dict[str, set[int]]:
    """Each segment name's places (its N of SegmentN) over the files ``found``."""
    places: dict[str, set[int]] = {}
    for segments in found.values():
        for segment in segments:
            places.setdefault(name_key(segment.name), set()).add(segment.index)
    return places


def _spelling(found: dict[Path, tuple[Segment, ...]], key: str) -> str:
    return next(s.name.strip() for segments in found.values() for s in segments if name_key(s.name) == key)


def class_values(segments: tuple[Segment, ...], classes: SegmentClasses | None, path: Path) -> list[int]:
    """The class of each segment: the dataset's class of its name (``segment_classes``), or without
    ``classes`` (a structure mask read as foreground only) its place in the file (Segment0 as class 1);
    more segments than classes fit are refused."""
    check_class_count(len(segments), path)
    if classes is None:
        return [s.index + 1 for s in segments]
    unknown = [s.name for s in segments if name_key(s.name) not in classes]
    if unknown:
        raise DataError(f"{path}: segment(s) {', '.join(map(repr, unknown))} were not in the file when the dataset's "
                        "classes were read (changed since?); open the dataset again")
    return [classes[name_key(s.name)] for s in segments]


def segments_as_classes(voxels: np.ndarray, layers: int, segments: tuple[Segment, ...],
                        classes: SegmentClasses | None, path: Path) -> np.ndarray:
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


def itk_segments_as_classes(image: sitk.Image, segments: tuple[Segment, ...], classes: SegmentClasses | None,
                            path: Path) -> sitk.Image:
    """``segments_as_classes`` of an image as ITK reads the file: one class image on its grid."""
    voxels = sitk.GetArrayFromImage(image)
    label = sitk.GetImageFromArray(segments_as_classes(voxels, image.GetNumberOfComponentsPerPixel(), segments,
                                                       classes, path))
    label.SetOrigin(image.GetOrigin())
    label.SetSpacing(image.GetSpacing())
    label.SetDirection(image.GetDirection())
    return label
