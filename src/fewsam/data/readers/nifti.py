"""NIfTI folders: nnU-Net v2 and MSD raw datasets, and plain ``images/`` + ``labels/`` folders.

    nnU-Net v2:  dataset.json {"labels": {"background": 0, "RV": 1}, "channel_names": {...},
                 "file_ending": ".nii.gz"}; imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz,
                 imagesTs/<case>_0000.nii.gz; 2D sets with "file_ending" ".png" (or .bmp, .tif)
                 as nnU-Net's natural-image reader takes them: one slice per file; or the training
                 cases listed in dataset.json's "dataset" ({"<case>": {"images": [channel files],
                 "label": file}}, paths relative to root or absolute), read as listed
    MSD (v1):    dataset.json {"labels": {"0": "background", "1": "left atrium"},
                 "training": [{"image": "./imagesTr/la_003.nii.gz", "label": ...}], "test": [...]};
                 imagesTr/<case>.nii.gz (possibly 4D, channels last), or nnU-Net v1's
                 imagesTr/<case>_0000.nii.gz (one file per channel) for that listed name
    plain:       images/<case>.nii.gz (or <case>_0000.nii.gz) + labels/<case>.nii.gz (or
                 <case>_seg, _gt, _label, _mask, _segmentation, 3D Slicer's .seg and -label; labels/ may
                 be absent: the images are then for prediction only); class names
                 from classes.json ({"1": "liver"}), else "class1", "class2", ... from the label
                 values found, and a Slicer segmentation's segment names (a scan of every label,
                 done on first use of ``class_map``; a Slicer segmentation's segments, in any of
                 its layers, are its classes: ``slicer_segmentation``)

Multi-channel images (nnU-Net ``_0001``..., MSD 4D, 5D vector files) are read as channel 0
only, said once: SAM sees one greyscale channel; the three channel files of a dataset.json whose
"channel_names" are R, G, B (or red, green, blue) are one colour image. Colour images are read as
a colour PNG is, as their R, G, B values: NIfTI's RGB24 (and RGBA32) voxels, and ITK's RGB files
(3 or 4 components on the 5th axis with a vector intent). Arrays are (D, H, W) = the NIfTI (x, y,
z) array transposed to (z, y, x), without reorientation; spacing is the header zooms as (z, y, x)
in mm (micrometres and metres, where the header names them, turned into mm as ITK does). A volume
whose thick voxel axis is x or y (a sagittal or coronal series stored that way) is cut along that
axis instead (``slice_axis``), as nnU-Net's 2D configuration cuts the through-plane
axis. ``meta`` keeps the image's affine, header and slice axis so predictions are written back on
the same voxel grid and orientation (a 2D image gets a 2D prediction). A 4D label of 0/1 volumes,
one per class (one-hot, as MONAI pipelines write it), is read as class indices
(``one_hot_to_indices``). A label stored in another orientation than its image is reoriented onto
the image's grid (``on_image_grid``), and one on the grid where ITK reads the image (ITK-SNAP's label of
an image with a negative pixdim, or nnU-Net's prediction for one whose qform and sform differ, which nibabel
reads elsewhere) is read voxel for voxel; a 2D colour (RGB) MetaImage or NRRD is one RGB slice.
Splits: fold 0 of ``splits_final.json`` in root if present, else naturally sorted labelled case
ids with every 5th to "val" (at least one of two or more, ``deterministic_split``); "test" =
imagesTs and every image without a label (``computed_splits``, as in every reader: a
semi-supervised fit learns from them with ``--unlabeled-split test``); without any label, "val"
holds every case. case_id = case name, rel_path = ``<case>.nii.gz``.
A NIfTI file whose name says the wrong compression (a plain file named ``.nii.gz``) is read by its
content, as ITK reads it.
MetaImage and NRRD volumes (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``) are read the same way, in
any of these layouts (``itk_volume``); their predictions keep their format (``<case>.mha``).
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import re
import zlib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import nibabel as nib
import numpy as np

from fewsam.data.readers.common import (CLASSES_JSON, Entry, IndexedDataset, NotClassIndices, Read, check_class_names,
                                        classes_json_in, computed_splits, first_line, ignore_value, is_data_file,
                                        natural_sorted, one_hot_to_indices, refuse_missing_file, to_label_array,
                                        with_ignore)
from fewsam.data.readers.itk_volume import (IMAGE_2D_ENDINGS, ITK_ENDINGS, itk_ending, itk_reader, itk_spacing,
                                            prediction_ending, quiet_itk, ras_affine, read_as_nifti)
from fewsam.data.readers.png_folder import MASK_STEM_SUFFIXES, is_image_name
from fewsam.data.readers.slicer_segmentation import (SLICER_SEGMENTATIONS, Segment, SegmentationKind, SegmentClasses,
                                                     classes_of_segment_names, name_key, say_without_segments,
                                                     segment_classes, segment_fields, segments_as_classes,
                                                     segments_of)
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.labels import MAX_LABEL_VALUE, check_class_count
from fewsam.progress import say_once

NIFTI_ENDINGS = (".nii.gz", ".nii")
DATASET_JSON = "dataset.json"  # an nnU-Net or MSD raw dataset's description: classes, channels, cases
# FreeSurfer's volumes (aseg.mgz, brain.mgz): nibabel reads them as it reads NIfTI, affine included
FREESURFER_ENDINGS = (".mgz", ".mgh")
VOLUME_ENDINGS = NIFTI_ENDINGS + FREESURFER_ENDINGS + ITK_ENDINGS  # MetaImage and NRRD volumes are read beside NIfTI
NIFTI_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)
# The dataset's class of each segment name, asked for only where a label file needs it (a Slicer
# segmentation), so that reading a plain label never starts a scan of every label
ClassSource = Callable[[], SegmentClasses | None]


def detect(root: Path) -> bool:
    return is_raw_dataset(root) or any(_nifti_files(root / "images"))


def is_raw_dataset(root: Path) -> bool:
    """An nnU-Net or MSD raw dataset: dataset.json with imagesTr/, or with nnU-Net v2's "dataset"
    object listing its cases' files (which may lie elsewhere than imagesTr/)."""
    if not (root / "dataset.json").is_file():
        return False
    if (root / "imagesTr").is_dir():
        return True
    try:
        return isinstance(_read_json(root / "dataset.json").get("dataset"), dict)
    except DataError:
        return False


class ClassesFromLabelFiles:
    """``class_map`` for datasets whose labels are NIfTI files: the explicit class names, or one
    class per label value found in the files, and one per segment name of 3D Slicer's segmentation
    files (``classes_of_segment_names``; read on first use, so opening stays cheap). A segment is
    read as its name's class in every case (``segment_classes``)."""

    _class_map: ClassMap | None
    entries: dict[str, Entry]

    @property
    def class_map(self) -> ClassMap:
        if self._class_map is None:
            segmentations = self.segmentations
            values: set[int] = set()
            for e in self.entries.values():
                if e.label is not None and e.label not in segmentations:
                    values |= _label_values_or_none(e.label)
            found = {v: f"class{v}" for v in sorted(values - {0})}
            root = getattr(self, "root", "the dataset")
            refuse_unnamed_mix(values - {0}, segmentations, self.segmentation_kind, root)
            found.update(classes_of_segment_names(segmentations))
            check_class_count(len(found), f"the label files of {getattr(self, 'root', 'the dataset')}")
            self._class_map = ClassMap(dict(sorted(found.items())))
        return self._class_map

    @class_map.setter
    def class_map(self, value: ClassMap | None) -> None:
        self._class_map = value
        self._segment_classes: SegmentClasses | None = None

    @property
    def segmentations(self) -> dict[Path, tuple[Segment, ...]]:
        """The segments of each label file that is a Slicer segmentation, from their headers (read once)."""
        found: dict[Path, tuple[Segment, ...]] | None = getattr(self, "_segmentations", None)
        if found is None:
            labels = dict.fromkeys(e.label for e in self.entries.values() if e.label is not None)
            found = {path: segments for path in labels if (segments := _segments_or_none(path)) is not None}
            self._segmentations = found
        return found

    def segmentation_kind(self, path: Path) -> SegmentationKind:
        """What kind of segmentation the label file ``path`` (one of ``segmentations``) is, for messages."""
        return SLICER_SEGMENTATIONS

    @property
    def segment_classes(self) -> SegmentClasses:
        """Each segment name's class, one for the whole dataset (``segment_classes``)."""
        if getattr(self, "_segment_classes", None) is None:
            self._segment_classes = segment_classes(self.segmentations, self.class_map,
                                                    f"the segmentations of {getattr(self, 'root', 'the dataset')}")
        return self._segment_classes  # type: ignore[return-value]

    def segments_by_class(self) -> dict[int, list[str]]:
        """The segment names (as the first file spells them) read as each class: what ``fewsam info``
        says a class is stored as, which is not its name where segments are matched by place."""
        spelled: dict[str, str] = {}
        for segments in self.segmentations.values():
            for segment in segments:
                spelled.setdefault(name_key(segment.name), segment.name.strip())
        by_class: dict[int, list[str]] = {}
        for key, value in self.segment_classes.items():
            by_class.setdefault(value, []).append(spelled[key])
        return by_class

    @property
    def labels_are_segmentations(self) -> bool:
        """Whether the labels are 3D Slicer segmentations (by the first label file), whose classes are
        named segments, in any layer and under any value, not voxel values."""
        first = next((e.label for e in self.entries.values() if e.label is not None), None)
        return first is not None and first in self.segmentations

    @property
    def storage(self) -> str | None:
        """What ``fewsam info`` says of Slicer segmentations, where "class index per voxel" would mislead."""
        if not self.labels_are_segmentations:
            return None
        return ("3D Slicer segmentations: each class a segment of its name (in any layer, under any label value); "
                "predictions: label maps of class indices on the image's grid")


def refuse_unnamed_mix(values: set[int], segmentations: dict[Path, tuple[Segment, ...]],
                       kind_of: Callable[[Path], SegmentationKind], root: object) -> None:
    """Refuse plain label maps beside segmentations (3D Slicer's, DICOM SEG objects, RT structure sets: each
    file's ``kind_of``) where no classes.json says which value is which segment: the segmentations' classes
    are numbered by segment name, and a plain map's value 1 (Slicer exports label maps in the order segments
    were added) need not be the first name, so the same organ would be two classes, or two organs one."""
    if not values or not segmentations:
        return
    by_kind: dict[SegmentationKind, set[str]] = {}
    for path, segments in segmentations.items():
        by_kind.setdefault(kind_of(path), set()).update(segment.name.strip() for segment in segments)
    kinds = " and ".join(f"{kind.many} ({kind.part}s {_first_names(names)})" for kind, names in by_kind.items())
    parts = " or ".join(dict.fromkeys(kind.part for kind in by_kind))
    names = sorted(set().union(*by_kind.values()))
    example = ", ".join(f'"{v}": "{name}"' for v, name in zip(sorted(values), names[:2]))
    raise DataError(f"the labels of {root} mix {kinds} with plain label maps (values "
                    f"{', '.join(map(str, sorted(values)[:6]))}), and no file says which value is which {parts}: "
                    f"name the classes by value in {Path(str(root)) / 'classes.json'} ({{{example}, ...}}), or give "
                    "every case one kind of label file")


def _first_names(names: set[str]) -> str:
    shown = sorted(names)
    return ", ".join(map(repr, shown[:4])) + (", ..." if len(shown) > 4 else "")


def _segments_or_none(path: Path) -> tuple[Segment, ...] | None:
    """The segments of a Slicer segmentation file (``segments_of``); None for other files, and for a
    damaged header, named in the log as ``_label_values_or_none`` names a damaged label."""
    try:
        return segments_of(path)
    except DataError as err:
        say_once(f"class scan: {err}; its segments are left out of the classes found", key=f"class-scan-{path}")
        return None


def _label_values_or_none(path: Path) -> set[int]:
    """The values in one label file; an unreadable file adds none and is named in the log, so a
    damaged label stops only the commands that read that case's label (fit, evaluate), which then
    say why, and not prediction or embedding, which never need it. A label whose values are no class
    indices (``NotClassIndices``) stops the scan: left out, its classes would be missing from every
    command's, and a fit would learn without them until it loaded that label."""
    try:
        return {int(v) for v in np.unique(_label_array(path))}
    except NotClassIndices:
        raise
    except DataError as err:
        say_once(f"class scan: {err}; its values are left out of the classes found", key=f"class-scan-{path}")
        return set()


class NiftiDataset(ClassesFromLabelFiles, IndexedDataset):
    layout = "nifti"
    format = "nifti"

    def new_label_rel_path(self, entry: Entry) -> str:
        """Where the reader looks for a case's label: ``labelsTr/<case>`` for an image in ``imagesTr/``
        (nnU-Net; ``labelsTs/`` for ``imagesTs/``), ``labels/<case>`` otherwise, with its prediction's ending."""
        labels = {"imagestr": "labelsTr", "imagests": "labelsTs",
                  "imagesva": "labelsVa"}.get(Path(entry.image).parent.name.lower())
        return f"{labels}/{Path(entry.rel_path).name}" if labels else f"labels/{entry.rel_path}"

    def __init__(self, root: Path, class_map: ClassMap | None, entries: list[Entry],
                 test_ids: list[str], colour_channels: bool = False, val_ids: tuple[str, ...] = ()) -> None:
        self._class_map = class_map
        self.colour_channels = colour_channels
        super().__init__(root, class_map, entries)  # type: ignore[arg-type]
        self.check_label_values = class_map is not None
        self.splits = computed_splits(entries, test_ids)
        named = root / "splits_final.json"
        self.computed_splits = () if named.is_file() else ("train", "val")
        val = [case for case in val_ids if case not in self.splits.get("test", [])]
        if val:  # the data names its validation cases (dataset.json's "validation", as AMOS lists imagesVa/)
            training = self.splits.get("train", []) + self.splits.get("val", [])
            self.splits.update(train=natural_sorted(c for c in training if c not in val), val=val)
            self.computed_splits = ()
        if named.is_file() and "train" in self.splits:
            self.splits.update(_read_splits(named))
        for ids in self.splits.values():
            self.check_known(ids, str(root / "splits_final.json"))

    @property
    def ignore_file(self) -> str | None:  # type: ignore[override]
        """nnU-Net's dataset.json names its "ignore" label among its labels; a plain folder's classes.json.
        None where labels are 3D Slicer segmentations, whose voxels outside every segment are background."""
        if self.segmentations:
            return None
        return DATASET_JSON if is_raw_dataset(self.root) else CLASSES_JSON

    def num_slices(self, case_id: str) -> int:
        shape, zooms = _shape_and_zooms(self._entry(case_id).image)
        return int(shape[slice_axis(shape, zooms)])

    def _read(self, entry: Entry) -> Read:
        img, itk_geometry = _load_with_geometry(entry.image)
        if entry.frame is not None:
            img = time_frame(img, entry.frame, entry.image)
        zooms = _zooms(img, entry.image)
        if not itk_geometry:
            say_sizes_disagree(entry.image, img)
        axis = slice_axis(img.shape, zooms)
        if axis != 2 and img.shape[axis] > 1:  # one voxel thick (a 2D image stored (x, 1, z)): nothing to say
            say_once(f"{entry.image}: voxels are {zooms[axis]:g} mm thick along NIfTI axis {'xy'[axis]} "
                     f"(z: {zooms[2]:g} mm), so its slices are cut along {'xy'[axis]}, the acquisition's "
                     "slice direction; predictions are written back on the input's grid",
                     key=f"nifti-slice-axis-{axis}")
        rgb = itk_geometry.get("components") in (3, 4) if itk_geometry else _is_colour(img)
        image, dropped = _image_array(img, entry.image, axis, rgb)
        if self.colour_channels and image.ndim == 3:
            image, dropped = _colour_from_channel_files(entry, image, axis), 0
        label = None if entry.label is None else _label_array(entry.label, axis, img, lambda: self.segment_classes,
                                                              entry.frame)
        stored_pixdim = None if itk_geometry else negative_pixdim(entry.image, img.header)
        meta = {"affine": img.affine.copy(), "header": img.header.copy(), "channels_dropped": dropped,
                "slice_axis": axis, "itk": self._with_segment_fields(itk_geometry),
                "stored_pixdim": stored_pixdim,
                "viewer_affine": None if itk_geometry else viewer_affine(entry.image, img.header, stored_pixdim)}
        spacing = tuple(zooms[a] for a in slice_order(axis))
        return Read(image=image, label=label, spacing=spacing, meta=meta)  # type: ignore[arg-type]

    def _with_segment_fields(self, geometry: dict[str, Any] | None) -> dict[str, Any] | None:
        """An NRRD case's geometry with the header fields that name its prediction's classes as Slicer
        segments (``segment_fields``), where the dataset's labels are Slicer segmentations: its
        classes are names, not values, and a prediction read back (as a label, or in Slicer) keeps them."""
        if not geometry or geometry.get("ending") != ".nrrd" or not self.labels_are_segmentations:
            return geometry
        return {**geometry, "fields": segment_fields(self.class_map.names)}


def volume_ending(name: str) -> str | None:
    """The ending of a volume file name, in lower case whatever the name's letter case (scanner
    exports and Windows tools write ``CASE.NII.GZ``, ``IMG.MHA``), or None for other files."""
    lower = name.lower()
    return next((e for e in NIFTI_ENDINGS + FREESURFER_ENDINGS if lower.endswith(e)), None) or itk_ending(name)


def _nifti_files(folder: Path, ending: str = "") -> list[Path]:
    """The volumes in ``folder``; 2D images (``.png``...) only where ``ending`` names them."""
    if not folder.is_dir():
        return []

    def wanted(name: str) -> bool:
        found = volume_ending(name)
        return bool(found) and (found not in IMAGE_2D_ENDINGS or found == ending) and not name.startswith(".")

    return natural_sorted((p for p in folder.iterdir() if wanted(p.name)), key=lambda p: p.name)


def case_name(path: Path | str) -> str:
    name = Path(path).name
    ending = volume_ending(name)
    return name[: -len(ending)] if ending else name


def files_by_name(folder: Path, ending: str = "") -> dict[str, Path]:
    """The volume files in ``folder`` (as ``_nifti_files`` finds them) keyed by their name with the
    ending in lower case (``A.NII.GZ`` as ``A.nii.gz``), so a label is found whatever the letter
    case of its ending; a name spelled in lower case wins over another spelling of it."""
    found: dict[str, Path] = {}
    for path in _nifti_files(folder, ending):
        key = case_name(path) + (volume_ending(path.name) or "")
        if key not in found or path.name == key:
            found[key] = path
    return found


def _load(path: Path) -> Any:
    return _load_with_geometry(path)[0]


def stored_values(path: Path) -> np.ndarray:
    """A volume file's voxels as stored (its header's scaling applied), in file order: what the file holds,
    before any reading as an image or a label."""
    return _data(_load(path), path)


def _load_with_geometry(path: Path) -> tuple[Any, dict[str, Any] | None]:
    """The file as a NIfTI image, and for MetaImage / NRRD files the ITK geometry to write back on."""
    image, geometry = _read_volume_file(path)
    refuse_no_voxels(image, path)
    return image, geometry


def refuse_no_voxels(image: Any, path: Path) -> None:
    """A volume with an axis of no voxels (a crop or an export that went wrong) has no slice to segment:
    `fewsam info` counted it as a case of 0 slices without a word, and the fit refused it with an
    unrelated shape."""
    if 0 in image.shape:
        raise DataError(f"{path} holds no voxels (its header gives the shape {' x '.join(map(str, image.shape))}); "
                        "re-export it, or move it out of the dataset")


def _read_volume_file(path: Path) -> tuple[Any, dict[str, Any] | None]:
    refuse_missing_file(path, "restore it or fix dataset.json")
    if itk_ending(path.name):
        return read_as_nifti(path)
    try:
        with repairs_said_once(path):
            return nib.load(str(path)), None
    except NIFTI_ERRORS as err:
        image = _by_content(path)
        if image is None:
            raise DataError(f"cannot read NIfTI {path} (truncated or not NIfTI?): {first_line(err)}") from None
    say_once(f"{path}: its name says {'gzip' if path.name.lower().endswith('.gz') else 'no'} compression and its "
             "content differs (a renamed file); it is read by its content", key="nifti-misnamed")
    return image, None


def negative_pixdim(path: Path, header: Any) -> tuple[float, float, float] | None:
    """The voxel sizes (pixdim[1..3]) as ``path`` stores them where one is negative, else None.

    nibabel reads a negative size as its absolute value (and says so), while ITK, and so 3D Slicer
    and ITK-SNAP, flips that axis: a prediction written with nibabel's positive sizes lay mirrored
    over its image there; written back as stored, it lies where each tool puts its image. Other
    headers (FreeSurfer's MGH) store no pixdim: None."""
    if not isinstance(header, nib.Nifti1Header):
        return None
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            stored = type(header).from_fileobj(f, check=False)["pixdim"][1:4]
    except (*NIFTI_ERRORS, nib.spatialimages.HeaderDataError, nib.wrapstruct.WrapStructError):
        return None
    sizes = stored != 0  # nibabel reads a size of 0 as 1
    # a misnamed file (``_by_content``) opened by its name gives bytes that are no header: other sizes
    if not (stored < 0).any() or not np.allclose(np.abs(stored[sizes]), header["pixdim"][1:4][sizes]):
        return None
    return tuple(float(v) for v in stored)  # type: ignore[return-value]


def viewer_affine(path: Path, header: Any, stored_pixdim: tuple[float, float, float] | None) -> np.ndarray | None:
    """The image's affine as ITK reads it (``itk_affine``) where its header lets ITK place it elsewhere
    than nibabel, else None (no second read of the header). Labels and predictions that ITK-based
    tools (ITK-SNAP, 3D Slicer, nnU-Net's SimpleITK reader) save lie on ITK's grid: ITK flips an axis of
    negative pixdim (``negative_pixdim``), of a qform and an sform that differ takes the qform
    unless the sform's code is "scanner", where nibabel takes the sform, and places a header of neither
    (``no_forms``) elsewhere than nibabel."""
    if stored_pixdim is not None or forms_differ(header) or no_forms(header):
        return itk_affine(path)
    return None


def no_forms(header: Any) -> bool:
    """Whether a NIfTI header holds neither a qform nor an sform (both codes 0: an array saved without an
    affine, or an old converter's output). nibabel then centres the voxels on the world's origin with x
    mirrored, ITK puts the first voxel at the origin in LPS: a prediction nnU-Net or a SimpleITK script
    saved for such an image lies on ITK's grid, mirrored in y and shifted against nibabel's."""
    return isinstance(header, nib.Nifti1Header) and header["qform_code"] == 0 and header["sform_code"] == 0


def forms_differ(header: Any) -> bool:
    """Whether a NIfTI header holds a qform and an sform (both codes set) that place the voxels apart."""
    if not isinstance(header, nib.Nifti1Header) or not (header["qform_code"] > 0 and header["sform_code"] > 0):
        return False
    return not _same_affine(header.get_qform(), header.get_sform())


GZIP_MAGIC = b"\x1f\x8b"
NIFTI2_HEADER_SIZE = 540  # a NIfTI header starts with its size: 348 for NIfTI-1, 540 for NIfTI-2


def _by_content(path: Path) -> Any:
    """A NIfTI file whose name says the wrong compression, read by its content: an uncompressed file
    named ``.nii.gz`` (renamed by hand or by a download) or a gzipped one named ``.nii``. ITK, and so
    nnU-Net and the viewers, read such files; None when the content is no NIfTI either. nibabel's checks of
    what it takes for a header print their repairs of it (``sizeof_hdr should be 348``) on stderr: silenced
    here, where the content is only probed, so a file that is no NIfTI ends in the one line that says so."""
    try:
        data = path.read_bytes()
        if data[:2] == GZIP_MAGIC:
            data = gzip.decompress(data)
    except PermissionError:
        raise  # no fault of the content: the command names the file it may not read, not "truncated?"
    except (OSError, EOFError, zlib.error):
        return None
    nifti2 = NIFTI2_HEADER_SIZE in (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big"))
    try:
        with nibabel_silenced():
            return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(data)
    except (*NIFTI_ERRORS, nib.spatialimages.HeaderDataError, nib.wrapstruct.WrapStructError):
        return None


_READING: ContextVar[Path | None] = ContextVar("nifti_reading", default=None)  # the file fewsam's nib.load reads


class _RepairsSaidOnce(logging.Filter):
    """nibabel prints each repair of a header it reads (``pixdim[1,2,3] should be non-zero; setting 0 dims to 1``)
    on stderr, once for every file: a dataset of such files buried the commands' own lines, and their one
    `error:` line, under hundreds of them. While fewsam reads a file (``repairs_said_once``) each kind of repair
    is said once instead, as fewsam's notes are, naming the file; nibabel's other users hear it as before."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = _READING.get()
        if path is None:
            return True
        if record.levelno >= nib.imageglobals.error_level:  # raised next: the command's error line says it
            return False
        message = record.getMessage()
        say_once(f"{path}: {message} (nibabel's repair of its header; said for the first such file)",
                 key=f"nibabel-repair-{message}")
        return False


_REPAIRS_SAID_ONCE = _RepairsSaidOnce()
if _REPAIRS_SAID_ONCE not in nib.imageglobals.logger.filters:
    nib.imageglobals.logger.addFilter(_REPAIRS_SAID_ONCE)


@contextmanager
def repairs_said_once(path: Path) -> Iterator[None]:
    """nibabel's repairs of ``path``'s header, read inside, said once per kind (``_RepairsSaidOnce``)."""
    token = _READING.set(path)
    try:
        yield
    finally:
        _READING.reset(token)


@contextmanager
def nibabel_silenced() -> Iterator[None]:
    """nibabel's header checks say nothing inside (their errors still raise): its logger prints on its own
    handler and, through the root logger, on any handler a caller set up: disabling it silences both."""
    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _shape_and_zooms(path: Path) -> tuple[tuple[int, int, int], list[float]]:
    """Voxel counts and sizes along x, y, z from the file's header alone (no voxels read)."""
    if itk_ending(path.name) and path.is_file():
        reader = itk_reader(path)
        try:
            with quiet_itk(path):
                reader.ReadImageInformation()
        except RuntimeError:
            return _shape_and_zooms_of(_load(path), path)  # the full read names the problem
        size, spacing = list(reader.GetSize()) + [1, 1], list(itk_spacing(path, reader.GetSpacing())) + [1.0, 1.0]
        zooms = [float(f"{z:.7g}") for z in spacing[:3]]
        refuse_sizes_not_finite(path, zooms)
        return tuple(size[:3]), zooms  # type: ignore[return-value]
    img = _load(path)
    say_sizes_disagree(path, img)  # `fewsam info` counts slices by these sizes and reads no case
    return _shape_and_zooms_of(img, path)


def _shape_and_zooms_of(img: Any, path: Path) -> tuple[tuple[int, int, int], list[float]]:
    shape = tuple(img.shape[:3]) + (1,) * (3 - len(img.shape[:3]))
    return shape, _zooms(img, path)  # type: ignore[return-value]


ANISOTROPY = 1.5  # how much thicker than z a voxel axis must be to become the slice axis


def _zooms(img: Any, path: Path) -> list[float]:
    """The header's x, y, z voxel sizes in mm (1.0 where the file has fewer axes), from the unit the
    header names (``xyzt_units``): a file in micrometres (microscopy, small-animal scanners) or metres
    holds its voxel sizes in that unit, which ITK, and so 3D Slicer and ITK-SNAP, turn into mm;
    taken as mm, distances (HD95, ASD) came out 1000 times too large or small."""
    units = getattr(img.header, "get_xyzt_units", None)  # FreeSurfer's MGH header names no unit: mm
    scale = MM_PER_UNIT.get(str(units()[0]), 1.0) if units else 1.0
    # Headers store float32: 1.4 reads as 1.39999998; 7 significant digits give 1.4 back.
    zooms = ([float(f"{z * scale:.7g}") for z in img.header.get_zooms()[:3]] + [1.0] * 3)[:3]
    refuse_sizes_not_finite(path, zooms)
    return zooms


def refuse_sizes_not_finite(path: Path, zooms: list[float]) -> None:
    """A header whose voxel size is NaN, infinite or 0 (a damaged or hand-made header; ITK reads a
    MetaImage's NaN spacing as 0) has no geometry: such a size made its axis the slice direction (a
    volume cut into hundreds of thin slices), and a NaN one failed only when the prediction, made at
    length, was written on that affine."""
    if not all(np.isfinite(zooms)) or min(zooms) <= 0:
        raise DataError(f"{path}: its header gives voxel sizes of {_sizes(np.asarray(zooms))} mm, not finite "
                        "positive numbers, so its slice direction and distances are unknown; rewrite the header's "
                        "voxel sizes (pixdim, spacing), e.g. by saving the volume again in 3D Slicer or ITK-SNAP")


MM_PER_UNIT = {"meter": 1000.0, "micron": 0.001}  # nibabel's names of NIfTI's spatial units; mm and unknown: 1


SIZE_TOLERANCE = 1e-3  # relative: headers store float32, so one size written twice may differ this much


def say_sizes_disagree(path: Path, img: Any) -> None:
    """Say once where a NIfTI header's voxel sizes (pixdim) differ from its sform's (a converter that
    wrote the sform alone, leaving pixdim 0, which reads as 1, or stale). The header's are used for
    distances (HD95, ASD) and the slice direction, as ITK (3D Slicer, ITK-SNAP, nnU-Net) reads such a
    file; viewers built on nibabel show the sform's. Taken silently, the scores' millimetres were
    not the ones the user's viewer shows."""
    header = img.header
    if not isinstance(header, nib.Nifti1Header) or header["sform_code"] <= 0:
        return
    axes = min(3, len(img.shape))
    stored = np.asarray(header.get_zooms()[:axes], dtype=np.float64)
    sform = nib.affines.voxel_sizes(header.get_sform())[:axes]
    if np.allclose(stored, sform, rtol=SIZE_TOLERANCE, atol=0):
        return
    say_once(f"{path}: its header's voxel sizes ({_sizes(stored)} mm; a stored 0 reads as 1) differ from its "
             f"sform's ({_sizes(sform)} mm); fewsam takes the header's, as ITK (3D Slicer, ITK-SNAP, nnU-Net) "
             "does, for distances (HD95, ASD) and the slice direction; rewrite the header if the sform's are "
             "right", key="nifti-sizes-disagree")


def _sizes(values: np.ndarray) -> str:
    """Voxel sizes as '0.5 x 0.5 x 3'."""
    return " x ".join(f"{v:.4g}" for v in values)


def slice_axis(shape: tuple[int, ...], zooms: list[float]) -> int:
    """The NIfTI array axis to cut 2D slices along.

    NIfTI z unless x or y is clearly the thick axis (``ANISOTROPY`` times z's voxel size): a
    sagittal or coronal acquisition stored with its slices along x or y is then segmented in its
    own high-resolution planes, as its annotators drew it, instead of across them. A single-voxel
    axis (one slice) is always the slice axis; isotropic or unknown spacing keeps z.
    """
    dims = (tuple(shape[:3]) + (1, 1, 1))[:3]
    single = [a for a in (2, 1, 0) if dims[a] == 1]
    if single:
        return single[0]
    thick = max((0, 1), key=lambda a: zooms[a])
    return thick if zooms[thick] >= ANISOTROPY * zooms[2] else 2


def slice_order(axis: int) -> tuple[int, int, int]:
    """The transpose that puts NIfTI ``axis`` first and the other two after it, higher first:
    (z, y, x) for the usual axis 2."""
    return (axis, *(a for a in (2, 1, 0) if a != axis))  # type: ignore[return-value]


def to_slices(array: np.ndarray, axis: int = 2) -> np.ndarray:
    """NIfTI (x, y[, z]) -> (slices, rows, cols) cut along ``axis``; a 2D NIfTI becomes one slice."""
    if array.ndim == 2:
        array = array[..., None]
    return np.ascontiguousarray(array.transpose(slice_order(axis)))


def from_slices(array: np.ndarray, axis: int = 2) -> np.ndarray:
    """The inverse of ``to_slices``: (slices, rows, cols) back to the NIfTI (x, y, z) array."""
    return array.transpose(np.argsort(slice_order(axis)))


def _data(img: Any, path: Path, dtype: Any = None) -> np.ndarray:
    try:
        if not dtype:
            return np.asarray(img.dataobj)
        if np.dtype(img.get_data_dtype()).kind not in "biuf":
            raise DataError(f"{path}: voxel type {img.get_data_dtype()} is not a greyscale image; "
                            "store real numbers")
        with np.errstate(over="raise"):
            return img.get_fdata(dtype=np.float32)
    except FloatingPointError:
        raise DataError(f"{path}: the image holds values beyond float32's range; rescale it") from None
    except NIFTI_ERRORS as err:
        raise DataError(f"cannot read NIfTI {path} (truncated?): {first_line(err)}") from None


RGB_FIELDS = ("R", "G", "B")  # nibabel's names of an RGB24 / RGBA32 voxel's fields
COLOUR_INTENTS = ("vector", "rgb vector", "rgba vector")  # nibabel's names of NIfTI intents 1007, 2003, 2004


def _is_colour(img: Any) -> bool:
    """Whether a NIfTI image holds colour voxels, to be read as a colour PNG is (R, G, B channels):
    an RGB24 or RGBA32 voxel type, or a vector of 3 or 4 components on the 5th axis with a vector
    intent, as ITK (and so SimpleITK, 3D Slicer, MONAI) writes an RGB image. A vector of another
    length (a 2-component field, say) is no colour: it is read as a 4D file's channels are."""
    shape = img.shape
    return _colour_fields(img) or (len(shape) == 5 and shape[3] == 1 and shape[4] in (3, 4)
                                   and img.header.get_intent()[0] in COLOUR_INTENTS)


def _colour_fields(img: Any) -> bool:
    names = np.dtype(img.get_data_dtype()).names or ()
    return all(f in names for f in RGB_FIELDS)


def _image_array(img: Any, path: Path, axis: int, rgb: bool = False) -> tuple[np.ndarray, int]:
    """(slices, rows, cols) float32, or (slices, rows, cols, 3) for an ``rgb`` image (``_is_colour``,
    or ITK RGB or RGBA pixels): its R, G, B values as a colour PNG's are, alpha left out; the
    number of 4th-axis volumes left out."""
    if _colour_fields(img):  # RGB24 / RGBA32: (x, y, z) voxels of named fields, channels last
        raw = _data(img, path)
        data = np.stack([raw[f] for f in RGB_FIELDS], axis=-1).astype(np.float32)
        data = data if data.ndim == 4 else data[:, :, None, :]  # a 2D colour image: one slice
    else:
        data = without_time_axis(_data(img, path, np.float32))
    dropped = 0
    if rgb and data.ndim == 4:
        channels = [to_slices(data[..., c], axis) for c in range(3)]
        return np.stack(channels, axis=-1).astype(np.float32, copy=False), 0
    if data.ndim == 4:
        data, dropped = data[..., 0], data.shape[3] - 1
        if dropped and len(img.shape) == 5:  # components on the 5th axis: a vector image neither RGB nor RGBA
            say_once(f"{path} holds {dropped + 1} components per voxel (a vector image on its 5th axis, not RGB): "
                     "fewsam segments the first component of each such file; export the component you want as a "
                     "3D file", key="nifti-vector")
        elif dropped:
            say_once(f"{path} holds {dropped + 1} volumes along its 4th axis (time frames or channels): fewsam "
                     "segments the first of each such file; export the frame or channel you want as a 3D file",
                     key="nifti-4d")
    if data.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2D, 3D or 4D (channels last) image, got {data.shape}")
    return to_slices(data, axis).astype(np.float32, copy=False), dropped


COLOUR_CHANNEL_NAMES = (("r", "g", "b"), ("red", "green", "blue"))


def names_colour_channels(spec: dict[str, Any]) -> bool:
    """Whether dataset.json names a case's three channels R, G, B (or red, green, blue): nnU-Net's
    natural-image datasets, whose colour is then in one RGB file or in three channel files; fewsam
    reads either as one colour image, as a colour PNG is (SAM sees colour), not channel 0 alone."""
    names = spec.get("channel_names", spec.get("modality"))
    if not isinstance(names, dict) or len(names) != 3:
        return False
    ordered = tuple(str(names.get(str(c), names.get(c, ""))).strip().lower() for c in range(3))
    return ordered in COLOUR_CHANNEL_NAMES


def _colour_from_channel_files(entry: Entry, red: np.ndarray, axis: int) -> np.ndarray:
    """(slices, rows, cols, 3): the R channel ``red`` (read from the case's channel 0 file) with the
    G and B channels of its next two files (``_0001`` and ``_0002``, or as dataset.json lists them),
    which must each hold one grey image of its size."""
    channel0 = entry.image
    channels = [red]
    for c in (1, 2):
        path = _other_channel(entry, c)
        if path is None or not path.is_file():
            raise DataError(f"{channel0}: dataset.json names the channels R, G, B, and the case has no "
                            f"{'_0001/_0002 channel files' if path is None else path.name}; store its colour "
                            "in one RGB file or in the three channel files _0000, _0001, _0002")
        data, _ = _image_array(_load(path), path, axis)
        if data.shape != red.shape:
            raise DataError(f"{path}: its channel is {data.shape[1:]} in {data.shape[0]} slice(s), the case's "
                            f"R channel ({channel0.name}) {red.shape[1:]} in {red.shape[0]}; the three colour "
                            "channels of a case must be images of one size")
        channels.append(data)
    return np.stack(channels, axis=-1)


def _other_channel(entry: Entry, channel: int) -> Path | None:
    """The file of a case's ``channel`` (1, 2, ...): as dataset.json lists it, else named as nnU-Net
    names it (``<case>_0001``); None where neither can be."""
    if entry.channels:
        return entry.channels[channel - 1] if channel <= len(entry.channels) else None
    return _channel_file(entry.image, channel) if case_name(entry.image).endswith("_0000") else None


def time_frame(img: Any, frame: int, path: Path) -> Any:
    """Time frame ``frame`` (0 = the first) of a 4D file as a 3D image on the file's spatial affine: the case
    of a cine whose label is drawn on some of its frames (M&Ms, ``cine_frames``), which its first volume is not.
    A 3D file holds one frame, frame 0."""
    frames = img.shape[3] if len(img.shape) > 3 else 1
    if not 0 <= frame < frames:
        raise DataError(f"{path}: no time frame {frame} (0 = the first): the file holds {frames}; correct the "
                        "frame numbers (ED, ES) given for it")
    return img.slicer[:, :, :, frame] if len(img.shape) > 3 else img


def without_time_axis(data: np.ndarray) -> np.ndarray:
    """A multi-component NIfTI as ITK, SimpleITK and MONAI write it, (x, y, z, 1, channels) (the
    standard puts vector components on the 5th axis, after a time axis of one), as (x, y, z,
    channels); its channels are then read as a 4D file's volumes are."""
    return data[:, :, :, 0] if data.ndim == 5 and data.shape[3] == 1 else data


def _label_array(path: Path, axis: int = 2, image: Any = None, classes: ClassSource | None = None,
                 frame: int | None = None) -> np.ndarray:
    """A label file as (slices, rows, cols) uint8, on ``image``'s voxel grid when given; a Slicer
    segmentation's segments as the ``classes`` of their names (``segments_as_classes``); of a label over
    time frames, its ``frame`` (``time_frame``)."""
    label, geometry = _load_with_geometry(path)
    if frame is not None:
        label = time_frame(label, frame, path)
    segments = segments_of(path)
    if segments is not None:
        label = segments_as_label(label, geometry, segments, classes() if classes else None, path, image)
    data = without_time_axis(_data(label if image is None else on_image_grid(label, image, path), path))
    if data.ndim == 4:
        data = data[..., 0] if data.shape[3] == 1 else one_hot_to_indices(data, path)
    if data.ndim not in (2, 3):
        raise DataError(f"{path}: a label must be 2D or 3D, got shape {data.shape}")
    return to_slices(to_label_array(data, path), axis)


def segments_as_label(label: Any, geometry: dict[str, Any] | None, segments: tuple[Segment, ...],
                       classes: SegmentClasses | None, path: Path, image: Any = None) -> Any:
    """A Slicer segmentation (its layers on the 4th axis where it has several) as one 3D label of
    class indices on its grid, which is then placed on its image's as any label is. A file of one
    voxel is how Slicer saves a segmentation whose segments are all empty (its geometry then means
    nothing, so it lay nowhere on its image and was refused): background on ``image``'s grid. A
    segmentation without any segment has no class in its voxels either: background, said."""
    if not segments:
        say_without_segments(path)
        shape = tuple(image.shape[:3]) if image is not None else tuple(label.shape[:3])
        return nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), image.affine if image is not None else label.affine)
    if int(np.prod(label.shape[:3])) == 1 and image is not None:
        say_once(f"{path}: a Slicer segmentation of one voxel, as Slicer saves one whose segments are empty; "
                 "the case's label is background", key=f"slicer-empty-{path}")
        return nib.Nifti1Image(np.zeros(tuple(image.shape[:3]), dtype=np.uint8), image.affine)
    layers = geometry.get("components", 1) if geometry else 1
    data = segments_as_classes(np.asarray(label.dataobj), layers, segments, classes, path)
    return nib.Nifti1Image(data, label.affine)


AFFINE_TOLERANCE = 1e-3  # mm: NIfTI headers store float32, so one grid written twice may differ this much


def on_image_grid(label: Any, image: Any, path: Path, what: str = "label") -> Any:
    """``label`` with its voxels in ``image``'s axis order and orientation (``image``: anything
    with the image's ``shape`` and ``affine``; ``what`` names the file in messages: "label", or
    "prediction" for one another tool wrote).

    Arrays are read without reorientation, so a label saved in another orientation (flipped, or
    with its axes swapped, as some converters and viewers write them) would otherwise lie
    mirrored or transposed under its image. Such a label is reoriented when that puts it exactly
    on the image's grid, as a viewer overlays it; one covering part of that grid (a crop, see
    ``_inside_grid``) is placed there. One in the image's orientation but placed
    elsewhere (another origin) is read voxel for voxel, said once; one whose orientation
    cannot be matched to the image's (a label written with a bare identity affine, say) is
    refused, as no reading of it is safe. A 2D label or image is matched as one slice of depth 1."""
    if _same_affine(label.affine, image.affine):
        return label
    label, image = _one_slice_deep(label), _one_slice_deep(image)
    if _viewers_overlay(label, path, image):
        say_once(f"{path}: the {what}'s header places it elsewhere than its image as nibabel reads them, but where "
                 "ITK (3D Slicer, ITK-SNAP, nnU-Net) places the image (a negative voxel size or qfac in one of "
                 "them, or an image whose qform and sform differ or that has neither, as ITK-SNAP and nnU-Net save "
                 "a label of such an image); it is read voxel for voxel on the image's grid",
                 key=f"nifti-{what}-viewer-geometry")
        return label
    try:
        turn = nib.orientations.ornt_transform(nib.orientations.io_orientation(label.affine),
                                               nib.orientations.io_orientation(image.affine))
    except ValueError:  # an affine with a zero or NaN axis (a damaged header) has no orientation
        raise DataError(f"{what} {path} and its image have affines that are not both orientations (a zero or NaN "
                        f"axis), so its voxels cannot be matched to the image's; save the {what} with the image's "
                        "affine") from None
    turned = label.as_reoriented(turn)
    if turned.shape[:3] == image.shape[:3] and _same_affine(turned.affine, image.affine):
        say_once(f"{path}: the {what} is stored in another orientation than its image "
                 f"({''.join(nib.aff2axcodes(label.affine))} vs {''.join(nib.aff2axcodes(image.affine))}); "
                 "it is reoriented onto the image's voxel grid", key=f"nifti-{what}-reoriented")
        return turned
    cropped = _inside_grid(turned, image)
    if cropped is not None and _unturned(turn) and turned.shape[:3] == image.shape[:3]:
        say_once(f"{path}: the {what}'s affine differs from its image's by less than a hundredth of a voxel (the "
                 "rounding of a header written again); it is read voxel for voxel on the image's grid",
                 key=f"nifti-{what}-rounded")
        return cropped
    if cropped is not None:
        say_once(f"{path}: the {what} covers part of its image's voxel grid (saved on its own extent, as 3D Slicer "
                 "saves segmentations); it is placed there, background elsewhere", key=f"nifti-{what}-cropped")
        return cropped
    if _unturned(turn):
        say_once(f"{path}: the {what}'s affine differs from its image's (another origin or spacing) in the "
                 "same orientation; it is read voxel for voxel on the image's grid", key=f"nifti-{what}-affine")
        return label
    raise DataError(f"{what} {path} is oriented {''.join(nib.aff2axcodes(label.affine))} and placed elsewhere "
                    f"than its image ({''.join(nib.aff2axcodes(image.affine))}), so its voxels cannot be matched "
                    f"to the image's; save the {what} with the image's affine (as nnU-Net and the viewers expect)")


def _unturned(turn: np.ndarray) -> bool:
    """Whether an orientation transform (``ornt_transform``) keeps every axis as it is."""
    return bool((turn[:, 0] == np.arange(3)).all() and (turn[:, 1] == 1).all())


def _one_slice_deep(volume: Any) -> Any:
    """A 2D image or label (x, y) as one slice (x, y, 1) on its affine, else itself: read as they are
    stored, a 2D prediction that a RAS pipeline (MONAI's Orientation) saved mirrored against its image
    was scored mirrored without a word. ``volume``: a NIfTI-like image, or an image's ``Grid``."""
    if len(volume.shape) != 2:
        return volume
    if isinstance(volume, Grid) or not hasattr(volume, "dataobj"):
        return Grid((*volume.shape, 1), volume.affine)
    return nib.Nifti1Image(np.asarray(volume.dataobj)[..., None], volume.affine)


def _viewers_overlay(label: Any, path: Path, image: Any) -> bool:
    """Whether ITK reads ``label`` on the grid where it reads ``image`` (the same shape and world
    geometry). nibabel reads a negative pixdim as positive, ITK as a flipped axis: a label drawn in
    ITK-SNAP on an image stored that way is saved with the image's geometry as ITK reads it, and so
    differs from the image as nibabel reads it, although viewers overlay the two voxel for voxel."""
    viewer = _viewer_affine(image)
    if viewer is None or tuple(label.shape[:3]) != tuple(image.shape[:3]) or not isinstance(path, Path):
        return False
    label_viewer = itk_affine(path)
    return label_viewer is not None and _same_affine(label_viewer, viewer)


def _viewer_affine(image: Any) -> np.ndarray | None:
    """``image``'s affine as ITK reads its file (``Grid.viewer_affine``, else its file's header), or None."""
    if isinstance(image, Grid):
        return image.viewer_affine
    name = image.get_filename() if hasattr(image, "get_filename") else None
    return itk_affine(Path(name)) if name else None


def itk_affine(path: Path) -> np.ndarray | None:
    """The RAS affine of a 3D (or 4D) file's voxel grid as ITK reads its header; None where ITK cannot."""
    reader = itk_reader(path)
    try:
        with quiet_itk(path):
            reader.ReadImageInformation()
    except RuntimeError:
        return None
    dims = reader.GetDimension()
    if dims < 3:
        return None
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dims, dims)[:3, :3]
    return ras_affine(reader.GetOrigin()[:3], reader.GetSpacing()[:3], direction.ravel())


def _inside_grid(label: Any, image: Any) -> Any:
    """``label`` on ``image``'s grid when it is a crop of that grid: the same voxel axes and sizes,
    its first voxel on a voxel of the image and its last one inside (a segmentation saved on the
    extent of its segments, as 3D Slicer's ``.seg.nrrd``). None when it is no such crop."""
    linear = image.affine[:3, :3]
    if len(label.shape) != len(image.shape[:3]) or not _same_affine(label.affine[:3, :3], linear):
        return None
    offset = np.linalg.solve(linear, label.affine[:3, 3] - image.affine[:3, 3])
    start = np.rint(offset).astype(int)
    stop = start + np.asarray(label.shape[:3])
    if not np.allclose(offset, start, atol=0.01) or (start < 0).any() or (stop > np.asarray(image.shape[:3])).any():
        return None
    data = np.asarray(label.dataobj)
    placed = np.zeros(tuple(image.shape[:3]), dtype=data.dtype)
    placed[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = data
    return nib.Nifti1Image(placed, image.affine, dtype=placed.dtype)  # int64 too, which nibabel wants named


@dataclass(frozen=True)
class Grid:
    """An image's voxel grid as ``on_image_grid`` needs it, from what a case keeps in its ``meta``."""

    shape: tuple[int, ...]
    affine: np.ndarray
    viewer_affine: np.ndarray | None = None  # as ITK reads the image, where it differs (``_viewers_overlay``)


def _same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=0, atol=AFFINE_TOLERANCE))


def _read_splits(path: Path) -> dict[str, list[str]]:
    """Fold 0 of nnU-Net's ``splits_final.json``: its train and val cases."""
    try:
        folds = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows editors) is fine
        fold = {key: folds[0][key] for key in ("train", "val")}
        if not all(isinstance(ids, list) for ids in fold.values()):  # list("case_001") would be its letters
            raise TypeError("'train' and 'val' must be lists of case ids")
        return fold
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise DataError(f"cannot read {path} ({err}); it must be a list of folds "
                        '[{"train": [...], "val": [...]}]') from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object")
    return data


def class_map_from_labels(labels: dict[str, Any], path: Path) -> ClassMap:
    """nnU-Net v2 {"background": 0, "RV": 1} or MSD {"0": "background", "1": "RV"}.

    nnU-Net v2's "ignore" label marks unannotated voxels (sparse annotation): it becomes the class
    map's ``ignore`` value, which no loss learns from and no score counts, not a class. Region-based
    labels (``region_class_map``) become one class per label value."""
    ignore = ignore_value(labels["ignore"], path) if "ignore" in labels else None
    labels = {key: value for key, value in labels.items() if key != "ignore"}
    if any(isinstance(value, list) for value in labels.values()):
        return with_ignore(region_class_map(labels, path), ignore, path)
    names: dict[int, str] = {}
    entries: dict[int, str] = {}  # the entry that gave each value, to name both of two that give one value
    for key, value in labels.items():
        try:
            code, name = (int(key), str(value)) if str(key).lstrip("-").isdigit() else (int(value), key)
        except (TypeError, ValueError):
            raise DataError(f"{path}: bad labels entry {key!r}: {value!r}") from None
        _check_label_value(code, key, path)
        _refuse_value_given_twice(code, key, entries, path)
        if code != 0 and name.strip().casefold() == "background":
            raise DataError(f"{path}: labels entry {key!r}: {value!r} gives the background the value {code}; the "
                            "background is 0 (nnU-Net's rule), and every other value a class: number the classes "
                            "1, 2, ... with the background 0")
        if code != 0:
            names[code] = name
    if not names:
        raise DataError(f"{path} defines no foreground labels; add them to 'labels'")
    check_class_names(names, path)
    return with_ignore(ClassMap(names), ignore, path)


def _refuse_value_given_twice(code: int, key: str, entries: dict[int, str], path: Path) -> None:
    """Two labels entries of one value (a typo such as {"RV": 1, "Myo": 1, "LV": 3}) would leave the
    earlier class out of the class map without a word, and the files' voxels of the value meant for it
    would be blamed on the labels; records ``key`` as the entry of ``code``."""
    if code in entries:
        raise DataError(f"{path}: labels entries {entries[code]!r} and {key!r} both have value {code}; give each "
                        "class a value of its own (the background 0, the classes 1, 2, ...)")
    entries[code] = key


def _check_label_value(code: int, key: str, path: Path) -> None:
    """A label value fewsam can hold: labels and predictions store class values in 16 bits at most, so a
    value above 65535 (or below 0) would name a class no label file can store, and the files' values would
    be refused only when first read, far from the dataset.json entry that causes it."""
    if not 0 <= code <= MAX_LABEL_VALUE:
        raise DataError(f"{path}: labels entry {key!r} has value {code}; label values are 0 (the background) to "
                        f"{MAX_LABEL_VALUE}: number the classes 1, 2, ...")


REGION_EXAMPLE = '{"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing tumour": 3}'


def region_class_map(labels: dict[str, Any], path: Path) -> ClassMap:
    """nnU-Net's region-based labels (BraTS: {"whole tumor": [1, 2, 3], "tumor core": [2, 3],
    "enhancing tumor": 3}) as one class per label value in the files: fewsam segments the values
    (mutually exclusive, as its decoders and losses need) and a region is the union of its values.

    Each value is named as what its voxels are (``_value_name``): "enhancing tumor" for 3, "tumor
    core without enhancing tumor" for 2, "whole tumor without tumor core" for 1. Named after a region
    that holds more (value 1 as "whole tumor", as nnU-Net's ``regions_class_order`` writes it),
    a class's scores would read as the region's, which they are not. The regions are said once, so that
    a user scoring "tumor core" knows to merge values 2 and 3."""
    regions: dict[str, set[int]] = {}
    for key, value in labels.items():
        codes = value if isinstance(value, list) else [value]
        if not codes or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise DataError(f"{path}: bad labels entry {key!r}: {value!r}; a region lists one or more integer label "
                            f"values, as in {REGION_EXAMPLE}")
        for code in codes:
            _check_label_value(code, key, path)
        regions[key] = set(codes)
    foreground = {key: codes - {0} for key, codes in regions.items() if codes - {0}}
    values = sorted(set().union(*foreground.values()))
    if not values:
        raise DataError(f"{path} defines no foreground labels; add them to 'labels'")
    names = {v: _value_name(v, foreground) for v in values}
    say_once(f"{path}: region-based labels ({', '.join(f'{k} = {sorted(c)}' for k, c in foreground.items())}); "
             f"fewsam segments each label value as its own class ({', '.join(f'{v} {names[v]}' for v in values)}), "
             "and a region is the union of its values")
    return ClassMap(names)


def _value_name(value: int, regions: dict[str, set[int]]) -> str:
    """The name of the voxels of label ``value``: the region of that value alone, else the smallest
    region holding it less the regions inside it that do not ("tumor core without enhancing tumor"),
    where that leaves the value alone; else "class<value>"."""
    exact = next((key for key, codes in regions.items() if codes == {value}), None)
    if exact is not None:
        return exact
    holding = [key for key, codes in regions.items() if value in codes]
    smallest = min(holding, key=lambda key: len(regions[key]))
    inside = [key for key, codes in regions.items() if value not in codes and codes < regions[smallest]]
    outer = [key for key in inside if not any(regions[key] < regions[other] for other in inside)]
    left = regions[smallest] - set().union(*(regions[key] for key in outer))
    return f"{smallest} without {' or '.join(outer)}" if outer and left == {value} else f"class{value}"


def _entry(image: Path, label: Path | None, case: str) -> Entry:
    return Entry(case_id=case, image=image, label=label if label and is_data_file(label) else None,
                 rel_path=f"{case}{prediction_ending(image.name)}", subject=case)


def _raw_entries(root: Path, spec: dict[str, Any]) -> tuple[list[Entry], list[str], tuple[str, ...]]:
    """The cases of a raw dataset, the ids of its test cases and those of the cases it names for validation."""
    validation: list[Entry] = []
    ending = spec.get("file_ending", ".nii.gz")
    ending = ending.lower() if isinstance(ending, str) else ending  # files are matched in any letter case
    if ending not in VOLUME_ENDINGS + IMAGE_2D_ENDINGS:
        raise DataError(f"{root}/dataset.json: file_ending {ending!r} is not one fewsam reads "
                        f"({', '.join(VOLUME_ENDINGS + IMAGE_2D_ENDINGS)}); convert the images to .nii.gz")
    if "dataset" in spec:
        entries = _dataset_key_entries(root, spec["dataset"])
        _say_unlisted(root, entries, ending)
        test_cases = _channel0(root / "imagesTs", ending)
    elif spec.get("training"):
        entries = [_entry(_listed_image(root, image), root / label if label else None, case_name(image))
                   for image, label in _listed(spec, "training", root / "dataset.json")]
        validation = _validation_entries(root, spec)
        test_cases = [(_listed_image(root, image), case_name(image))
                      for image, _ in _listed(spec, "test", root / "dataset.json")]
    else:
        labels = files_by_name(root / "labelsTr", ending)
        entries = [_entry(p, labels.get(f"{c}{ending}", root / "labelsTr" / f"{c}{ending}"), c)
                   for p, c in _channel0(root / "imagesTr", ending)]
        say_unmatched_labels(root / "labelsTr", entries, f"<case>{ending}", ending)
        test_cases = _channel0(root / "imagesTs", ending)
        _check_file_ending(root, ending, found=bool(entries))
    _say_unlabelled_training(root, entries)
    _say_training_count(root, spec, len(entries))
    entries += validation
    known = {e.case_id for e in entries}
    test_ids = []
    for path, case in test_cases:
        case_id = case if case not in known else f"imagesTs/{case}"
        entries.append(_entry(path, None, case_id))
        test_ids.append(case_id)
    return [_in_file_ending(e, ending) for e in entries], test_ids, tuple(e.case_id for e in validation)


def _in_file_ending(entry: Entry, ending: str) -> Entry:
    """A case of a raw dataset whose file_ending is ``.nii``, its prediction named ``<case>.nii``: nnU-Net writes
    predictions in the dataset's file_ending, and its tools look for them so; other endings keep theirs."""
    rel = entry.rel_path
    if ending != ".nii" or not rel.endswith(".nii.gz"):
        return entry
    return replace(entry, rel_path=rel[: -len(".nii.gz")] + ".nii")


NNUNET_CASE = '{"case_001": {"images": ["imagesTr/case_001_0000.nii.gz"], "label": "labelsTr/case_001.nii.gz"}}'


def _dataset_key_entries(root: Path, cases: Any) -> list[Entry]:
    """nnU-Net v2's explicit training cases, dataset.json's "dataset" object: case id -> its image
    files (one per channel) and label, each relative to the dataset folder or absolute, ``$VARS``
    expanded, as nnU-Net reads them; imagesTr and labelsTr are then not scanned (they may be absent,
    or hold other cases). A listed file that is not there is refused at once, as nnU-Net refuses it."""
    path = root / "dataset.json"
    if not isinstance(cases, dict) or not cases:
        raise DataError(f"{path}: 'dataset' must be an object of cases like {NNUNET_CASE}")
    listed = {str(case): _listed_files(root, case, item) for case, item in cases.items()}
    missing = [p for files in listed.values() for p in files if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DataError(f"{path}: 'dataset' lists {len(missing)} file(s) that are not there ({shown}); restore them "
                        "or fix their paths (relative to the dataset folder, or absolute)")
    return [replace(_entry(files[1], files[0], case), channels=tuple(files[2:])) for case, files in listed.items()]


def _listed_files(root: Path, case: Any, item: Any) -> list[Path]:
    """[label, channel 0, channel 1, ...] of one case of the "dataset" object, each ``$VARS``
    expanded and relative to ``root`` unless absolute."""
    images = item.get("images") if isinstance(item, dict) else None
    label = item.get("label") if isinstance(item, dict) else None
    if not (isinstance(images, list) and images and all(isinstance(i, str) for i in [label, *images])):
        raise DataError(f"{root / 'dataset.json'}: 'dataset' entry {case!r}: {item!r} is not a case like {NNUNET_CASE}")
    return [root / os.path.expandvars(name) for name in [label, *images]]


def _say_unlisted(root: Path, entries: list[Entry], ending: str) -> None:
    """Cases of imagesTr/ that dataset.json's "dataset" does not list are not read, as nnU-Net does
    not read them; a user who added a case to the folder alone hears so."""
    listed = {e.image.resolve() for e in entries}
    unlisted = [case for path, case in _channel0(root / "imagesTr", ending) if path.resolve() not in listed]
    if unlisted:
        shown = ", ".join(unlisted[:3]) + (", ..." if len(unlisted) > 3 else "")
        say_once(f"{root / 'imagesTr'} holds {len(unlisted)} case(s) that dataset.json's 'dataset' does not list "
                 f"({shown}); they are not read, as nnU-Net reads the listed cases only", key="nifti-unlisted")


def _check_file_ending(root: Path, ending: str, found: bool) -> None:
    """Only files of dataset.json's ``file_ending`` are cases, as nnU-Net reads them. A dataset.json
    copied from another dataset (".nii" beside .nii.gz files) found no image and said "no NIfTI
    images found" of a full imagesTr; some files of another ending were left out without a word."""
    other = natural_sorted(p.name for p in (root / "imagesTr").iterdir()
                           if volume_ending(p.name) not in (None, ending) and not p.name.startswith("."))
    if not other:
        return
    endings = sorted({volume_ending(name) or "" for name in other})
    if not found:
        raise DataError(f"{root / 'dataset.json'} says file_ending {ending!r}, but imagesTr holds "
                        f"{', '.join(endings)} files; set file_ending to {endings[0]!r}")
    shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
    say_once(f"{root / 'imagesTr'}: {len(other)} file(s) end otherwise than dataset.json's file_ending {ending!r} "
             f"({shown}) and are not read, as nnU-Net would not", key="nifti-other-endings")


MSD_ENTRY = '{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}'


def _listed(spec: dict[str, Any], key: str, path: Path) -> list[tuple[str, str | None]]:
    """(image, label or None) of each entry of dataset.json's ``key`` list as MSD writes it: an
    object with "image" (and "label"), or for "test" a bare image path. Any other shape is named
    here, as a hand-written dataset.json needs, instead of failing later as a type error."""
    items = spec.get(key) or []
    if not isinstance(items, list):
        raise DataError(f"{path}: {key!r} must be a list of entries like {MSD_ENTRY}")
    listed = []
    for item in items:
        if isinstance(item, str) and key == "test":
            item = {"image": item}
        label = item.get("label") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not isinstance(label or "", str):
            raise DataError(f"{path}: {key!r} entry {item!r} is not an entry like {MSD_ENTRY}")
        listed.append((item["image"], label or None))
    return listed


def _validation_entries(root: Path, spec: dict[str, Any]) -> list[Entry]:
    """dataset.json's "validation" list, entries as "training" holds them (AMOS lists imagesVa/ and
    labelsVa/ so): the cases of split "val", as the data names them, which would otherwise not be read."""
    return [_entry(_listed_image(root, image), root / label if label else None, case_name(image))
            for image, label in _listed(spec, "validation", root / "dataset.json")]


def _listed_image(root: Path, image: str) -> Path:
    """The file of an image dataset.json lists: the path itself, or, where that does not exist, its
    channel 0 as nnU-Net v1 stores it (v1 lists ``./imagesTr/la_003.nii.gz`` for the files
    ``la_003_0000.nii.gz``, ``la_003_0001.nii.gz``...). The case keeps the listed name."""
    path = root / image
    name = case_name(path)
    channel0 = path.with_name(f"{name}_0000{path.name[len(name):]}")
    return channel0 if not path.is_file() and channel0.is_file() else path


def _say_unlabelled_training(root: Path, entries: list[Entry]) -> None:
    """nnU-Net expects a label for every training image; one without is left out of the
    train/val splits and is a "test" case (``computed_splits``), which a user should hear."""
    missing = [e.case_id for e in entries if e.label is None]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        say_once(f"{root}: {len(missing)} training image(s) have no label file ({shown}); they are left out of "
                 "the train and val splits and are in 'test' (predicted with --split test; a semi-supervised fit "
                 "learns from them with --unlabeled-split test)", key="nifti-training-unlabelled")


def _say_training_count(root: Path, spec: dict[str, Any], found: int) -> None:
    """dataset.json's ``numTraining`` against the training cases found: a download or copy that
    stopped part way left fewer, and the fit ran on them without a word, where nnU-Net's dataset
    check says so."""
    expected = spec.get("numTraining")
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != found:
        say_once(f"{root / 'dataset.json'} says numTraining {expected}, and {found} training case(s) are there; "
                 "a copy or download that stopped part way? fewsam reads the cases found",
                 key="nifti-num-training")


def _channel0(folder: Path, ending: str = "") -> list[tuple[Path, str]]:
    """(path, case) of each case's first channel: '<case>_0000.nii.gz', else '<case>.nii.gz'.

    Where some files are named as channels, a file that is not (``b.nii.gz`` beside ``a_0000.nii.gz``,
    as a folder filled by hand is) is a case of its own: it was left out without a word, and its label
    said to match no image. A channel file whose case has no ``_0000`` is said, as it is not read."""
    files = [p for p in _nifti_files(folder, ending) if not ending or volume_ending(p.name) == ending]
    channels = {p: re.fullmatch(r"(.+)_(\d{4})", case_name(p)) for p in files}
    first = {m[1] for m in channels.values() if m and m[2] == "0000"}
    if not first:
        return [(p, case_name(p)) for p in files]
    orphans = [p.name for p, m in channels.items() if m and m[1] not in first]
    if orphans:
        shown = ", ".join(orphans[:3]) + (", ..." if len(orphans) > 3 else "")
        say_once(f"{folder}: {len(orphans)} channel file(s) have no _0000 file of their case ({shown}) and are not "
                 "read; restore the case's _0000 file", key="nifti-channel-orphans")
    return [(p, m[1] if m else case_name(p)) for p, m in channels.items() if not m or m[2] == "0000"]


def _say_other_channels(entries: list[Entry], colour: bool) -> None:
    """nnU-Net (v1 and v2) stores a multi-channel case (T2 + ADC, the four BraTS sequences) as one
    file per channel, ``_0000``, ``_0001``...; fewsam reads channel 0 only (SAM sees one greyscale
    image), and the other files were left out without a word, where a 4D file's channels are said.
    Files of ``colour`` channels (R, G, B) are all read, as one colour image."""
    if colour:
        return
    multi = next((e for e in entries if _has_channel(e, 1)), None)
    if multi is not None:
        count = next(c for c in itertools.count(2) if not _has_channel(multi, c))
        first, second = multi.image, _other_channel(multi, 1)
        say_once(f"{first.parent}: its cases have {count} channel files ({first.name}, {second.name}"
                 f"{', ...' if count > 2 else ''}); fewsam segments channel 0 (_0000) only, as SAM sees one "
                 "greyscale image, and does not read the others", key="nifti-channel-files")


def _has_channel(entry: Entry, channel: int) -> bool:
    path = _other_channel(entry, channel)
    return path is not None and path.is_file()


def _channel_file(channel0: Path, channel: int) -> Path:
    """The file of another channel of the case whose ``_0000`` file is ``channel0``."""
    name = case_name(channel0)
    return channel0.with_name(f"{name[:-4]}{channel:04d}{channel0.name[len(name):]}")


def _plain_entries(root: Path) -> tuple[list[Entry], list[str]]:
    """images/ + labels/: a case's label is found by its case name (``label_in_folder``), or named as
    its image file (``a_0000.nii.gz`` in both folders, as a 2D folder pairs ``images/x.png`` with
    ``masks/x.png``): that one was said to match no image, and its case left unlabelled."""
    labels = files_by_name(root / "labels")
    entries = [_entry(path, label_in_folder(root / "labels", case, labels)
                      or label_in_folder(root / "labels", case_name(path), labels), case)
               for path, case in _channel0(root / "images")]
    say_unmatched_labels(root / "labels", entries)
    return entries, []


LABEL_SUFFIXES = (*MASK_STEM_SUFFIXES, ".seg", "-label")  # 3D Slicer's <volume>.seg.nrrd and <volume>-label.nrrd


def label_in_folder(folder: Path, case: str, names: dict[str, Path] | None = None) -> Path | None:
    """The label of ``case`` in a plain ``labels/`` folder: ``<case>.nii.gz`` (any volume ending, in
    any letter case), or the case name plus a suffix releases and converters add (BraTS' ``_seg``,
    ACDC's ``_gt``, the 2D folders' ``_mask``, 3D Slicer's ``.seg``...), which would otherwise leave
    a labelled case unlabelled without a word. ``names``: ``files_by_name(folder)``, when the caller
    has it (listed once for all cases)."""
    where, stem = (folder / case).parent, Path(case).name
    if names is None or where != folder:
        names = files_by_name(where)
    found = (names.get(f"{stem}{suffix}{ending}") for suffix in LABEL_SUFFIXES for ending in VOLUME_ENDINGS)
    return next((p for p in found if p is not None and is_data_file(p)), None)


def say_unmatched_labels(folder: Path, entries: list[Entry], naming: str = "<case>.nii.gz, or <case>_seg.nii.gz",
                         ending: str = "", labels: list[Path] | None = None) -> None:
    """Label files no image claims (a name that differs from its image's) are unused: say which, and
    how a label is named (``naming``); nnU-Net's labelsTr only as ``<case><file_ending>``. ``labels``:
    the label files of a folder that holds images beside them (told apart by name), where every
    volume of the folder is not a label; by default every volume of ``folder``, a folder of labels."""
    used = {e.label for e in entries}
    candidates = _nifti_files(folder, ending) if labels is None else labels
    stray = [p.name for p in candidates if p not in used]
    if stray:
        shown = ", ".join(stray[:3]) + (", ..." if len(stray) > 3 else "")
        say_once(f"{folder}: {len(stray)} label file(s) match no image and are not used ({shown}); name a label "
                 f"as its image's case ({naming})", key="nifti-unmatched-labels")
    if ending not in IMAGE_2D_ENDINGS:
        _say_2d_label_files(folder)


def _say_2d_label_files(folder: Path) -> None:
    """PNG, JPEG, TIFF or BMP masks in the labels folder of volumes or DICOM series (a 2D NIfTI image's
    or an X-ray's mask, as a 2D dataset stores it) are not read: their cases were unlabelled, and
    "no labels found" did not say why."""
    masks = natural_sorted(p.name for p in folder.iterdir() if is_image_name(p.name)) if folder.is_dir() else []
    if masks:
        shown = ", ".join(masks[:3]) + (", ..." if len(masks) > 3 else "")
        say_once(f"{folder}: {len(masks)} 2D image file(s) ({shown}) are not read as labels: the labels of volumes and "
                 "DICOM series are volume files; save each as <case>.nii.gz (a 2D array for a 2D image or a "
                 "one-slice series)", key=f"nifti-2d-label-files-{folder}")


def open_nifti(root: Path) -> NiftiDataset:
    spec: dict[str, Any] = {}
    if is_raw_dataset(root):
        spec = _read_json(root / "dataset.json")
        if "labels" not in spec:
            raise DataError(f"{root / 'dataset.json'} has no 'labels'; add e.g. "
                            '{"labels": {"background": 0, "organ": 1}}')
        if not isinstance(spec["labels"], dict):
            raise DataError(f"{root / 'dataset.json'}: 'labels' must be an object such as "
                            '{"background": 0, "organ": 1}')
        class_map = class_map_from_labels(spec["labels"], root / "dataset.json")
        entries, test_ids, val_ids = _raw_entries(root, spec)
    else:
        class_map = classes_json_in(root)
        (entries, test_ids), val_ids = _plain_entries(root), ()
    colour = names_colour_channels(spec)
    _say_other_channels(entries, colour)
    if not entries:
        raise DataError(f"no NIfTI images found in {root}; expected imagesTr/ or images/ with .nii.gz "
                        "(or .mha, .nrrd, .mgz) files")
    return NiftiDataset(root, class_map, entries, test_ids, colour_channels=colour, val_ids=val_ids)
