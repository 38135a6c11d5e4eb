"""M&Ms' short-axis cines as its OpenDataset unpacks (Campello et al. 2021, the Multi-Centre, Multi-Vendor and
Multi-Disease Cardiac Segmentation challenge): a 4D cine per subject, its label drawn on two of its time frames:

    OpenDataset/Training/Labeled/A0S9V9/A0S9V9_sa.nii.gz + A0S9V9_sa_gt.nii.gz   (x, y, z, t; classes on ED and ES)
    OpenDataset/Training/Unlabeled/B0N3W8/B0N3W8_sa.nii.gz                     (no label)
    OpenDataset/Validation/<code>/..., OpenDataset/Testing/<code>/...         (with their labels)
    OpenDataset/211230_M&Ms_Dataset_information_diagnosis_opendataset.csv     (External code, Vendor, Centre, ED, ES,
                                                                               Pathology, Sex, Age, ...)

A case is a time frame of a cine, read as a 3D volume on the cine's spatial geometry (``nifti.time_frame``): a 4D
label is no one label of its cine, and its first frame, read as a 4D image is, is mostly an undrawn one. Each
labelled cine gives the frames its table row names (``<code>_ED``, ``<code>_ES``: frames 0-based, as the table
numbers them), a frame its label leaves undrawn refused when read (the label is the truth); without a row naming
both, the frames its label draws classes on, named by phase where the row names one, else by number
(``<code>_frame09``). A cine without a label is one unlabelled case, not one per time frame: its ED frame
(``<code>_ED``), else its first (``<code>_frame00``). The table is found in the folder given or in one of the
three above it (as ``Training/Labeled/`` lies below it), by its ``External code`` column; its other columns, the
frame numbers left out, are each case's group attributes (``--group-by Vendor``), beside the case's ``phase``.

Splits: the cases of ``Validation/`` are "val", of ``Testing/`` "test", the other labelled ones "train" (without a
``Validation/``, "train" and "val" by every reader's rule, a subject's frames together), the unlabelled cines
"unlabeled" (``--unlabeled-split unlabeled`` makes them a semi-supervised fit's pool). Classes
1 = LV, 2 = Myo, 3 = RV (spelt as ACDC's); predictions ``<case>.nii.gz``, one 3D frame on the cine's grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewsam.data.attributes import AttributeTable, table_keyed_by
from fewsam.data.readers import patient_frames
from fewsam.data.readers.case_folders import CaseFolderDataset
from fewsam.data.readers.common import Entry, Read, drawn_time_frames, natural_sorted
from fewsam.data.readers.itk_volume import prediction_ending
from fewsam.data.readers.nifti import _load, stored_values
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.progress import say_once

CLASS_MAP = ClassMap({1: "LV", 2: "Myo", 3: "RV"})
CINE_ENDINGS = (".nii.gz", ".nii")
# Folders of the release that hold subject folders, directly or one level down (Training/Labeled/)
PART_FOLDERS = frozenset({"training", "labeled", "labelled", "unlabeled", "unlabelled", "validation", "testing"})
VAL_FOLDERS = frozenset({"validation", "val"})
CODE_COLUMN = "external code"
UNLABELLED_SPLIT = "unlabeled"  # the release's Training/Unlabeled/, spelt as --unlabeled-split
TABLE_LEVELS_UP = 3  # the table lies beside Training/, three levels above a subject folder


def cine_file(folder: Path, suffix: str) -> Path | None:
    """``<folder>/<folder>_<suffix>.nii.gz`` (or ``.nii``) where it is a file: M&Ms names a subject's files so."""
    return next((path for ending in CINE_ENDINGS
                 if (path := folder / f"{folder.name}_{suffix}{ending}").is_file()), None)


def is_subject_folder(folder: Path) -> bool:
    return cine_file(folder, "sa") is not None


def subject_folders(root: Path) -> list[Path]:
    """The subject folders (``<code>/<code>_sa.nii.gz``) at or below root, entering only the release's own
    folders (Training/, Labeled/, Validation/...) on the way: a cheap look, as every folder given is looked at.
    Training's come first and Testing's last, as the release orders its parts."""
    if not root.is_dir():
        return []
    if is_subject_folder(root):
        return [root]
    found = []
    folders = natural_sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                             key=lambda p: p.name)
    for folder in sorted(folders, key=_part_order):
        if is_subject_folder(folder):
            found.append(folder)
        elif folder.name.lower() in PART_FOLDERS:
            found.extend(subject_folders(folder))
    return found


def _part_order(folder: Path) -> int:
    """Training first, then Validation, Testing last (the subject folders among them by name)."""
    name = folder.name.lower()
    return 2 if name in patient_frames.TEST_FOLDERS else 1 if name in VAL_FOLDERS else 0


def detect(root: Path) -> bool:
    return bool(subject_folders(root))


def _part_of(root: Path, folder: Path) -> str | None:
    """"test" or "val" for a subject folder below a Testing/ or Validation/ folder of root, else None."""
    names = {part.lower() for part in folder.relative_to(root).parts[:-1]} if folder != root else set()
    return "test" if names & patient_frames.TEST_FOLDERS else "val" if names & VAL_FOLDERS else None


def info_table(root: Path) -> AttributeTable | None:
    """The release's table of subjects (``..._M&Ms_Dataset_information_...csv``, ``mnms_dataset_info.csv``) in root
    or a folder above it, keyed by its External code column; None where there is none."""
    table = table_keyed_by(root, CODE_COLUMN, TABLE_LEVELS_UP)
    if table is not None:
        say_once(f"{table.source}: M&Ms' table of subjects; its ED and ES name each cine's labelled frames, its other "
                 "columns are the cases' group attributes", key=f"mnms-table-{table.source}")
    return table


def drawn_frames(label: Path) -> list[int]:
    """The time frames (0 = the first) of a cine's 4D label that hold a class."""
    data = stored_values(label)
    if data.ndim != 4:
        raise DataError(f"{label}: a cine's label holds its time frames on a 4th axis (x, y, z, t), this one has "
                        f"shape {data.shape}")
    return drawn_time_frames(data)


def case_frames(code: str, label: Path | None, phases: dict[int, str]) -> dict[int, str]:
    """Frame -> the name it gives its case (``<code>_ED``, ``<code>_frame09``): the table's ED and ES where it
    names both, else the frames the label draws (one unlabelled frame: ED, else the first)."""
    named = {frame: f"{code}_{phase}" for frame, phase in phases.items()}
    if label is None:
        ed = next((frame for frame, phase in phases.items() if phase == "ED"), 0)
        return {ed: named.get(ed, f"{code}_frame{ed:02d}")}
    if len(named) == len(patient_frames.PHASES):
        return {frame: named[frame] for frame in sorted(named, key=phases.__getitem__)}  # ED first, as numbered or not
    return {frame: named.get(frame, f"{code}_frame{frame:02d}") for frame in drawn_frames(label)}


def is_cine(image: Path) -> bool:
    """Whether an image holds time frames on a 4th axis, by its header alone; a file that cannot be read counts as
    one, and its case's read says why."""
    try:
        shape = _load(image).shape
    except DataError:
        return True
    return len(shape) > 3 and shape[3] > 1


def without_frame_numbers(row: dict[str, Any]) -> dict[str, Any]:
    """A table row's group attributes: its frame numbers (ED, ES) number frames, they group no subjects."""
    return {k: v for k, v in row.items() if k.lower() not in patient_frames.FRAME_NUMBERS}


def subject_entries(folder: Path, table: AttributeTable | None) -> list[Entry]:
    """The cases of one subject folder: a frame each (``case_frames``), with the table row's attributes; one case
    (``<code>``) where the image is one 3D frame already (a copy saved frame by frame)."""
    image, label, code = cine_file(folder, "sa"), cine_file(folder, "sa_gt"), folder.name
    row = table.row_for(code, code) if table is not None else {}
    if not is_cine(image):
        return [Entry(case_id=code, image=image, label=label, rel_path=code + prediction_ending(image.name),
                      subject=code, attributes=without_frame_numbers(row))]
    phases = patient_frames.frame_phases({k: str(v) for k, v in row.items() if v is not None},
                                         Path(table.source) if table is not None else None)
    attributes = without_frame_numbers(row)
    entries = []
    for frame, case in case_frames(code, label, phases).items():
        phase = phases.get(frame)
        entries.append(Entry(case_id=case, image=image, label=label, rel_path=case + prediction_ending(image.name),
                             subject=code, attributes={**attributes, **({"phase": phase} if phase else {})},
                             frame=frame))
    return entries


class MnmsDataset(CaseFolderDataset):
    layout = "mnms"

    def __init__(self, root: Path, entries: list[Entry], test_ids: list[str], val_ids: tuple[str, ...],
                 table: AttributeTable | None) -> None:
        self.table = table
        super().__init__(root, entries, test_ids, val_ids)

    def split_off_unlabelled(self, tested: set[str]) -> None:
        """The unlabelled cines outside Testing/ (``Training/Unlabeled/``) as the split "unlabeled", not in "test"
        as every reader's unlabelled images are: there they stopped ``evaluate --split test`` of the labelled test
        cases (no label to score), and a semi-supervised fit names them with ``--unlabeled-split unlabeled``."""
        pool = [case for case, entry in self.entries.items() if entry.label is None and case not in tested]
        if not pool:
            return
        held = set(pool)
        test = [case for case in self.splits.get("test", []) if case not in held]
        self.splits = {name: ids for name, ids in self.splits.items() if name != "test"}
        self.splits.update({"test": test} if test else {}, **{UNLABELLED_SPLIT: pool})

    def layout_classes(self, entries: list[Entry]) -> ClassMap | None:
        return CLASS_MAP

    @property
    def storage(self) -> str:
        """What ``fewsam info`` says of the files: a case is a time frame of a cine."""
        first = next(iter(self.entries.values()))
        image = Path(first.image).relative_to(self.root).as_posix()
        return (f"4D short-axis cines ({image}, ...), a case per labelled time frame (<code>_ED, <code>_ES) and one "
                "per unlabelled cine; labels: class index per voxel on the frames of <code>_sa_gt; predictions: "
                "<case>.nii.gz, the frame's 3D grid")

    def new_label_rel_path(self, entry: Entry) -> str:
        """Beside the image, named as the case plus ``_gt``, as the release names labels: of a cine's frame a 3D
        label of that frame, which never replaces the cine's 4D label of all its frames."""
        rel = Path(entry.image).relative_to(self.root)
        return rel.with_name(f"{Path(entry.case_id).name}_gt{prediction_ending(rel.name)}").as_posix()

    def label_rel_path(self, entry: Entry) -> str:
        """A case's label goes where ``new_label_rel_path`` puts it, also where it has a label: a cine's is the 4D
        file of all its frames, which one frame's label must not replace."""
        return self.new_label_rel_path(entry)

    def _read(self, entry: Entry) -> Read:
        read = super()._read(entry)
        if read.label is not None and entry.frame is not None and not read.label.any():
            self.refuse_undrawn_frame(entry)
        return read

    def refuse_undrawn_frame(self, entry: Entry) -> None:
        """A frame the table names whose label holds no class, where other frames hold some, is refused naming
        them: taught as background, it would teach the heart's voxels as none."""
        drawn = drawn_frames(entry.label)
        if drawn and entry.frame not in drawn:
            source = self.table.source if self.table is not None else "the table"
            raise DataError(f"{entry.label}: frame {entry.frame} ({entry.case_id}, as {source} names it) holds no "
                            f"class, frame(s) {', '.join(map(str, drawn))} do (0 = the first); correct the ED and ES "
                            f"of {entry.subject} in that table")


def open_cine_frames(root: Path) -> MnmsDataset:
    table = info_table(root)
    if table is None:
        say_once(f"{root}: no M&Ms table of subjects (External code, ED, ES, ...) in it or above it; each cine's "
                 "cases are the frames its label draws, named by number, an unlabelled cine's its first frame",
                 key="mnms-no-table")
    folders = subject_folders(root)
    parts: dict[str, str | None] = {}
    entries = []
    for folder in folders:
        found = subject_entries(folder, table)
        parts.update({e.case_id: _part_of(root, folder) for e in found})
        entries.extend(found)
    test = [case for case, part in parts.items() if part == "test"]
    val = tuple(case for case, part in parts.items() if part == "val")
    dataset = MnmsDataset(root, entries, test, val, table)
    dataset.split_off_unlabelled(set(test))
    return dataset

