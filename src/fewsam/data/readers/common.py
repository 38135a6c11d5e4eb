"""What every reader shares: an index of cases built without reading images, named splits,
list files, attribute joining and the checks that turn bad files into one-line DataErrors.

A reader subclasses ``IndexedDataset``, fills ``entries`` (and ``splits``) when opened, and
implements ``_read(entry)``; ``load`` adds attributes and validates shapes and label values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewsam.data.attributes import AttributeTable
from fewsam.data.types import Case, ClassMap, Format, SliceRef
from fewsam.errors import DataError

LIST_SUFFIXES = (".list", ".txt", ".json")


@dataclass
class Entry:
    """What the index knows about one case before anything is read."""

    case_id: str
    image: Path
    label: Path | None
    rel_path: str
    subject: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Read:
    """What a reader's ``_read`` returns for one entry."""

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class IndexedDataset:
    """Base of all readers: implements the ``Dataset`` protocol over an index of ``Entry``.

    Splits: the reader's named splits (``self.splits``, or ``self.split_files``: names of list
    files read when asked for), ``"all"`` (every indexed case, in index order), or the name of
    a list file in root (one case id, file name or relative path per line).
    """

    layout = "?"
    format: Format = "png"

    def __init__(self, root: Path, class_map: ClassMap, entries: list[Entry]) -> None:
        self.root = root
        self.class_map = class_map
        self.entries = {e.case_id: e for e in entries}
        self.splits: dict[str, list[str]] = {}
        self.split_files: dict[str, str] = {}
        self.tables: list[AttributeTable] = []
        self.check_label_values = True
        self._aliases: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self.entries)} cases)"

    def __len__(self) -> int:
        return len(self.entries)

    def add_attributes(self, table: AttributeTable) -> None:
        """Join a table's columns into every case it has a row for (later tables win)."""
        self.tables.append(table)

    def split(self, name: str) -> list[str]:
        if name == "all":
            ids = list(self.entries)
        elif name in self.splits:
            ids = self.splits[name]
        elif name in self.split_files:
            ids = self._read_list_file(self.split_files[name])
        elif name.endswith(LIST_SUFFIXES) or (self.root / name).is_file():
            ids = self._read_list_file(name)
        else:
            known = ", ".join(self.split_names())
            raise DataError(f"unknown split {name!r} for {self.root}: use one of {known} "
                            "or a list file in that folder")
        if not ids:
            raise DataError(f"split {name!r} of {self.root} is empty; "
                            f"use one of: {', '.join(self.split_names())}")
        return list(ids)

    def split_names(self) -> list[str]:
        """Named splits of this dataset (list files in root can be used as well)."""
        return [*(s for s in self.splits if self.splits[s]), *self.split_files, "all"]

    def load(self, case_id: str) -> Case:
        entry = self._entry(case_id)
        got = self._read(entry)
        check_pair(got.image, got.label, entry.image)
        if got.label is not None and self.check_label_values:
            check_label_values(got.label, self.class_map, entry.label or entry.image)
        return Case(case_id=case_id, image=got.image, label=got.label, format=self.format,
                    rel_path=entry.rel_path, spacing=got.spacing,
                    attributes=self.attributes_of(case_id, got.attributes), meta=got.meta)

    def attributes_of(self, case_id: str, read_attributes: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
        """Index attributes, then those read from the file, then joined tables (later win)."""
        entry = self._entry(case_id)
        merged = {**entry.attributes, **(read_attributes or {})}
        for table in self.tables:
            merged.update(table.row_for(case_id, entry.subject, entry.rel_path))
        return merged

    def subject_of(self, case_id: str) -> str:
        return self._entry(case_id).subject

    def has_label(self, case_id: str) -> bool:
        """Whether the index knows a label file for the case (read without loading it)."""
        return self._entry(case_id).label is not None

    def num_slices(self, case_id: str) -> int:
        """Slices of a case without reading its pixels (2D layouts: always 1)."""
        self._entry(case_id)
        return 1

    def labelled_budget_order(self) -> list[SliceRef]:
        return [SliceRef(cid, z) for cid in self.split("train") for z in range(self.num_slices(cid))]

    def _read(self, entry: Entry) -> Read:
        raise NotImplementedError

    def _entry(self, case_id: str) -> Entry:
        try:
            return self.entries[case_id]
        except KeyError:
            raise DataError(f"no case {case_id!r} in {self.root}; "
                            "check the id against the dataset's list files") from None

    def _id_for_line(self, line: str) -> str:
        """Map one list-file line (an id, a file name or a relative path) to a case id."""
        line = line.strip().replace("\\", "/").removeprefix("./")
        if line in self.entries:
            return line
        if self._aliases is None:
            self._aliases = {}
            for entry in self.entries.values():
                self._aliases.setdefault(Path(entry.rel_path).name, entry.case_id)
                self._aliases[entry.rel_path] = entry.case_id
        return self._aliases.get(line, strip_suffixes(line))

    def _read_list_file(self, name: str) -> list[str]:
        path = self.root / name
        if not path.is_file():
            raise DataError(f"list file {path} not found; give a file that exists in {self.root}")
        ids = [self._id_for_line(ln) for ln in read_lines(path)]
        self.check_known(ids, str(path))
        return ids

    def check_known(self, ids: list[str], source: str) -> None:
        missing = [i for i in ids if i not in self.entries]
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise DataError(f"{source} names {len(missing)} case(s) with no file in {self.root}: "
                            f"{shown}; fix the list or restore the files")


def strip_suffixes(name: str) -> str:
    """'a/b.nii.gz' -> 'a/b'; 'x.h5' -> 'x' (only known data suffixes are removed)."""
    for suffix in (".nii.gz", ".nii", ".h5", ".png", ".npz", ".list", ".txt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_pair(image: np.ndarray, label: np.ndarray | None, path: Path) -> None:
    """Image (D,H,W[,3]) and label (D,H,W) must agree on the voxel grid."""
    if label is not None and tuple(image.shape[:3]) != tuple(label.shape):
        raise DataError(f"image and label shapes differ for {path}: image {tuple(image.shape)}, "
                        f"label {tuple(label.shape)}; re-export the pair on the same grid")


def check_label_values(label: np.ndarray, class_map: ClassMap, path: Path) -> None:
    allowed = {0, *class_map.labels}
    bad = sorted(int(v) for v in np.unique(label) if int(v) not in allowed)
    if bad:
        raise DataError(f"label values {bad} in {path} are not in the class map "
                        f"{class_map.to_json()}; fix the label or the dataset's class names")


def deterministic_split(ids: list[str], every: int = 5) -> dict[str, list[str]]:
    """Sorted ids; every ``every``-th (indices every-1, 2*every-1, ...) goes to val (20%)."""
    ordered = sorted(ids)
    val = [cid for i, cid in enumerate(ordered) if i % every == every - 1]
    chosen = set(val)
    return {"train": [cid for cid in ordered if cid not in chosen], "val": val}


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file; a corrupt file becomes a DataError."""
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read list file {path}: {err}") from None


def to_label_array(label: np.ndarray, path: Path) -> np.ndarray:
    """Integer class indices as uint8; non-integers or values outside 0-255 are a DataError."""
    if not np.issubdtype(label.dtype, np.integer) and not np.all(np.mod(label, 1) == 0):
        raise DataError(f"{path}: the label holds non-integer values; labels must be class indices")
    if label.size and (label.min() < 0 or label.max() > 255):
        bad = sorted({int(v) for v in np.unique(label) if v < 0 or v > 255})
        raise DataError(f"label values {bad} in {path} are not class indices 0-255")
    return label.astype(np.uint8)
