"""Array files as SAM fine-tuning code keeps its data: MedSAM / LiteMedSAM npz and npy, TransUNet / SAMed's Synapse.

MedSAM / LiteMedSAM (the CVPR 2024 "SAM on laptop" challenge), layout ``medsam-npz``:

    root/CT_Abd_FLARE22_Tr_0001.npz     flat, or in folders per modality (CT/, MR/, 2D/), two levels deep at most
        imgs     (D, H, W) uint8 0-255 (CT, MR, PET), (H, W, 3) uint8 (X-ray, dermoscopy, endoscopy, fundus)
                 or (H, W) grey 2D
        gts      same spatial shape, class or instance values (uint8 / uint16); absent in test files: unlabelled
        spacing  optional; MedSAM's preprocessing saves ``img_sitk.GetSpacing()``, SimpleITK's (x, y, z) order,
                 while ``imgs`` is ``GetArrayFromImage``'s (z, y, x): read reversed, as (z, y, x) in mm
        boxes    test prompts: not read
    predictions: <case>.npz with key ``segs`` in the shape of ``gts`` (what the challenge's evaluation reads)

Images are read as stored (uint8 0-255 as float); every model input is scaled per slice later
(``fewsam.data.intensity``), so nothing is normalised here. Case id = the file's path below root
without ``.npz``; splits are computed as every reader computes them (``computed_splits``), files
without ``gts`` in "test".

TransUNet / SAMed's preprocessed Synapse (multi-organ CT), layout ``synapse-npz``:

    root/train_npz/case0005_slice000.npz    2D training slices: image (H, W) float 0-1, label (H, W) class values
    root/test_vol_h5/case0001.npy.h5        whole test volumes: image (D, H, W), label (D, H, W)

The slices of one ``caseXXXX`` are one volume case, in slice-number order; split "train" (with a
computed "val") holds them, "test" the h5 volumes. Either folder alone works, and so does either given
itself as root. The files carry no spacing: metrics are in pixels.
Predictions: ``train_npz/<case>.npz`` with key ``pred`` (D, H, W) for a case assembled from slices,
``test_vol_h5/<case>.npy.h5`` with key ``pred`` for a volume (as the ACDC h5 writer writes them); evaluate
also reads the ``<case>_pred.nii.gz`` that TransUNet's and SAMed's test scripts save (``fewsam.data.writers``).

MedSAM's older training folders, layout ``medsam-npy``:

    root/imgs/<case>-NNN.npy    (1024, 1024, 3) float 0-1 or uint8, one slice NNN of the case
    root/gts/<case>-NNN.npy     (1024, 1024), or (256, 256): MedSAM's low-resolution training target, read onto
                                the image's grid nearest neighbour (said once)

The slices of one case, in number order, are one volume case; predictions: <case>.npz with key
``segs`` (D, H, W).

All three layouts name their classes from ``classes.json`` in root ({"1": "liver"}), else "class1",
"class2", ... for the label values found (every label is read once, on first use of ``class_map``).
The npz layouts are told from Harvard-FairSeg's npz (and each other) by their files' keys, not their names.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fewsam.data.readers.acdc_h5 import H5CaseFiles, h5_image_and_label, h5_image_shape
from fewsam.data.readers.common import (CLASSES_JSON, Entry, IndexedDataset, NotClassIndices, Read,
                                        classes_json_in, computed_splits, files_ending_with, is_tool_folder,
                                        natural_sorted, to_image_array, to_label_array)
from fewsam.data.types import Case, ClassMap
from fewsam.errors import DataError
from fewsam.labels import check_class_count
from fewsam.progress import say_once

SYNAPSE_KEYS = "Synapse volumes hold 'image' and 'label'"  # what a test_vol_h5 file needs

NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)
MEDSAM_DEPTH = 2  # folders below root searched for MedSAM npz files: CT/ or 2D/Dermoscopy/
SYNAPSE_TRAIN, SYNAPSE_TEST = "train_npz", "test_vol_h5"
_SLICE = re.compile(r"^(?P<case>.+?)_slice_?(?P<z>\d+)$", re.IGNORECASE)


# ---------------------------------------------------------------- files: keys and shapes without reading pixels

def npz_keys(path: Path) -> set[str]:
    """The array names of an npz file from its zip directory, no array read; empty for a file that is no npz."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
    except NPZ_ERRORS:
        return set()


def npz_shape(path: Path, key: str) -> tuple[int, ...]:
    """The shape of one array of an npz file from its ``.npy`` header: the pixels stay compressed."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            return tuple(int(n) for n in header(member)[0])
    except NPZ_ERRORS as err:
        raise DataError(f"cannot read {path} (truncated or not an npz?): {err}") from None


def first_npz(folder: Path, depth: int) -> Path | None:
    """The first npz file (by name) in ``folder`` or up to ``depth`` folders below it."""
    for path in _npz_files(folder, depth):
        return path
    return None


def _npz_files(folder: Path, depth: int) -> Iterator[Path]:
    """Every npz file in ``folder`` (natural order), then those of its sub-folders, down to ``depth`` levels."""
    yield from natural_sorted(files_ending_with(folder, ".npz"), key=lambda p: p.name)
    if depth > 0 and folder.is_dir():
        for sub in natural_sorted((p for p in folder.iterdir() if p.is_dir() and not is_tool_folder(p.name)),
                                  key=lambda p: p.name):
            yield from _npz_files(sub, depth - 1)


# ---------------------------------------------------------------- classes found in the labels

class ClassesFromValues(IndexedDataset):
    """``class_map`` from ``classes.json`` in root, else one class "class<v>" per label value found in the
    label files (read once, on first use, so opening stays cheap), as the NIfTI layouts name unnamed classes."""

    ignore_file = CLASSES_JSON

    _class_map: ClassMap | None = None

    def __init__(self, root: Path, entries: list[Entry], test: Iterable[str] = ()) -> None:
        """The dataset of ``entries``, its classes named by root's ``classes.json`` (checked against each
        label as read) or found in the labels, split as the other layouts compute their splits (``test``:
        the cases a layout keeps for testing)."""
        super().__init__(root, classes_json_in(root), entries)  # type: ignore[arg-type]
        self.check_label_values = self._class_map is not None
        self.splits = computed_splits(entries, test=test)
        self.computed_splits = ("train", "val")

    @property  # type: ignore[override]
    def class_map(self) -> ClassMap:
        if self._class_map is None:
            values: set[int] = set()
            for entry in self.entries.values():
                if entry.label is not None:
                    values |= self._values_or_none(entry)
            found = {v: f"class{v}" for v in sorted(values - {0})}
            check_class_count(len(found), f"the labels of {self.root}")
            self._class_map = ClassMap(found)
        return self._class_map

    @class_map.setter
    def class_map(self, value: ClassMap | None) -> None:
        self._class_map = value

    def _values_or_none(self, entry: Entry) -> set[int]:
        """The label values of one case; a damaged file adds none and is named in the log (the commands that
        read its label say why), values that are no classes stop the scan (``NotClassIndices``)."""
        try:
            label = self.read_label(entry)
        except NotClassIndices:
            raise
        except DataError as err:
            say_once(f"class scan: {err}; its values are left out of the classes found",
                     key=f"class-scan-{entry.image}")
            return set()
        return set() if label is None else {int(v) for v in np.unique(label)}

    def read_label(self, entry: Entry) -> np.ndarray | None:
        """One case's label alone (its image left unread), for the class scan."""
        return self._read(entry).label


# ---------------------------------------------------------------- MedSAM / LiteMedSAM npz

# Keys of prediction npz files: MedSAM's and the challenge tools' ``segs``, fewsam's own ``pred`` (FairSeg, Synapse)
PREDICTION_KEYS = frozenset({"segs", "pred"})
# Keys of the images of the npz layouts read (MedSAM, Synapse, Harvard-FairSeg): a file with one of them is data
IMAGE_KEYS = frozenset({"imgs", "image", "slo_fundus", "fundus_slo"})


def is_prediction_npz(keys: set[str]) -> bool:
    """Whether an npz file's keys are a prediction's (``segs`` or ``pred``, no image): given as data, such a
    file has nothing to segment, and FairSeg's reader, which takes any npz, ended on its missing image key."""
    return bool(keys & PREDICTION_KEYS) and not keys & IMAGE_KEYS


def detect_medsam(root: Path) -> bool:
    """A MedSAM npz file (key ``imgs``) in root or its modality folders, by the first file's keys."""
    first = first_npz(root, MEDSAM_DEPTH)
    return first is not None and "imgs" in npz_keys(first)


class MedsamNpzDataset(ClassesFromValues):
    layout = "medsam-npz"
    format = "npz"
    storage = ("class or instance value per voxel in each file's 'gts'; predictions: <case>.npz with key 'segs' "
               "in the shape of 'gts'")
    reads_whole_tree = True  # npz files two folders down are looked at: predictions written there would be too

    def __init__(self, root: Path) -> None:
        entries = [entry for path in _npz_files(root, MEDSAM_DEPTH) if (entry := _medsam_entry(root, path))]
        super().__init__(root, entries)

    def num_slices(self, case_id: str) -> int:
        path = self._entry(case_id).image
        shape = npz_shape(path, "imgs")
        label = npz_shape(path, "gts") if self.has_label(case_id) else None
        return 1 if _is_2d(shape, label) else int(shape[0])

    def read_label(self, entry: Entry) -> np.ndarray | None:
        try:
            with np.load(entry.image, allow_pickle=False) as data:
                return to_label_array(np.asarray(data["gts"]), entry.image) if "gts" in data.files else None
        except NPZ_ERRORS as err:
            raise DataError(f"cannot read {entry.image} (truncated or not an npz?): {err}") from None

    def _read(self, entry: Entry) -> Read:
        path = entry.image
        try:
            with np.load(path, allow_pickle=False) as data:
                image = np.asarray(data["imgs"])
                label = np.asarray(data["gts"]) if entry.label is not None and "gts" in data.files else None
                spacing = np.asarray(data["spacing"]) if "spacing" in data.files else None
        except NPZ_ERRORS as err:
            raise DataError(f"cannot read {path} (truncated or not an npz?): {err}") from None
        two_d = _is_2d(image.shape, None if label is None else label.shape)
        if not two_d and image.ndim != 3:
            raise DataError(f"{path}: 'imgs' must be (D, H, W), (H, W, 3) or (H, W), got {image.shape}")
        image = to_image_array(image, path)
        label = None if label is None else to_label_array(label, path)
        if two_d:
            image, label = grey_where_channels_agree(image[None]), None if label is None else label[None]
        meta = {"ndim": 2 if two_d else 3, "prediction_key": "segs", "label_key": "gts"}
        return Read(image=image, label=label, spacing=_zyx_spacing(spacing, two_d, path), meta=meta)


def _medsam_entry(root: Path, path: Path) -> Entry | None:
    """A case per file with ``imgs``, labelled where it holds ``gts``. Another npz file among MedSAM's (a
    prediction's ``segs`` file, another tool's) is said and left out: read as a case, it would end every
    command on the dataset. A file that is no npz at all (empty, cut short by a download or a copy, a Git
    LFS pointer) is a case whose data is damaged: left out, it dropped from every split, and the scores and
    fits went on without it unremarked."""
    try:
        with zipfile.ZipFile(path):
            pass
    except NPZ_ERRORS as err:
        raise DataError(f"cannot read {path} (truncated or not an npz?): {err}; restore the file, or move it out "
                        "of the data folder") from None
    keys = npz_keys(path)
    if "imgs" not in keys:
        say_once(f"{path}: no 'imgs' key (keys: {', '.join(sorted(keys)) or 'none, not an npz'}), so not read as "
                 "a MedSAM case (nor other such files of its folder)", key=f"medsam-not-a-case-{path.parent}")
        return None
    rel = path.relative_to(root).as_posix()
    label = path if "gts" in keys else None
    return Entry(case_id=rel[:-4], image=path, label=label, rel_path=rel, subject=rel[:-4])


def _is_2d(image: tuple[int, ...], label: tuple[int, ...] | None) -> bool:
    """Whether ``imgs`` is one 2D image: (H, W) grey, or (H, W, 3) colour, told from a 3-slice volume by a
    2D ``gts`` where there is one, else by its last axis of 3 (no volume is 3 voxels wide)."""
    if len(image) == 2:
        return True
    colour = len(image) == 3 and image[-1] == 3
    return colour and (label is None or len(label) == 2)


def _zyx_spacing(spacing: np.ndarray | None, two_d: bool, path: Path) -> tuple[float, float, float] | None:
    """MedSAM's stored spacing, SimpleITK's (x, y, z), as fewsam's (z, y, x); (x, y) of a 2D image with a
    z of 1. Anything else is said once and left out: metrics are then in pixels."""
    if spacing is None:
        return None
    values = [float(v) for v in spacing.reshape(-1)] if spacing.dtype.kind in "biuf" else []
    if two_d and len(values) == 2:
        values.append(1.0)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        say_once(f"{path}: 'spacing' {values} is not three sizes in mm, so it is not used (metrics in pixels)",
                 key=f"medsam-spacing-{path}")
        return None
    x, y, z = values
    return (z, y, x)


def open_medsam(root: Path) -> MedsamNpzDataset:
    return MedsamNpzDataset(root)


# ---------------------------------------------------------------- MedSAM's npy slice folders

MEDSAM_IMAGES, MEDSAM_LABELS = "imgs", "gts"
_NUMBERED = re.compile(r"^(?P<case>.+)-(?P<z>\d+)$")


def detect_medsam_npy(root: Path) -> bool:
    """MedSAM's training folders: ``imgs/`` of ``.npy`` slices (``gts/`` beside it)."""
    return any(files_ending_with(root / MEDSAM_IMAGES, ".npy"))


class MedsamNpyDataset(ClassesFromValues):
    layout = "medsam-npy"
    format = "npz"
    storage = ("class index per pixel in gts/<case>-NNN.npy (a gts smaller than its image read onto the image's "
               "grid, nearest neighbour); predictions: <case>.npz with key 'segs' (D, H, W)")

    def __init__(self, root: Path) -> None:
        self.slices = _numbered_slices(root / MEDSAM_IMAGES)
        self.label_slices = {case: [root / MEDSAM_LABELS / p.name for p in paths]
                             for case, paths in self.slices.items()}
        entries = [self._entry_of(root, case) for case in self.slices]
        super().__init__(root, entries)

    def _entry_of(self, root: Path, case: str) -> Entry:
        """A case per ``<case>-NNN`` series of slices, labelled where every slice has its gts file (a slice
        without one is no background, so a case missing some is read as unlabelled, said)."""
        labels = self.label_slices[case]
        present = [p.is_file() for p in labels]
        if any(present) and not all(present):
            missing = labels[present.index(False)]
            say_once(f"{missing} is missing, so case {case} is read as unlabelled ({sum(present)} of {len(labels)} "
                     "slices have a gts file)", key=f"medsam-npy-partial-{case}")
        label = labels[0] if all(present) else None
        return Entry(case_id=case, image=self.slices[case][0], label=label, rel_path=f"{case}.npz", subject=case)

    def label_rel_path(self, entry: Entry) -> str:
        raise _no_one_file(entry, self.root, len(self.slices[entry.case_id]), f"{entry.case_id}.npz, key 'segs'")

    def slice_files(self, entry: Entry) -> list[Path] | None:
        return self.slices[entry.case_id]

    def num_slices(self, case_id: str) -> int:
        return len(self.slices[self._entry(case_id).case_id])

    def read_label(self, entry: Entry) -> np.ndarray | None:
        """The label alone, on the grid of the case's first image (its header read, not its pixels)."""
        if entry.label is None:
            return None
        grid = _npy_shape(self.slices[entry.case_id][0])[:2]
        labels = [_on_grid(_npy(path, "label"), grid, path) for path in self.label_slices[entry.case_id]]
        return to_label_array(np.stack(labels), entry.label)

    def _read(self, entry: Entry) -> Read:
        paths = self.slices[entry.case_id]
        images = [_npy(path, "image") for path in paths]
        for path, image in zip(paths, images):
            if image.shape != images[0].shape or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
                raise DataError(f"{path}: the image has shape {image.shape}; MedSAM's slices are (H, W, 3) or (H, W), "
                                f"all of one size ({images[0].shape} for the case's first)")
        image = grey_where_channels_agree(to_image_array(np.stack(images), entry.image))
        return Read(image=image, label=self.read_label(entry), meta={"ndim": 3, "prediction_key": "segs"})


def _numbered_slices(folder: Path) -> dict[str, list[Path]]:
    """The ``.npy`` slices of each case (``<case>-012.npy``) in slice-number order (``slices_by_case``)."""
    return slices_by_case(files_ending_with(folder, ".npy"), _NUMBERED)


def _npy_shape(path: Path) -> tuple[int, ...]:
    """An ``.npy`` file's shape from its header (the file mapped, not read)."""
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"cannot read {path} (truncated or not an .npy image?): {err}") from None


def grey_where_channels_agree(image: np.ndarray) -> np.ndarray:
    """A colour image whose three channels hold the same values (MedSAM's CT slices and X-rays, a grey picture
    repeated into RGB for SAM) as the grey image it is, as the PNG reader reads a grey picture stored as RGB:
    SAM sees the same, and the case takes a third of the memory."""
    if image.ndim == 4 and image.shape[-1] == 3 and (image[..., :1] == image[..., 1:]).all():
        return np.ascontiguousarray(image[..., 0])
    return image


def _npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"cannot read {path} (truncated or not an .npy {what}?): {err}") from None


def _on_grid(label: np.ndarray, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """A gts slice on its image's (H, W): MedSAM saves a 256 x 256 training target beside a 1024 x 1024 image,
    read here nearest neighbour (each image pixel takes the label pixel it falls in), said once."""
    if label.ndim != 2:
        raise DataError(f"{path}: the label has shape {label.shape}; expected (H, W)")
    if label.shape == tuple(shape):
        return label
    say_once(f"{path}: a {label.shape[0]} x {label.shape[1]} label beside a {shape[0]} x {shape[1]} image (MedSAM's "
             "low-resolution training target) is read onto the image's grid, nearest neighbour",
             key=f"medsam-npy-grid-{label.shape}-{tuple(shape)}")
    rows = (np.arange(shape[0]) + 0.5) * label.shape[0] // shape[0]
    cols = (np.arange(shape[1]) + 0.5) * label.shape[1] // shape[1]
    return label[np.ix_(rows.astype(int), cols.astype(int))]


def _no_one_file(entry: Entry, root: Path, files: int, instead: str) -> DataError:
    """A label written back into the dataset goes into a copy of the case's one file (``LABEL_INSIDE_IMAGE``):
    a case assembled from many slice files has none, so the studio's export of such a case is refused."""
    return DataError(f"case {entry.case_id} of {root} is assembled from {files} slice files, and its labels cannot "
                     f"be exported into them; use `fewsam predict` output ({instead}) instead")


def open_medsam_npy(root: Path) -> MedsamNpyDataset:
    return MedsamNpyDataset(root)


# ---------------------------------------------------------------- TransUNet / SAMed Synapse

def detect_synapse(root: Path) -> bool:
    """``train_npz/`` of slice files or ``test_vol_h5/`` of volumes, or root itself holding either (slice files
    told by the first file's keys, ``image``: FairSeg's are ``slo_fundus`` and MedSAM's ``imgs``; volumes by
    their ``.npy.h5`` ending)."""
    if _volume_files(root):
        return True
    for folder in (root / SYNAPSE_TRAIN, root):
        first = first_npz(folder, 0)
        if first is not None:
            return "image" in npz_keys(first)
    return False


class SynapseDataset(H5CaseFiles, ClassesFromValues):
    layout = "synapse-npz"
    format = "npz"
    storage = ("class index per pixel in 'label' (train_npz slices, test_vol_h5 volumes); predictions: "
               "train_npz/<case>.npz (slices assembled) or test_vol_h5/<case>.npy.h5, key 'pred' (D, H, W)")

    def __init__(self, root: Path) -> None:
        train = root / SYNAPSE_TRAIN if (root / SYNAPSE_TRAIN).is_dir() else root
        self.slices = _slices_by_case(train)
        volumes = _volume_files(root)
        entries = [_slice_case_entry(root, case, paths) for case, paths in self.slices.items()]
        entries += [_volume_entry(root, path) for path in volumes]
        if not entries:
            raise DataError(f"no Synapse slice files (.npz) or volumes (.h5) in {root}")
        super().__init__(root, entries, test=[_volume_case(p) for p in volumes])

    def load(self, case_id: str, *, with_label: bool = True) -> Case:
        """A volume's prediction is an h5 file, as its input is; a case of slice files gets one npz."""
        case = super().load(case_id, with_label=with_label)
        return case if case_id in self.slices else replace(case, format="h5")

    def slice_files(self, entry: Entry) -> list[Path] | None:
        return self.slices.get(entry.case_id)

    def label_rel_path(self, entry: Entry) -> str:
        if entry.case_id in self.slices:
            raise _no_one_file(entry, self.root, len(self.slices[entry.case_id]), "train_npz/<case>.npz, key 'pred'")
        return super().label_rel_path(entry)

    def num_slices(self, case_id: str) -> int:
        if case_id in self.slices:
            return len(self.slices[case_id])
        shape = h5_image_shape(self._entry(case_id).image, SYNAPSE_KEYS)
        return int(shape[0]) if len(shape) == 3 else 1

    def read_label(self, entry: Entry) -> np.ndarray | None:
        """The label alone: a case's slice files hold float images that the class scan need not read."""
        if entry.label is None:
            return None
        if entry.case_id in self.slices:
            return np.stack([to_label_array(_npz_array(path, "label"), path) for path in self.slices[entry.case_id]])
        return self._read(entry).label

    def _read(self, entry: Entry) -> Read:
        if entry.case_id in self.slices:
            image, label = _stacked(self.slices[entry.case_id], entry.label is not None)
        else:
            image, label = _volume(entry.image, entry.label is not None)
        return Read(image=image, label=label, meta={"ndim": 3, "prediction_key": "pred"})


def _volume_files(root: Path) -> list[Path]:
    """The test volumes: every h5 file of ``test_vol_h5/``, else those named ``.npy.h5`` in root itself (the
    folder given alone)."""
    if (root / SYNAPSE_TEST).is_dir():
        found = files_ending_with(root / SYNAPSE_TEST, ".h5")
    else:
        found = files_ending_with(root, ".npy.h5")
    return natural_sorted(found, key=lambda p: p.name)


def _npz_array(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data[_npz_key(data.files, key, path)])
    except NPZ_ERRORS as err:
        raise DataError(f"cannot read {path} (truncated or not an npz?): {err}") from None


def _slices_by_case(folder: Path) -> dict[str, list[Path]]:
    """The ``.npz`` slice files of each case (``case0005_slice012.npz``) in slice-number order (``slices_by_case``)."""
    return slices_by_case(files_ending_with(folder, ".npz"), _SLICE)


def slices_by_case(files: list[Path], numbered: re.Pattern[str]) -> dict[str, list[Path]]:
    """The files of each case, named by ``numbered`` (groups ``case`` and ``z``, matched on the name without its
    ending), in slice-number order; a file not so named is a case of one slice. Two files of one slice number
    (``slice1`` beside ``slice001``) are refused, naming both: either would do, and which one was read would be
    a guess."""
    by_case: dict[str, dict[int, Path]] = {}
    for path in natural_sorted(files, key=lambda p: p.name):
        stem = path.name[: -len(path.suffix)]
        match = numbered.match(stem)
        case, z = (match["case"], int(match["z"])) if match else (stem, 0)
        earlier = by_case.setdefault(case, {}).setdefault(z, path)
        if earlier != path:
            raise DataError(f"{earlier} and {path} are both slice {z} of case {case}; remove one of them")
    cases = natural_sorted(by_case)
    say_slice_gaps({case: sorted(by_case[case]) for case in cases}, files[0].parent if files else None)
    return {case: [by_case[case][z] for z in sorted(by_case[case])] for case in cases}


def say_slice_gaps(numbers: dict[str, list[int]], folder: Path | None) -> None:
    """Say once which cases' slice numbers skip some (a file lost in a copy, or slices an export left out, as
    MedSAM's keeps only labelled ones): a case is its slices in number order, so the slices beside a gap are
    read as neighbours, and its 3D distances (HD95, ASD) and 3D post-processing span the gap."""
    gaps = {case: sorted(set(range(zs[0], zs[-1] + 1)) - set(zs)) for case, zs in numbers.items() if len(zs) > 1}
    gaps = {case: missing for case, missing in gaps.items() if missing}
    if not gaps:
        return
    shown = "; ".join(f"{case} lacks slice(s) {', '.join(map(str, missing[:4]))}{', ...' if len(missing) > 4 else ''}"
                      for case, missing in list(gaps.items())[:3])
    more = f" (and {len(gaps) - 3} more cases)" if len(gaps) > 3 else ""
    say_once(f"{folder}: the slice numbers of {len(gaps)} case(s) skip some ({shown}{more}); each case is read as its "
             "slices in number order, so the slices beside a gap are taken as neighbours (3D distances span it)",
             key=f"slice-gaps-{folder}")


def _slice_case_entry(root: Path, case: str, paths: list[Path]) -> Entry:
    """A case of slice files: named by its first file, its prediction one npz beside them."""
    folder = paths[0].parent.relative_to(root).as_posix()
    rel = f"{case}.npz" if folder == "." else f"{folder}/{case}.npz"
    label = paths[0] if "label" in npz_keys(paths[0]) else None
    return Entry(case_id=case, image=paths[0], label=label, rel_path=rel, subject=case)


def _volume_case(path: Path) -> str:
    """``case0001.npy.h5`` -> ``case0001``."""
    name = path.name[:-3]
    return name[:-4] if name.lower().endswith(".npy") else name


def _volume_entry(root: Path, path: Path) -> Entry:
    case = _volume_case(path)
    return Entry(case_id=case, image=path, label=path, rel_path=path.relative_to(root).as_posix(), subject=case)


def _stacked(paths: list[Path], with_label: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The slice files of one case as a (D, H, W) image and label; a slice of another size is refused, naming it."""
    images, labels = [], []
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as data:
                image = np.asarray(data[_npz_key(data.files, "image", path)])
                label = np.asarray(data[_npz_key(data.files, "label", path)]) if with_label else None
        except NPZ_ERRORS as err:
            raise DataError(f"cannot read {path} (truncated or not an npz?): {err}") from None
        if image.ndim != 2 or (images and image.shape != images[0].shape):
            expected = f"{images[0].shape}, as the case's first slice" if images else "(H, W)"
            raise DataError(f"{path}: 'image' has shape {image.shape}, expected {expected}")
        images.append(to_image_array(image, path))
        if label is not None:
            labels.append(to_label_array(label, path))
    label = None if not with_label else to_label_array(np.stack(labels), paths[0])
    return np.stack(images), label


def _npz_key(keys: list[str], key: str, path: Path) -> str:
    if key not in keys:
        raise DataError(f"{path} has no {key!r} key (keys: {sorted(keys)}); Synapse slice files hold 'image' and "
                        "'label'")
    return key


def _volume(path: Path, with_label: bool) -> tuple[np.ndarray, np.ndarray | None]:
    image, label = h5_image_and_label(path, with_label, SYNAPSE_KEYS)
    image = to_image_array(image, path)
    if image.ndim == 2:
        image, label = image[None], None if label is None else label[None]
    if image.ndim != 3:
        raise DataError(f"{path}: 'image' must be (D, H, W), got {image.shape}")
    return image, None if label is None else to_label_array(label, path)


def open_synapse(root: Path) -> SynapseDataset:
    return SynapseDataset(root)
