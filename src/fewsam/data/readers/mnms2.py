"""M&Ms-2 (the Multi-Disease, Multi-View and Multi-Centre Right Ventricular Segmentation challenge) as it unpacks:

    MnM2/dataset/001/001_SA_ED.nii.gz + 001_SA_ED_gt.nii.gz, 001_SA_ES + _gt   short axis, end-diastole and -systole
                     001_LA_ED.nii.gz + 001_LA_ED_gt.nii.gz, 001_LA_ES + _gt   long axis (4-chamber), one slice each
                     001_SA_CINE.nii.gz, 001_LA_CINE.nii.gz                     the 4D cines, unlabelled: not read
    MnM2/dataset_information.csv                                               SUBJECT_CODE, DISEASE, VENDOR, SCANNER,
                                                                               FIELD

Each view and phase of a subject is a case, named as the folder scan names it (``001/001_SA_ED``), of its subject
(``001``), with its ``view`` (SA or LA) and ``phase`` (ED or ES) as group attributes: the long-axis slices are
cases of their own beside the short-axis volumes, as the challenge segments both (a fit on one view takes a list
file of its cases). The cines are no cases (said once): their labelled frames are the ED and ES files. The table,
in the folder given or up to two above it, keyed by SUBJECT_CODE (``1`` for ``001``), gives the subjects' group
attributes (``--group-by VENDOR``). Classes 1 = LV, 2 = Myo, 3 = RV, as M&Ms'. Splits are the challenge's
(``release_part``): subjects 001-160 train, 161-200 val, 201-360 test, numbered by their folder's name; a subject
outside those numbers trains, and where no validation subject is there, val is drawn from the training subjects by
every reader's rule, a subject's cases together. Predictions ``<case>.nii.gz`` on each image's grid.
"""

from __future__ import annotations

from pathlib import Path

from fewsam.data.attributes import AttributeTable, table_keyed_by
from fewsam.data.readers import patient_frames
from fewsam.data.readers.cine_frames import MnmsDataset, cine_file
from fewsam.data.readers.common import Entry, natural_sorted
from fewsam.data.readers.itk_volume import prediction_ending
from fewsam.data.readers.nifti import case_name
from fewsam.progress import say_once

VIEWS = ("SA", "LA")
SUBJECT_COLUMN = "SUBJECT_CODE"
DATASET_FOLDER = "dataset"  # MnM2/dataset/<subject>/, beside the table
TABLE_LEVELS_UP = 2  # the table lies beside dataset/, two levels above a subject folder
CINES = tuple(f"{view}_CINE" for view in VIEWS)
# The challenge's division of its 360 subjects, by number: the last of each part
LAST_TRAINING, LAST_VALIDATION, LAST_TESTING = 160, 200, 360


def is_subject_folder(folder: Path) -> bool:
    return cine_file(folder, "SA_ED") is not None


def subject_folders(root: Path) -> list[Path]:
    """The subject folders (``<id>/<id>_SA_ED.nii.gz``): root itself, its sub-folders, or those of its
    ``dataset/`` folder (``MnM2/`` given)."""
    if is_subject_folder(root):
        return [root]
    for folder in (root, root / DATASET_FOLDER):
        found = [p for p in natural_sorted(folder.iterdir(), key=lambda p: p.name)
                 if p.is_dir() and is_subject_folder(p)] if folder.is_dir() else []
        if found:
            return found
    return []


def detect(root: Path) -> bool:
    return bool(subject_folders(root))


def subject_entries(root: Path, folder: Path, table: AttributeTable | None) -> list[Entry]:
    """A subject's ED and ES images of each view, with their labels and the table row's attributes."""
    prefix = "" if folder == root else f"{folder.relative_to(root).as_posix()}/"
    row = table.row_for(folder.name, folder.name) if table is not None else {}
    entries = []
    for view in VIEWS:
        for phase in patient_frames.PHASES:
            image = cine_file(folder, f"{view}_{phase}")
            if image is not None:
                case = prefix + case_name(image)
                entries.append(Entry(case_id=case, image=image, label=cine_file(folder, f"{view}_{phase}_gt"),
                                     rel_path=case + prediction_ending(image.name), subject=folder.name,
                                     attributes={**row, "view": view, "phase": phase}))
    _say_cines_not_read(folder)
    return entries


def _say_cines_not_read(folder: Path) -> None:
    cines = [path.name for name in CINES if (path := cine_file(folder, name)) is not None]
    if cines:
        say_once(f"{folder}: {', '.join(cines)} not read: a subject's cases are its ED and ES images of each view, "
                 "as they are labelled; the same in every subject folder", key="mnms2-cines")


def release_part(subject: str) -> str:
    """The split the challenge gives a subject, by its folder's number: "val" for 161-200, "test" for 201-360,
    else "train", so that scores compare with the challenge's and its test subjects are never trained on."""
    number = int(subject) if subject.isdecimal() else 0
    if LAST_TRAINING < number <= LAST_VALIDATION:
        return "val"
    return "test" if LAST_VALIDATION < number <= LAST_TESTING else "train"


class Mnms2Dataset(MnmsDataset):
    layout = "mnms2"

    @property
    def storage(self) -> str:
        """What ``fewsam info`` says of the files: a case per view and phase."""
        first = next(iter(self.entries.values()))
        image = Path(first.image).relative_to(self.root).as_posix()
        return (f"a case per view (SA, LA) and phase (ED, ES) of each subject ({image}, ...; the cines not read); "
                "labels: class index per voxel (<case>_gt); predictions: <case>.nii.gz on the image's grid")


def open_mnms2(root: Path) -> Mnms2Dataset:
    table = table_keyed_by(root, SUBJECT_COLUMN, TABLE_LEVELS_UP)
    if table is not None:
        say_once(f"{table.source}: M&Ms-2's table of subjects; its columns are the cases' group attributes",
                 key=f"mnms2-table-{table.source}")
    entries = [e for folder in subject_folders(root) for e in subject_entries(root, folder, table)]
    test = [e.case_id for e in entries if release_part(e.subject) == "test"]
    val = tuple(e.case_id for e in entries if release_part(e.subject) == "val")
    return Mnms2Dataset(root, entries, test, val, table)
