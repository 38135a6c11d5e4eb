"""ACDC in the SSL4MIS layout: ``data/*.h5`` plus list files in root.

    root/data/patient099_frame01_slice_15.h5   2D slice: image (H,W) float32, label (H,W) uint8
    root/data/patient028_frame01.h5            volume: image (D,H,W), label (D,H,W)
    root/data/slices/patient099_frame01_slice_15.h5   the slices where SSL4MIS's own release keeps them
    root/train_slices.list  train.list  val.list  [test.list]  [patient_info.csv]

Splits: "train" = train_slices.list (2D slice cases, D=1), "val" = val.list (volumes),
"train_volumes" = train.list, "test" = test.list when present, or any "<name>.list" in root.
The labelled-budget order is train_slices.list in file order (SSL4MIS, UniMatch, SAM-Match:
"3 labelled cases" = its first 68 lines). Spacing is None: the h5 files carry none, so metrics
are in pixels. ``patient_info.csv`` in root is joined by patient id (group, bmi, ...).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from fewsam.data.attributes import read_attribute_table
from fewsam.data.readers.common import (Entry, IndexedDataset, Read, files_ending_with, natural_sorted,
                                        to_image_array, to_label_array)
from fewsam.data.types import ClassMap, SliceRef
from fewsam.errors import DataError

CLASS_MAP = ClassMap({1: "RV", 2: "Myo", 3: "LV"})
# h5py turns a damaged file into any of these, depending on where the damage is.
H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError)
LIST_SPLITS = {"train": "train_slices.list", "val": "val.list",
               "train_volumes": "train.list", "test": "test.list"}
_SUBJECT = re.compile(r"^(.+?)_frame\d+")


def detect(root: Path) -> bool:
    return (root / "data").is_dir() and any((root / f).is_file() for f in LIST_SPLITS.values())


def subject_of(case_id: str) -> str:
    """'patient099_frame01_slice_15' -> 'patient099'."""
    m = _SUBJECT.match(case_id)
    return m.group(1) if m else re.sub(r"_slice_\d+$", "", case_id)


SLICE_FOLDER = "slices"  # SSL4MIS's dataloader opens data/slices/<case>.h5 for train_slices.list, data/<case>.h5 else


def case_files(root: Path) -> list[Path]:
    """The h5 files of the cases, naturally sorted by name: ``data/*.h5`` and ``data/slices/*.h5``. SSL4MIS's
    release keeps the training slices that train_slices.list names in ``data/slices/``: read from ``data/``
    alone, every line of that list named a missing case and no fit could take its labelled budget. One case
    in both folders is refused, naming both files, as either could be the one its list means."""
    files = files_ending_with(root / "data", ".h5") + files_ending_with(root / "data" / SLICE_FOLDER, ".h5")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise DataError(f"{seen[path.stem]} and {path} are both case {path.stem!r}; keep one of them")
        seen[path.stem] = path
    return natural_sorted(files, key=lambda p: p.name)


class H5CaseFiles(IndexedDataset):
    """A layout whose case files are h5 files holding the case's ``label`` beside its ``image``: a file without
    one (new scans to predict, a copy whose labels were left out) is unlabelled. Told from the file's header the
    first time it is asked, not when the folder opens (its thousands of files stay unread there): counted
    labelled, such a file was taken into a fit's labelled budget, which stopped after embedding it naming no
    case, and info counted it labelled."""

    @cached_property
    def _label_files_looked_at(self) -> set[Path]:
        return set()

    def has_label(self, case_id: str) -> bool:
        entry = self._entry(case_id)
        path = entry.label
        if path is None or Path(path).suffix.lower() != ".h5" or path in self._label_files_looked_at:
            return path is not None
        self._label_files_looked_at.add(path)
        if not h5_holds_label(Path(path)):
            entry.label = None
        return entry.label is not None

    def find_unlabelled(self) -> None:
        """Tell each file's label from its header now, for a split computed from the labelled cases (``computed_splits``
        holds the others out in "test"): taken as labelled until asked, a file without one was drawn into the computed
        'val', a validation case with nothing to score."""
        for case_id in self.entries:
            self.has_label(case_id)


def h5_holds_label(path: Path) -> bool:
    """Whether an h5 file holds a ``label`` (its header read, not its arrays); a damaged file is taken to, and is
    named when it is read."""
    try:
        with h5py.File(path, "r") as f:
            return "label" in f
    except H5_ERRORS:
        return True


class AcdcH5Dataset(H5CaseFiles):
    layout = "acdc-h5"
    format = "h5"

    def __init__(self, root: Path) -> None:
        entries = [Entry(case_id=p.stem, image=p, label=p, rel_path=p.name, subject=subject_of(p.stem))
                   for p in case_files(root)]
        super().__init__(root, CLASS_MAP, entries)
        self.split_files = {s: f for s, f in LIST_SPLITS.items() if (root / f).is_file()}
        if (root / "patient_info.csv").is_file():
            self.add_attributes(read_attribute_table(root / "patient_info.csv"))

    def labelled_budget_order(self) -> list[SliceRef]:
        """train_slices.list in file order; without it, every slice of train.list's volumes."""
        if "train" in self.split_files:
            return [SliceRef(cid, 0) for cid in self.split("train")]
        return [SliceRef(cid, z) for cid in self.split("train_volumes")
                for z in range(self.num_slices(cid))]

    def slice_case_rel_path(self, case_id: str, z: int) -> str:
        """Where slice ``z`` of a volume goes as a case of its own, named as SSL4MIS names its training slices
        (``data/patient001_frame01_slice_3.h5``, in ``data/slices/`` where the data keeps its slices there, so
        that a copy into the data replaces the slice's file rather than doubling it): this layout's classes are
        fixed, so it cannot mark a volume's unlabelled slices, but it reads each slice file as a labelled case."""
        slices = self.root / "data" / SLICE_FOLDER
        folder = slices if slices.is_dir() else Path(self._entry(case_id).image).parent
        return (folder / f"{case_id}_slice_{z}.h5").relative_to(self.root).as_posix()

    def num_slices(self, case_id: str) -> int:
        shape = h5_image_shape(self._entry(case_id).image)
        return int(shape[0]) if len(shape) == 3 else 1

    def _read(self, entry: Entry) -> Read:
        path = entry.image
        image, label = h5_image_and_label(path, entry.label is not None)
        image = to_image_array(image, path)
        ndim = image.ndim
        if ndim not in (2, 3):
            raise DataError(f"{path}: 'image' must be (H,W) or (D,H,W), got {image.shape}")
        if ndim == 2:
            image = image[None]
            label = None if label is None else label[None]
        if label is not None:
            label = to_label_array(label, path)
        return Read(image=image, label=label, meta={"ndim": ndim})


SSL4MIS_NEEDS = "SSL4MIS h5 files need 'image' and 'label'"


def h5_image_shape(path: Path, needs: str = SSL4MIS_NEEDS) -> tuple[int, ...]:
    """The shape of an h5 file's ``image``, read from its header (slices are counted without reading them)."""
    try:
        with h5py.File(path, "r") as f:
            return tuple(h5_dataset(f, "image", path, needs).shape)
    except H5_ERRORS as err:
        raise DataError(f"cannot read {path} (truncated or not HDF5?): {err}") from None


def h5_image_and_label(path: Path, with_label: bool, needs: str = SSL4MIS_NEEDS
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """An h5 file's ``image`` and, asked for and present, its ``label``, as stored; a damaged file is a
    DataError naming it."""
    try:
        with h5py.File(path, "r") as f:
            image = np.asarray(h5_dataset(f, "image", path, needs)[()])
            wanted = with_label and "label" in f
            label = np.asarray(h5_dataset(f, "label", path, needs)[()]) if wanted else None
    except H5_ERRORS as err:
        raise DataError(f"cannot read {path} (truncated or not HDF5?): {err}") from None
    return image, label


def h5_dataset(f: h5py.File, key: str, path: Path, needs: str = SSL4MIS_NEEDS) -> h5py.Dataset:
    """The dataset ``key`` of an open h5 file; a missing key (or a group by that name) is a DataError naming
    the keys the file has and what its layout ``needs``."""
    if key in f and not isinstance(f[key], h5py.Dataset):
        raise DataError(f"{path}: {key!r} is a group of {list(f[key].keys())}, not an array; {needs}")
    if key not in f:
        raise DataError(f"{path} has no {key!r} dataset (keys: {list(f.keys())}); {needs}")
    return f[key]


def open_acdc_h5(root: Path) -> AcdcH5Dataset:
    return AcdcH5Dataset(root)
