"""What every reader shares: an index of cases built without reading images, named splits,
list files, attribute joining and the checks that turn bad files into one-line DataErrors.

A reader subclasses ``IndexedDataset``, fills ``entries`` (and ``splits``) when opened, and
implements ``_read(entry)``; ``load`` adds attributes and validates shapes and label values.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from fewsam.data.attributes import AttributeTable, user_text
from fewsam.data.types import Case, ClassMap, Format, SliceRef
from fewsam.errors import DataError, is_not_permitted
from fewsam.labels import MAX_CLASSES, MAX_LABEL_VALUE, check_class_count, label_dtype
from fewsam.progress import say_once

LIST_SUFFIXES = (".list", ".txt", ".json")
# Suffixes a list-file line may carry after a case id (compared case-insensitively).
DATA_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh", ".h5", ".npz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp",
                 ".gif", ".dcm", ".list", ".txt", ".npy")
log = logging.getLogger("fewsam")


@dataclass
class Entry:
    """What the index knows about one case before anything is read."""

    case_id: str
    image: Path
    label: Path | None
    rel_path: str
    subject: str
    attributes: dict[str, Any] = field(default_factory=dict)
    # the case's image files after ``image`` (its channel 0) where a list names them (nnU-Net v2's
    # "dataset" key); empty where they are found by their names (``_0001``...) or there are none
    channels: tuple[Path, ...] = ()
    # the time frame (0 = the first) of a 4D image and label that is the case, where a cine holds several
    # cases (M&Ms' short-axis cines, ``cine_frames``); None where the case is the file's first volume
    frame: int | None = None


@dataclass
class Read:
    """What a reader's ``_read`` returns for one entry."""

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


# How every reader draws a computed 'val' split (``deterministic_split``), in the words its errors use.
VAL_RULE = "every 5th labelled subject (patient; at least one of two or more)"
# ... and from a train.list with no val list beside it (``adopt_list_splits``)
LISTED_VAL_RULE = "the last fifth of train.list's labelled subjects (at least one of two or more)"

# Formats whose one file holds a case's image and its label (ACDC's SSL4MIS h5, Harvard-FairSeg npz): a
# label is exported as a copy of that file with the label replaced (``writers.write_label``).
LABEL_INSIDE_IMAGE = ("h5", "npz")

CLASSES_JSON = "classes.json"  # the class names (and "ignore" value) of the layouts not named by dataset.json


class IndexedDataset:
    """Base of all readers: implements the ``Dataset`` protocol over an index of ``Entry``.

    Splits: the reader's named splits (``self.splits``, or ``self.split_files``: names of list
    files read when asked for), ``"all"`` (every indexed case, in index order), or the name of
    a list file in root (one case id, file name or relative path per line).
    """

    layout = "?"
    format: Format = "png"
    # Whether every image file below root is read as a case (a folder scan, not fixed folders or an
    # index): then a folder of predictions anywhere below root would become cases of the dataset.
    reads_whole_tree = False
    # The file in root whose "ignore" entry gives the label value of unannotated pixels, for the layouts of
    # volumes that read one (``class_map_from_json``, nnU-Net's dataset.json); None where the classes are
    # fixed (ACDC's h5 files) or a case is one 2D image, so that a label holding unannotated pixels is
    # written only where the data can say so (the studio's export of partly labelled volumes).
    ignore_file: str | None = None

    def __init__(self, root: Path, class_map: ClassMap, entries: list[Entry]) -> None:
        self.root = root
        self.class_map = class_map
        # Only a class map the data names (nnU-Net's dataset.json) has an ignore label; read here, as
        # ``class_map`` of data without one is found by reading every label file
        self.ignore = class_map.ignore if class_map is not None else None
        self.entries = entries_by_case(entries)
        self.splits: dict[str, list[str]] = {}
        self.split_files: dict[str, str] = {}
        self.tables: list[AttributeTable] = []
        self.check_label_values = True
        self.computed_splits: tuple[str, ...] = ()  # splits fewsam made up (not named by the data)
        self.val_rule = VAL_RULE  # how a computed 'val' split is drawn, for the error when it comes out empty
        self._aliases: dict[str, str | tuple[str, ...]] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self.entries)} cases)"

    def __len__(self) -> int:
        return len(self.entries)

    def add_attributes(self, table: AttributeTable) -> None:
        """Join a table's columns into every case it has a row for (later tables win)."""
        self.tables.append(table)

    def split(self, name: str) -> list[str]:
        name = os.fspath(name)  # a list file given as a Path (the Python API's split, val_split) is its path
        if name == "all":
            ids = list(self.entries)
        elif name in self.splits:
            ids = self.splits[name]
        elif name in self.split_files:
            ids = self._read_list_file(self.split_files[name])
        elif name.endswith(LIST_SUFFIXES) or (self.root / name).is_file() or self._names_a_folder(name):
            ids = self._read_list_file(name)
        else:
            known = ", ".join(self.split_names())
            raise DataError(f"unknown split {name!r} for {self.root}: use one of {known} "
                            "or a list file in that folder")
        if not ids and name == "val" and name in self.computed_splits:
            subjects = len({self.subject_of(case_id) for case_id in self.splits.get("train", [])})
            raise DataError(f"split 'val' of {self.root} is empty: it holds {self.val_rule}, and {self.root} has "
                            f"{subjects} labelled subject(s); label "
                            "another, or give a list file of cases instead of 'val' (or 'train', to validate on the "
                            "training cases)")
        if not ids:
            raise DataError(f"split {name!r} of {self.root} is empty; "
                            f"use one of: {', '.join(self.split_names())}")
        return list(ids)

    def adopt_list_splits(self) -> None:
        """A ``train`` / ``val`` list file in root (``val.list`` or ``val.txt``, as SSL4MIS-style
        datasets ship them) names that split instead of the one fewsam would compute: ignored, the
        user's validation cases could land in the labelled budget and the selection run on others.
        With a val list and no train list, train is every other case of the computed split, so that
        no validation case is trained on; with a train list and no val list, val is the last of the
        listed training subjects (``_last_subjects``) and they leave train, as a val drawn from every
        case held cases that train.list trains on. Splits the data names otherwise (a split column,
        ``splits_final.json``) are not computed and stay as they are."""
        listed = {name: path for name in self.computed_splits if (path := list_file_in(self.root, name))}
        if not listed:
            return
        pool = natural_sorted(cid for name in self.computed_splits for cid in self.splits.get(name, []))
        for name, path in listed.items():
            self.splits[name] = self._read_list_file(path.name)
        if "val" in listed and "train" not in listed and "train" in self.computed_splits:
            held = set(self.splits["val"])
            self.splits["train"] = [cid for cid in pool if cid not in held]
        if "train" in listed and "val" not in listed and "val" in self.computed_splits:
            held = self._last_subjects([cid for cid in self.splits["train"] if self.has_label(cid)])
            self.splits["val"] = [cid for cid in self.splits["train"] if cid in held]
            self.splits["train"] = [cid for cid in self.splits["train"] if cid not in held]
            self.val_rule = LISTED_VAL_RULE
        self.computed_splits = tuple(n for n in self.computed_splits if n not in listed)
        say_once(f"{self.root}: split(s) {', '.join(listed)} read from "
                 f"{', '.join(p.name for p in listed.values())}", key=f"list-splits-{self.root}")

    def _last_subjects(self, case_ids: list[str]) -> set[str]:
        """The cases of the last subjects of ``case_ids`` in list order, as many subjects as the computed rule
        holds out of them (``deterministic_split``: a fifth, at least one of two or more). The semi-supervised
        papers label the first N lines of a train.list (UA-MT and SSL4MIS: LA's first 8 or 16 of 80), so a
        validation drawn from its end leaves every budget up to the rest of the list the papers' cases."""
        subjects = list(dict.fromkeys(self.subject_of(cid) for cid in case_ids))
        count = len(deterministic_split(subjects)["val"])
        held = set(subjects[len(subjects) - count:])
        return {cid for cid in case_ids if self.subject_of(cid) in held}

    def split_names(self) -> list[str]:
        """Named splits of this dataset (list files in root can be used as well)."""
        return [*(s for s in self.splits if self.splits[s]), *self.split_files, "all"]

    def load(self, case_id: str, *, with_label: bool = True) -> Case:
        entry = self._entry(case_id)
        got = self._read(entry if with_label else replace(entry, label=None))
        check_image(got.image, entry.image)
        check_finite(got.image, entry.image, case_id, self.slice_files(entry))
        check_pair(got.image, got.label, entry.image, entry.label)
        if got.label is not None and self.check_label_values:
            check_label_values(got.label, self.class_map, entry.label or entry.image)
        return Case(case_id=case_id, image=got.image, label=got.label, format=self.format,
                    rel_path=self.prediction_rel_path(entry), spacing=got.spacing,
                    attributes=self.attributes_of(case_id, got.attributes), meta=got.meta,
                    ignore=self.ignore)

    def slice_files(self, entry: Entry) -> list[Path] | None:
        """The file of each slice, for layouts that keep a case's slices in files of their own (Synapse,
        MedSAM's npy folders); None where the case is one file (``entry.image``)."""
        return None

    def input_files(self, case_id: str) -> list[Path]:
        """The files a case's image is read from (its slices' files, its channels' files, every file of a
        folder such as a DICOM series), listed without reading any: what a kept prediction is checked against,
        so that an image replaced after it was made is predicted again."""
        entry = self._entry(case_id)
        named = self.slice_files(entry) or [entry.image, *entry.channels]
        return [file for path in map(Path, named)
                for file in (sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])]

    def prediction_rel_path(self, entry: Entry) -> str:
        """Where a case's prediction goes under PRED: the input's relative path, unless the
        prediction is written in another format than the input (JPEG -> PNG, DICOM -> NIfTI)."""
        return entry.rel_path

    def label_rel_path(self, entry: Entry) -> str:
        """Where a label file of this case goes in a folder laid out as this dataset (the studio's
        export), so that it reads back as the case's label: the case's own label file where it has one
        apart from its image (with the ending labels are written in, its prediction's), else where the
        layout looks for one (``new_label_rel_path``)."""
        written = self.prediction_rel_path(entry)
        if self.format in LABEL_INSIDE_IMAGE:  # the label goes into a copy of the case's file, where it lies
            return Path(entry.image).relative_to(self.root).as_posix()
        if entry.label is None or Path(entry.label) == Path(entry.image):
            return self.new_label_rel_path(entry)
        try:
            rel = Path(entry.label).relative_to(self.root).as_posix()
        except ValueError:  # a label listed outside root: named as the layout names new ones
            return self.new_label_rel_path(entry)
        return rel[: len(rel) - len(file_ending(rel))] + file_ending(written)

    def new_label_rel_path(self, entry: Entry) -> str:
        """Where the layout looks for the label of a case that has none yet: by default where its
        prediction goes (a layout whose labels live beside or inside their images)."""
        return self.prediction_rel_path(entry)

    def has_any_label(self) -> bool:
        """Whether any case has a label file: without one, only prediction is possible."""
        return any(e.label is not None for e in self.entries.values())

    def settle_unlabelled(self) -> None:
        """No case has a label: make sure "val" (predict's default split) exists, and say so.

        Splits the data names itself (a split column, train/test folders, list files) are kept;
        a train/val split fewsam computed means nothing without labels, so "val" becomes every case.
        """
        if self.has_any_label() or not self.entries:
            return
        for name in self.computed_splits:
            self.splits.pop(name, None)
        self.splits.setdefault("val", list(self.entries))
        log.info("no labels found in %s: split 'val' holds %d of its %d cases, for predict; "
                 "fit and evaluate need label files", self.root, len(self.splits["val"]),
                 len(self.entries))

    def attributes_of(self, case_id: str, read_attributes: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
        """Index attributes, then those read from the file, then joined tables (later win).

        An empty cell of a joined table is no value, so it leaves an earlier value in place: a
        demographics table with a blank "sex" cell would otherwise take the case out of its group."""
        merged = {**self._entry(case_id).attributes, **(read_attributes or {})}
        for _, row in self.table_rows(case_id):
            merged.update({column: value for column, value in row.items() if value is not None})
        return merged

    def attribute_sources(self, case_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(where, attributes) of each place that knows the case's attributes without reading its
        pixels: the index, then each joined table in the order joined."""
        return [("the index", self._entry(case_id).attributes), *self.table_rows(case_id)]

    def table_rows(self, case_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(table file, the case's row) of each joined table that has a row for the case."""
        entry = self._entry(case_id)
        rows = [(table.source, table.row_for(case_id, entry.subject, entry.rel_path, listed_names(self.root, entry)))
                for table in self.tables]
        return [(source, row) for source, row in rows if row]

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
        if not self.has_any_label():  # say so, rather than "no split 'train'"
            raise DataError(f"{self.root} has no label files, so no case can be labelled for "
                            "fitting; add masks/labels, or use this folder for predict only")
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
        """Map one list-file line to a case id: the id, or a file of the case as the user lists it
        (``case_aliases``), relative to the data folder or as an absolute path inside it. A name
        that several cases' files share (``x.png`` in two folders) is refused, naming them."""
        line = line.strip().replace("\\", "/").removeprefix("./")
        if line in self.entries:
            return line
        if self._aliases is None:
            self._aliases = {**self._slice_aliases(), **case_aliases(self.root, self.entries.values())}
        key = unicodedata.normalize("NFC", path_below(self.root, line))
        for candidate in (key, strip_suffixes(key), *named_from_working_folder(self.root, line)):
            found = self._aliases.get(candidate)
            if isinstance(found, tuple):
                raise DataError(f"{line!r} in a list file of {self.root} names a file of several cases "
                                f"({', '.join(found[:3])}); list the case id or the path below {self.root}")
            if found is not None:
                return found
        return strip_suffixes(key)

    def _read_list_file(self, name: str) -> list[str]:
        path = self._list_path(name)
        lines = read_list_lines(path)
        ids = self._once_per_sliced_case(lines, [self._id_for_line(ln) for ln in lines])
        self.check_known(ids, str(path))
        return ids

    def _slice_aliases(self) -> dict[str, str]:
        """The names of the files a case keeps its slices in, one a slice (Synapse's
        ``train_npz/case0005_slice001.npz``, MedSAM's ``imgs/CT_x-001.npy``), each to its case, by the names
        ``case_aliases`` gives a file: TransUNet's and SAMed's ``lists_Synapse/train.txt`` name slices, and
        only a case's first slice named it."""
        names: dict[str, str] = {}
        for entry in self.entries.values():
            for path in self.slice_files(entry) or []:
                names.update(dict.fromkeys(file_names(self.root, path), entry.case_id))
        return names

    def _once_per_sliced_case(self, lines: list[str], ids: list[str]) -> list[str]:
        """The case ids of a list's lines, a case named by several of its slice files (``_slice_aliases``) kept
        once, where the first of them is; a case named twice otherwise (a pasted line, its id and a file's
        name) stays twice, and is refused (``check_known``)."""
        slices = self._slice_aliases()
        if not slices:
            return ids
        kept, by_slice = [], set()
        for line, case_id in zip(lines, ids):
            key = unicodedata.normalize("NFC", path_below(self.root, line.strip().replace("\\", "/")))
            names_slice = slices.get(key.removeprefix("./")) == case_id
            if not (names_slice and case_id in by_slice):
                kept.append(case_id)
            if names_slice:
                by_slice.add(case_id)
        return kept

    def _list_path(self, name: str) -> Path:
        """A list file inside the dataset (the usual place), else one the user named by its own path.

        The dataset's own file wins, so `--split val.list` never picks up a stray file in the
        working directory; a list kept outside the dataset (`--split my_lists/pool.list`) works too.
        """
        candidates = (self.root / name, Path(name))
        for path in candidates:
            if path.is_file():
                return path
        folder = next((path for path in candidates if path.is_dir()), None)
        if folder is not None:
            refuse_missing_file(folder, f"give a list file of case ids (one a line) or a split: "
                                        f"{', '.join(self.split_names())}", wanted="a list file of cases is expected")
        raise DataError(f"list file {name} not found in {self.root} or as a path of its own; "
                        "give a file that exists")

    def _names_a_folder(self, name: str) -> bool:
        """Whether a split that is no split's name names a folder (``--split lists/``, ``--split imagesTs``),
        inside the dataset or of its own: it is said to be one, not an unknown split or a missing file."""
        return bool(name) and any(path.is_dir() for path in (self.root / name, Path(name)))

    def check_known(self, ids: list[str], source: str) -> None:
        """Every id of a split names a case of this dataset, and names it once."""
        missing = [i for i in ids if i not in self.entries]
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise DataError(f"{source} names {len(missing)} case(s) with no file in {self.root}: "
                            f"{shown}; fix the list or restore the files")
        check_unique(ids, source)


def named_from_working_folder(root: Path, line: str) -> list[str]:
    """A list line naming an existing file inside ``root`` by its path from the working folder (``ls
    data/images/*.png > val.txt`` run beside ``data``), as the path below root and without its suffixes; none
    for any other line. Read below root alone, such a list named cases with no file."""
    if os.path.isabs(line) or not os.path.isfile(line):
        return []
    below = path_below(root, os.path.abspath(line))
    if os.path.isabs(below):
        return []
    key = unicodedata.normalize("NFC", below)
    return [key, strip_suffixes(key)]


def path_below(root: Path, text: str) -> str:
    """An absolute path inside ``root`` relative to it (a list or index a script wrote with full paths:
    ``ls $PWD/imagesTr/*``, ``glob`` on an absolute folder); any other text as it is."""
    if not os.path.isabs(text):
        return text
    relative = os.path.relpath(os.path.abspath(text), os.path.abspath(root))
    return text if relative.startswith("..") else Path(relative).as_posix()


def case_aliases(root: Path, entries: Iterable[Entry]) -> dict[str, str | tuple[str, ...]]:
    """The names a list file may give a case by, each to its case id (or to the ids of every case it
    could mean, a tuple, where cases share it): the case's relative path and the paths below ``root``
    of its image and label files, each also by its file name and without its suffix. An nnU-Net
    image is listed as ``imagesTr/x_0000.nii.gz`` or ``x_0000`` (``ls imagesTr > val.list``) and a
    2D image by its stem (``benign (1)``, ``c0``), though none of these is the case id. Keys are
    Unicode-normalised (NFC), as a list typed by hand is while a macOS file name is not (NFD)."""
    meanings: dict[str, set[str]] = {}
    for entry in entries:
        for name in listed_names(root, entry):
            meanings.setdefault(unicodedata.normalize("NFC", name), set()).add(entry.case_id)
    return {name: next(iter(ids)) if len(ids) == 1 else tuple(natural_sorted(ids)) for name, ids in meanings.items()}


def listed_names(root: Path, entry: Entry) -> list[str]:
    """Every name of ``case_aliases`` for one case (a list file or an attribute table may use any),
    in a fixed order."""
    names = spellings(entry.case_id) | spellings(entry.rel_path)
    for file in (entry.image, entry.label):
        names |= set() if file is None else file_names(root, Path(file))
    return sorted(names)


def file_names(root: Path, file: Path) -> set[str]:
    """The names a list may give a file by (``spellings``): its path below ``root``; none for a file outside."""
    relative = os.path.relpath(os.path.abspath(file), os.path.abspath(root))
    return set() if relative.startswith("..") else spellings(Path(relative).as_posix())


def spellings(path: str) -> set[str]:
    """A path below root, its file name, and each without its suffixes (``ls imagesTr`` lists x_0000.nii.gz)."""
    names = {path, path.rsplit("/", 1)[-1]}
    return names | {strip_suffixes(name) for name in names}


def entries_by_case(entries: list[Entry]) -> dict[str, Entry]:
    """The index by case id. Two files of one case id (a.nii.gz beside a.nii or a.mha, an image listed
    twice in dataset.json) would leave one of them unread and the case counted twice in a computed
    split, refused there under the name of a split file the user never wrote: refused here, naming both."""
    by_case: dict[str, Entry] = {}
    for entry in entries:
        first = by_case.setdefault(entry.case_id, entry)
        if first is not entry:
            what = (f"{entry.image} is listed twice" if first.image == entry.image
                    else f"{first.image} and {entry.image} are both")
            raise DataError(f"{what} case {entry.case_id!r}; rename or remove one of them")
    return by_case


def is_data_file(path: Path) -> bool:
    """Whether ``path`` is a file of the dataset to read (False when nothing is there).

    A link whose target is gone (data linked in from a share that is not mounted, a folder moved) is
    refused: taken for "no file", it would silently drop an image from the dataset, or a label from
    its case, and every score would then be on other cases than the user's."""
    if path.is_file():
        return True
    if path.is_symlink() and not path.exists():
        raise DataError(f"{path} is a link to {os.readlink(path)}, which does not exist; restore what it points "
                        "to (mount the share?) or remove the link")
    return False


def files_below(root: Path) -> Iterator[Path]:
    """Every file below ``root``, at any depth, through linked folders too, each real folder once.

    ``Path.rglob`` does not enter a link to a folder, and data is often linked in rather than copied
    (``ln -s /datasets/kvasir/images images``): such a dataset was "no known data layout", or lost
    the cases under the link. A link back to a folder above (a loop) is entered once only.

    Folders that tools keep for themselves below the data are not entered (``is_tool_folder``):
    Jupyter's ``.ipynb_checkpoints`` copies, a desktop's ``.Trash-1000`` on a USB drive and macOS's
    ``__MACOSX`` hold images that are not the dataset's, and read as cases they would change its splits.

    A folder that cannot be listed (no permission to read it) ends the walk naming it (``refuse_unlisted``):
    skipped, as ``os.walk`` skips it unless told otherwise, its cases were missing without a word, or its
    labels, leaving their images unlabelled.

    A link to a folder that holds the data folder itself (``up -> ..``) is not entered (``encloses_root``):
    walked, the parent's other datasets were read as this dataset's cases."""
    seen: set[str] = set()
    real_root = Path(os.path.realpath(root))
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=refuse_unlisted):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(name for name in dirs
                         if not is_tool_folder(name) and not encloses_root(Path(folder) / name, real_root))
        yield from (Path(folder) / name for name in sorted(files))


def encloses_root(path: Path, real_root: Path) -> bool:
    """Whether ``path`` is a link to ``real_root`` or a folder above it, said once naming the link. Links to
    folders elsewhere (images kept on another disk) and inside the data are walked as folders."""
    if not path.is_symlink():
        return False
    target = Path(os.path.realpath(path))
    if target != real_root and target not in real_root.parents:
        return False
    say_once(f"{path} is a link to {target}, a folder that holds the data folder {real_root}; it is not read, as "
             "the files beside the data are not its cases", key=f"link-above-root-{path}")
    return True


def refuse_unlisted(err: OSError) -> None:
    """Raise the error of a folder below the data that cannot be listed: a refused read as it is (the
    command names the folder and asks for access), anything else as the folder that could not be read."""
    if is_not_permitted(err):
        raise err
    raise DataError(f"cannot list the folder {err.filename}: {os.strerror(err.errno or 0)}; make it readable or "
                    "move it out of the data folder") from None


# Folders a file system keeps at a drive's root: fsck's lost+found (readable by root alone, so a listing
# refused there would end every command on data at the top of a disk), and Windows' own on a USB drive
SYSTEM_FOLDERS = frozenset({"__MACOSX", "lost+found", "System Volume Information", "$RECYCLE.BIN"})


def is_tool_folder(name: str) -> bool:
    """Whether a folder below the data is a tool's own (hidden, macOS's ``__MACOSX`` of a zip's metadata, or a
    file system's, ``SYSTEM_FOLDERS``) rather than the dataset's: its files are copies, deleted files or metadata."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def files_ending_with(folder: Path, suffix: str) -> list[Path]:
    """The files in ``folder`` whose name ends with ``suffix`` in any letter case (a glob matches one
    spelling, so ``DATA_001.NPZ`` or ``SLICE.H5`` from Windows tools went unseen), hidden ones left
    out as the other readers leave them: macOS puts a ``._data_001.npz`` of metadata beside each file
    it copies to a USB drive or zips, and read as a case it ended the command."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.name.lower().endswith(suffix) and not p.name.startswith(".")]


def check_unique(ids: list[str], source: str) -> None:
    """A case named twice in a split (a pasted line, or its id and its file name) would be predicted
    once but scored, trained on or compared twice, skewing means and paired tests: refused, naming it."""
    repeated = [case_id for case_id, count in Counter(ids).items() if count > 1]
    if repeated:
        shown = ", ".join(repeated[:3]) + (" ..." if len(repeated) > 3 else "")
        raise DataError(f"{source} names {len(repeated)} case(s) more than once: {shown}; "
                        "keep one line per case")


def file_ending(name: str) -> str:
    """A file name's ending: ``.nii.gz`` as one, else its last suffix (``x.seg.nrrd`` -> ``.nrrd``)."""
    return ".nii.gz" if name.lower().endswith(".nii.gz") else Path(name).suffix


def strip_suffixes(name: str) -> str:
    """'a/b.nii.gz' -> 'a/b'; 'x.JPG' -> 'x' (only known data suffixes are removed)."""
    lower = name.lower()
    for suffix in DATA_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def natural_key(text: str) -> tuple[list[str | int], str]:
    """Sort key that orders digit runs by value ('case2' before 'case10'); the text breaks ties
    ('a01' vs 'a1') so the order never depends on the file system's listing order."""
    pieces = re.split(r"(\d+)", text)  # text at even positions, digit runs at odd ones
    parts: list[str | int] = [int(p) if i % 2 else p for i, p in enumerate(pieces)]
    return parts, text


def natural_sorted(items, key=str) -> list:
    """``items`` in natural order of ``key(item)`` (file names and case ids that fewsam lists)."""
    return sorted(items, key=lambda item: natural_key(key(item)))


def check_image(image: np.ndarray, path: Path) -> None:
    """(D,H,W) or (D,H,W,3) with at least one pixel: nothing else can be segmented."""
    if image.size == 0 or not (image.ndim == 3 or (image.ndim == 4 and image.shape[-1] == 3)):
        raise DataError(f"{path}: the image has shape {tuple(image.shape)}; expected a non-empty "
                        "2D or 3D image, greyscale or RGB")


def check_finite(image: np.ndarray, path: Path | str, case_id: str, slice_files: list[Path] | None = None) -> None:
    """NaN or Inf would turn a whole slice's intensity normalisation (and its embedding) into
    garbage: an error naming the file and the slices, before anything is fitted or written. A case
    kept in a file per slice (``slice_files``) names the file of the first bad slice: its first file,
    named before, was not the one to fix."""
    finite = np.isfinite(image.reshape(image.shape[0], -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        path = slice_files[bad[0]] if slice_files is not None and len(slice_files) == len(finite) else path
        slices = ("slice " if len(bad) == 1 else "slices ") + ", ".join(map(str, bad[:5])) + \
            (" ..." if len(bad) > 5 else "")
        raise DataError(f"{path}: {slices} of case {case_id} {'holds' if len(bad) == 1 else 'hold'} NaN or Inf values; "
                        "fix the image (or re-export it) and run again")


def check_pair(image: np.ndarray, label: np.ndarray | None, path: Path, label_path: Path | None = None) -> None:
    """Image (D,H,W[,3]) and label (D,H,W) must agree on the voxel grid. The error names both files
    where the label has its own (a mask beside its image), so the user knows which pair to redo."""
    if label is not None and tuple(image.shape[:3]) != tuple(label.shape):
        pair = f"image {path} and label {label_path}" if label_path not in (None, path) else f"{path}"
        raise DataError(f"image and label shapes differ for {pair}: image {tuple(image.shape)}, "
                        f"label {tuple(label.shape)}; re-export the pair on the same grid")


def check_label_values(label: np.ndarray, class_map: ClassMap, path: Path,
                       advice: str = "fix the label or the dataset's class names", what: str = "label") -> None:
    """Values outside the class map are an error naming them, the file (``what`` it is) and ``advice``."""
    allowed = {0, *class_map.labels, *([] if class_map.ignore is None else [class_map.ignore])}
    bad = sorted(int(v) for v in np.unique(label) if int(v) not in allowed)
    if bad:
        raise DataError(f"{what} values {bad} in {path} are not in the class map "
                        f"{class_map.to_json()}; {advice}")


def list_file_in(root: Path, split: str) -> Path | None:
    """``root/<split>.list`` or ``root/<split>.txt``, the first that exists."""
    return next((p for p in (root / f"{split}.list", root / f"{split}.txt") if p.is_file()), None)


SPLIT_SPELLINGS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                   "test": "test", "testing": "test"}


def split_name(value: str) -> str:
    """A split as a table's split column or a folder names it, in fewsam's words: "Train", "Validation",
    "TEST" are train, val and test, which the fit's labelled budget and --val-split take by default (read
    as written, a table of "Train" and "Val" rows had no 'train' split, and no fit could run on it);
    other names ("fold1", "holdout") as written."""
    return SPLIT_SPELLINGS.get(value.strip().casefold(), value.strip())


def deterministic_split(ids: list[str], every: int = 5) -> dict[str, list[str]]:
    """Naturally sorted ids; every ``every``-th (indices every-1, 2*every-1, ...) goes to val (20%),
    and of fewer than ``every`` ids (two or more) the last one: 4 labelled volumes left no validation
    case, so every fit's default ``--val-split val`` was refused, where nnU-Net and MONAI users
    expect at least one case held out. One id alone stays in train (``split`` says why val is empty)."""
    ordered = natural_sorted(ids)
    val = [cid for i, cid in enumerate(ordered) if i % every == every - 1] or ordered[1:][-1:]
    chosen = set(val)
    return {"train": [cid for cid in ordered if cid not in chosen], "val": val}


def computed_splits(entries: Iterable[Entry], test: Iterable[str] = (),
                    rule: Callable[[list[Entry]], dict[str, list[str]]] | None = None) -> dict[str, list[str]]:
    """Every reader's splits where the data names none: the labelled cases into "train" and "val"
    (``rule``, by default ``deterministic_split``), and every case without a label file into "test",
    after the cases the layout itself calls test (``test``: nnU-Net's imagesTs). An unlabelled image
    can neither be validated on nor labelled for training; in "test" it is predicted with
    ``--split test``, and a semi-supervised fit learns from it with ``--unlabeled-split test``."""
    entries = list(entries)
    held = dict.fromkeys(test)
    held.update(dict.fromkeys(e.case_id for e in entries if e.label is None))
    labelled = [e for e in entries if e.case_id not in held]
    splits = (rule or _split_ids)(labelled) if labelled else {}
    if held:
        splits["test"] = list(held)
    return splits


def _split_ids(entries: list[Entry]) -> dict[str, list[str]]:
    """``deterministic_split`` of the subjects (patients), each with all its cases: split by case, a
    patient's other series or images sat in train beside the one validated on, and validation
    scored the model on a patient it had learned. Where each case is its own subject, by case."""
    cases: dict[str, list[str]] = {}
    for e in entries:
        cases.setdefault(e.subject, []).append(e.case_id)
    return {name: [case_id for subject in subjects for case_id in natural_sorted(cases[subject])]
            for name, subjects in deterministic_split(list(cases)).items()}


def refuse_missing_file(path: Path, fix: str, wanted: str = "the dataset names a file") -> None:
    """A file the dataset (or the user: ``wanted`` says which file is expected there) names that is not
    there as a file: a folder of its name (an export or an archive unpacked under the file's name) is
    said as such, not as a missing file the user then finds on disk. ``fix``: what to do, as the layout
    says it."""
    if path.is_dir():
        raise DataError(f"{path} is a folder where {wanted}; {fix}")
    if not path.is_file():
        raise DataError(f"file {path} not found; {fix}")


def first_line(err: Exception) -> str:
    """A library's error as one line: nibabel puts hints on lines of their own (a truncated file's
    "could the file be damaged?"), and fewsam's error messages are one line."""
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file, without comment lines (``#`` first, as users annotate
    lists by hand); an unreadable file becomes a DataError. Any encoding ``user_text`` reads: a
    byte-order mark would otherwise stick to the first case id."""
    try:
        lines = [ln.strip() for ln in user_text(path).splitlines()]
    except OSError as err:
        raise DataError(f"cannot read list file {path}: {err}") from None
    return [ln for ln in lines if ln and not ln.startswith("#")]


def read_list_lines(path: Path) -> list[str]:
    """The cases a list file names, one per line (``read_lines``), or in a ``.json`` list: a JSON
    array of case ids or file paths, or of MONAI datalist records (``{"image": path, "label": ...}``),
    each named by its image. Read as lines, a JSON file would be one "case" of all its text, and the
    error would quote every byte of it."""
    if path.suffix.lower() != ".json":
        return read_lines(path)
    try:
        items = json.loads(user_text(path))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read list file {path}: {first_line(err)}") from None
    if not isinstance(items, list):
        what = (f"a JSON object (keys {', '.join(map(str, list(items)[:4]))})" if isinstance(items, dict)
                else f"the JSON value {_shortened(json.dumps(items))}")
        raise DataError(f"list file {path} holds {what}, not a list of cases; give a JSON list of case ids, file "
                        "paths or records with an \"image\" (a MONAI datalist's \"validation\" list, saved on its "
                        "own), or a text file with one case per line")
    lines = [item.get("image") if isinstance(item, dict) else item for item in items]
    bad = next((item for item, line in zip(items, lines) if not isinstance(line, str)), None)
    if bad is not None:
        raise DataError(f"list file {path} holds {_shortened(json.dumps(bad))}, which names no case; each item "
                        'must be a case id, a file path or a record with an "image" path')
    return [line.strip() for line in lines if line.strip()]


def _shortened(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for a one-line message."""
    return text if len(text) <= limit else text[:limit] + "..."


def to_image_array(array: np.ndarray, path: Path) -> np.ndarray:
    """Pixel values as float32; complex or text values, or magnitudes beyond float32, are a DataError."""
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: pixel type {array.dtype} is not an image; store real numbers")
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        finite = array[np.isfinite(array)]
        if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
            raise DataError(f"{path}: the image holds values beyond float32's range "
                            f"(max |value| {np.abs(finite).max():.3g}); rescale it")
    return array.astype(np.float32)


ROUNDING_NOISE = 1e-3  # float labels this close to integers are class indices stored with rounding noise


class NotClassIndices(DataError):
    """A label that reads whole but holds values that are no class values 0-65535 (-1, or 70000): not
    a damaged file, which a scan of the dataset's classes skips, but one whose classes no command can
    have, so the scan stops on it rather than open the dataset with some of its classes missing."""


def to_label_array(label: np.ndarray, path: Path, what: str = "label") -> np.ndarray:
    """Integer class values as uint8, or uint16 where a value is above 255 (``label_dtype``); non-integers
    and values outside 0-65535 are a DataError.

    Float labels within ``ROUNDING_NOISE`` of integers (a label saved through a scale factor, or
    as float32 by a converter: 0.99999994 for 1) are rounded, said once; values further off (0.5:
    a label resampled with linear interpolation) are refused. ``what`` names the file in errors: a
    dataset's "label", or a tool's "prediction" read back for scoring."""
    if label.dtype.kind not in "biuf":
        raise DataError(f"{path}: {what} type {label.dtype} cannot hold class indices; store integers")
    label = rounded_float_label(label, path, what)
    if not label.size:
        return label.astype(np.uint8)
    low, high = float(label.min()), float(label.max())  # as Python numbers: 65535 overflows a float16
    if low < 0 or high > MAX_LABEL_VALUE:
        raise NotClassIndices(_beyond_label_values_message(np.unique(label), path, what))
    if high > 255:  # an 8-bit label cannot hold more classes than fewsam segments; a 16-bit one can
        refuse_too_many_values(np.unique(label), path, what)
    return label.astype(label_dtype(int(high)))


def _beyond_label_values_message(values: np.ndarray, path: Path, what: str) -> str:
    """Why a label with values outside 0-65535 is refused: its values are its classes, stored in 16 bits
    at most, so -1 or 70000 would wrap onto another class."""
    bad = [int(v) for v in values if v < 0 or v > MAX_LABEL_VALUE]
    shown = ", ".join(map(str, bad[:5])) + (f", ... ({len(bad)} values)" if len(bad) > 5 else "")
    classes = int(np.count_nonzero(values))
    return (f"{what} values {shown} in {path} are not class values 0-{MAX_LABEL_VALUE} (the {what} holds {classes} "
            f"classes, fewsam at most {MAX_CLASSES}); relabel the classes you need as 1, 2, ...")


def refuse_too_many_values(values: np.ndarray, path: Path, what: str) -> None:
    """A label of more class values than fewsam segments (FreeSurfer's full parcellation, or a label map
    numbering every voxel) is refused when read, naming the count, not first when the classes are counted."""
    classes = int(np.count_nonzero(values))
    if classes > MAX_CLASSES:
        raise NotClassIndices(f"{what} {path} holds {classes} classes, fewsam at most {MAX_CLASSES}; keep the "
                              "classes you need (merge or leave out the others)")


def drawn_time_frames(frames: np.ndarray) -> list[int]:
    """The time frames on the last axis (0 = the first) that hold a class: those a cine's label draws."""
    return [t for t in range(frames.shape[-1]) if frames[..., t].any()]


def refuse_cine_label(channels: np.ndarray, path: Path, what: str) -> None:
    """A label of class indices over time frames (a cine's, drawn on its end-diastolic and end-systolic frames, the
    others empty), where the layout says no frame of it (M&Ms' own, ``cine_frames``, makes a case of each drawn
    frame), is refused naming the frames that hold classes: "neither class indices nor one-hot, store one volume"
    did not say which volumes are the labels, and its first frame alone, read as the cine's first volume is, may
    be an empty one taught as background."""
    drawn = drawn_time_frames(channels)
    if drawn and len(drawn) < channels.shape[-1] and len(np.unique(channels[..., drawn[0]])) > 2:
        shown = ", ".join(str(t) for t in drawn[:6]) + (" ..." if len(drawn) > 6 else "")
        raise DataError(f"{path}: the {what} holds {channels.shape[-1]} time frames of class indices, classes in frame(s) "
                        f"{shown} only (0 = the first); fewsam reads one 3D {what} per image: save each drawn frame of "
                        f"the image and of the {what} as 3D files (<case>_ED.nii.gz + <case>_ED_gt.nii.gz), or lay "
                        "the cines out as M&Ms does (<code>/<code>_sa.nii.gz + <code>_sa_gt.nii.gz), a case per drawn "
                        "frame")


def one_hot_to_indices(channels: np.ndarray, path: Path, what: str = "label") -> np.ndarray:
    """A one-hot label, one 0/1 volume per class on its last axis (as MONAI pipelines write
    segmentations), as the class index of each voxel: fewsam learns one class per voxel.

    Where every voxel is in exactly one channel, channel 0 is the background and channel c is class
    c; where some voxel is in none, there is no background channel and channel c is class c + 1.
    Channels holding other values than 0 and 1 (probabilities, time frames) or sharing a voxel
    (overlapping classes, nnU-Net's regions) have no such reading and are refused; float 0/1 within
    rounding noise are 0 and 1 (``rounded_float_label``). ``what`` names the file in messages: a dataset's
    "label", or a tool's "prediction"."""
    channels = rounded_float_label(channels, path, what)
    values = np.unique(channels)
    if not np.isin(values, (0, 1)).all():
        refuse_cine_label(channels, path, what)
        shown = ", ".join(f"{v:g}" for v in values[~np.isin(values, (0, 1))][:3])
        raise DataError(f"{path}: the {what} holds {channels.shape[-1]} volumes on its last axis with values other "
                        f"than 0 and 1 ({shown}), so it is neither one volume of class indices nor one-hot; "
                        "store one volume of class indices")
    counts = np.count_nonzero(channels, axis=-1)
    if (counts > 1).any():
        voxel = tuple(int(i) for i in np.argwhere(counts > 1)[0])
        holding = ", ".join(str(int(c)) for c in np.flatnonzero(channels[voxel]))
        raise DataError(f"{path}: its one-hot channels overlap (voxel {voxel} is in channels {holding}), so a voxel "
                        f"has no one class; fewsam segments one class per voxel: store one volume of class indices")
    background = bool(counts.all())
    check_class_count(channels.shape[-1] - int(background), path)
    indices = np.argmax(channels, axis=-1) + (0 if background else 1)
    indices[counts == 0] = 0
    say_once(f"{path}: a one-hot {what} of {channels.shape[-1]} channels is read as class indices (channel c as class "
             f"{'c: channel 0 is the background' if background else 'c + 1: no voxel-wide background channel'})",
             key=f"one-hot-{what}-{background}")
    return indices.astype(np.uint8)


def rounded_float_label(label: np.ndarray, path: Path, what: str = "label") -> np.ndarray:
    """A float label's values rounded to the integers they store (``to_label_array``'s rule); other
    types as they are. NaN, Inf and values off integers by more than ``ROUNDING_NOISE`` are a DataError."""
    if label.dtype.kind != "f":
        return label
    if not np.isfinite(label).all():
        raise DataError(f"{path}: the {what} holds NaN or infinite values; {what}s must be class indices")
    rounded = np.rint(label)
    off = np.abs(label - rounded)
    if off.max(initial=0) > ROUNDING_NOISE:
        bad = sorted({float(v) for v in np.unique(label[off > ROUNDING_NOISE])[:5]})
        raise DataError(f"{path}: the {what} holds non-integer values ({', '.join(f'{v:g}' for v in bad)}); "
                        f"{what}s must be class indices (resampled with nearest neighbour, not interpolation)")
    if off.max(initial=0) > 0:
        say_once(f"{path}: label values off integers by up to {off.max():.1g} (float storage) are rounded "
                 "to class indices", key="label-rounding")
    return rounded


CLASSES_JSON_HELP = ('write {"1": "name"}, {"classes": {"1": "name"}} or '
                     '{"1": {"name": "name", "min": 128, "max": 255}}')
CLASS_KEYS = {"name", "pixel", "min", "max", "colour", "color"}


def refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (``json.loads``'s ``object_pairs_hook``): JSON keeps the
    last of a repeated key without a word, so ``{"1": "liver", "1": "tumour"}`` would lose a class."""
    keys = [key for key, _ in pairs]
    repeated = next((key for key in keys if keys.count(key) > 1), None)
    if repeated is not None:
        raise ValueError(f"the key {repeated!r} appears twice; give each entry once")
    return dict(pairs)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else is a DataError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=refuse_repeated_keys)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object; {CLASSES_JSON_HELP}")
    return data


def class_specs(spec: dict[str, Any], path: Path, with_background: bool = False,
                largest: int = 255) -> dict[int, dict[str, Any]]:
    """classes.json's classes as {class: {"name": str, "pixel"/"min"/"max": int, "colour": (r, g, b), ...}}.

    Accepted: {"classes": {...}} or the classes at top level (beside optional "pixel_values" and
    "rgb"); each class is a name or an object with "name" and optional "pixel", "min", "max", and
    "colour" (or "color": [r, g, b] or "#rrggbb", for masks that store each class as a colour).
    Class 0 is the background and never a class of its own, so a "0" entry only names it (and may
    give the background's colour: kept as class 0 with ``with_background``). A class is at most
    ``largest``: 255 for 8-bit masks, ``MAX_LABEL_VALUE`` for label maps (``to_label_array``).
    """
    classes = spec["classes"] if "classes" in spec else {
        k: v for k, v in spec.items() if k not in ("pixel_values", "rgb", "ignore")}
    if not isinstance(classes, dict) or not classes:
        raise DataError(f"{path} defines no classes; {CLASSES_JSON_HELP}")
    out: dict[int, dict[str, Any]] = {}
    for key, value in classes.items():
        entry = {"name": value} if isinstance(value, str) else value
        if not str(key).strip().isdecimal() or not isinstance(entry, dict) or \
                not isinstance(entry.get("name"), str) or set(entry) - CLASS_KEYS:
            raise DataError(f"{path}: bad class entry {key!r}: {value!r}; {CLASSES_JSON_HELP} "
                            f"(class keys: {', '.join(sorted(CLASS_KEYS))})")
        for bound in ("pixel", "min", "max"):
            v = entry.get(bound)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255):
                raise DataError(f"{path}: class {key} has {bound}={v!r}; mask values are whole "
                                "numbers 0-255")
        if int(key) > largest:
            raise DataError(f"{path}: class {key} is above {largest}; classes are 1-{largest}"
                            + (" in 8-bit masks" if largest == 255 else ""))
        entry = _with_colour(entry, key, path)
        if int(key) in out:
            same = next(k for k in classes if k != key and str(k).strip().isdecimal() and int(k) == int(key))
            raise DataError(f"{path}: the keys {same!r} and {key!r} both give class {int(key)}; name each class once")
        if int(key) != 0 or with_background:
            out[int(key)] = entry
    classes = [c for c in out if c != 0]
    if not classes:
        raise DataError(f"{path} defines only the background (0); {CLASSES_JSON_HELP}")
    check_class_count(len(classes), path)
    check_class_names({c: out[c]["name"] for c in classes}, path)
    return out


def check_class_names(names: dict[int, str], path: Path) -> None:
    """Every class needs a name of its own: scores, reports and runs key each class by its name, so
    two classes named alike (in any letter case, as segments are matched) would be scored as one, the
    later overwriting the earlier, and a blank name shows as no class at all."""
    seen: dict[str, int] = {}
    for value, name in sorted(names.items()):
        key = " ".join(name.split()).casefold()
        if not key:
            raise DataError(f"{path}: class {value} has a blank name; give each class a name")
        if key in seen:
            raise DataError(f"{path}: classes {seen[key]} and {value} are both named {name.strip()!r}; give each "
                            "class a name of its own (scores are kept by class name)")
        seen[key] = value


def _with_colour(entry: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """A class entry with its "colour" (or "color") as an (r, g, b) tuple of 0-255, where it gives one:
    as a list [255, 0, 0] (how CholecSeg8k and most scripts write colours) or as "#ff0000" (how
    annotation tools' label maps and colour pickers show them)."""
    given = [k for k in ("colour", "color") if k in entry]
    if not given:
        return entry
    if len(given) > 1:
        raise DataError(f"{path}: class {key} gives both \"colour\" and \"color\"; keep one")
    value = entry[given[0]]
    colour: Any = value
    if isinstance(value, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", value.strip()):
        colour = [int(value.strip()[i:i + 2], 16) for i in (1, 3, 5)]
    if not isinstance(colour, list) or len(colour) != 3 or \
            any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255 for v in colour):
        raise DataError(f"{path}: class {key} has {given[0]}={value!r}; give a colour as [red, green, blue], "
                        'each 0-255, e.g. [255, 0, 0], or as "#ff0000"')
    rest = {k: v for k, v in entry.items() if k not in given}
    return {**rest, "colour": tuple(colour)}


def class_map_from_json(path: Path) -> ClassMap:
    """The class names of a classes.json (any accepted form), for label-file layouts, with the value of
    unannotated voxels where it gives one (``"ignore": 255``, as nnU-Net's dataset.json does)."""
    spec = read_json_object(path)
    specs = class_specs(spec, path, largest=MAX_LABEL_VALUE)
    ignore = ignore_value(spec["ignore"], path) if "ignore" in spec else None
    return with_ignore(ClassMap({c: e["name"] for c, e in sorted(specs.items())}), ignore, path)


def classes_json_in(root: Path) -> ClassMap | None:
    """The class map of ``root``'s classes.json, None where it has none (the classes then come from the label
    values found)."""
    path = root / CLASSES_JSON
    return class_map_from_json(path) if path.is_file() else None


def ignore_value(value: Any, path: Path, largest: int = MAX_LABEL_VALUE) -> int:
    """The label value of unannotated pixels an "ignore" entry gives (nnU-Net's dataset.json, classes.json):
    one integer, not the background's 0, that the labels can store (``largest``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{path}: the 'ignore' label must be one integer label value (nnU-Net: the highest, "
                        f"e.g. \"ignore\": 4 after classes 1-3), not {value!r}")
    if value == 0:
        raise DataError(f"{path}: the 'ignore' label cannot be 0, the background; give unannotated voxels their "
                        "own value (nnU-Net: the highest label value)")
    if not 0 < value <= largest:
        raise DataError(f"{path}: labels entry 'ignore' has value {value}; label values are 0 (the background) to "
                        f"{largest}")
    return value


def with_ignore(class_map: ClassMap, ignore: int | None, path: Path) -> ClassMap:
    """``class_map`` with its unannotated voxels' value, which must not also be a class's."""
    if ignore is not None and ignore in class_map.names:
        raise DataError(f"{path}: the 'ignore' label's value {ignore} is also the class {class_map.names[ignore]!r}; "
                        "give unannotated voxels a value of their own (nnU-Net: the highest label value)")
    return replace(class_map, ignore=ignore)
