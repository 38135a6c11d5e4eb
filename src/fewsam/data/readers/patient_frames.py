"""A folder per patient of time frames, as ACDC's own release unpacks (its ``database/`` folder):

    database/training/patient001/patient001_frame01.nii.gz + patient001_frame01_gt.nii.gz   (end-diastole)
                                 patient001_frame12.nii.gz + patient001_frame12_gt.nii.gz   (end-systole)
                                 patient001_4d.nii.gz (the cine), Info.cfg, MANDATORY_CITATION.md
    database/testing/patient101/...

Each frame (``<patient>_frame<N>``) is a case named as its file, of its patient (``acdc_h5.subject_of``),
with its ``_gt`` label where there is one: the frames are what the release labels, and a case named as
the h5 release names its volumes keeps list files and tables written for one valid for the other. The
patient's other volumes (the 4D cine the frames are taken from) are no cases, said once: as a case, a
cine sequence was an unlabelled "test" case whose first time point was segmented. The classes are
ACDC's (``acdc_h5.CLASS_MAP``, one source), unless a classes.json names others. ``Info.cfg``
(``Group: DCM``, ``Height: 184.0``, ``Weight: 95.0``) gives each frame its patient's group attributes, and
its ``ED: 1`` / ``ES: 12`` lines each frame's ``phase``, "ED" or "ES" (``--group-by phase``), where its
number is one of them. Attribute names are matched in any letter case (``attributes.attribute_value``), so
``--group-by group`` groups by Info.cfg's ``Group`` as by the h5 release's patient_info.csv ``group``.

Given the folder above the patient folders (``database/``), a sub-folder named as a split holding them
is read: ``testing/`` (``test/``) is the ``test`` split, the patients of the others (``training/``) are
split into train and val by the rule of every reader (``computed_splits``), a patient's frames together.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fewsam.data.attributes import parse_cell, user_text
from fewsam.data.readers.acdc_h5 import CLASS_MAP, subject_of
from fewsam.data.readers.common import Entry, natural_sorted
from fewsam.data.readers.itk_volume import prediction_ending
from fewsam.data.readers.nifti import _nifti_files, case_name
from fewsam.errors import DataError
from fewsam.progress import say_once

__all__ = ["CLASS_MAP", "frame_entries", "frames_among", "is_frame_case", "patients_by_split_folder",
           "patients_in_test_folders"]

FRAME = re.compile(r"_frame(\d+)$", re.IGNORECASE)
INFO_FILE = "Info.cfg"
# Info.cfg's frame numbers (which frame is end-diastole, end-systole, how many there are): no groups of patients
FRAME_NUMBERS = frozenset({"ed", "es", "nbframe"})
PHASES = ("ED", "ES")  # Info.cfg's keys of the labelled frames' numbers, and the values of their ``phase``
TEST_FOLDERS = frozenset({"testing", "test"})
SPLIT_FOLDERS = TEST_FOLDERS | {"training", "train"}


def frames_among(images: list[Path]) -> list[Path]:
    """The images named as a patient's time frame (``patient001_frame01.nii.gz``)."""
    return [p for p in images if FRAME.search(case_name(p))]


def is_frame_case(entry: Entry) -> bool:
    """Whether a case is a time frame of a patient (``frame_entries``): the dataset is ACDC's release."""
    return bool(FRAME.search(entry.case_id)) and entry.subject != entry.case_id


def frame_entries(folder: Path, pairs: dict[Path, Path | None], others: list[Path]) -> list[Entry]:
    """Each frame of a patient's ``folder`` a case (``pairs``: frame -> its label or None), with the
    attributes of its ``Info.cfg``; the ``others`` (the 4D cine) are said not to be read."""
    if others:
        say_once(f"{folder}: {', '.join(p.name for p in others)} not read: a patient's cases are its frames "
                 f"(<patient>_frame<N>), as they are labelled; the same in every patient folder",
                 key="patient-frames-others")
    info = read_info(folder / INFO_FILE)
    attributes, phases = info_attributes(info), frame_phases(info, folder / INFO_FILE)
    entries = []
    for image, label in pairs.items():
        case = case_name(image)
        phase = phases.get(int(FRAME.search(case)[1]))
        entries.append(Entry(case_id=case, image=image, label=label, rel_path=case + prediction_ending(image.name),
                             subject=subject_of(case),
                             attributes={**attributes, **({"phase": phase} if phase else {})}))
    return entries


def read_info(path: Path) -> dict[str, str]:
    """The ``Key: value`` lines of a patient's Info.cfg, values as written; {} without the file."""
    if not path.is_file():
        return {}
    try:
        text = user_text(path)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from None
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            key, value = key.strip(), value.strip()
            if info.get(key, value) != value:
                say_once(f"{path}: {key} is given twice ({info[key]!r}, then {value!r}); the last is read",
                         key=f"info-twice-{path}-{key}")
            info[key] = value
    return info


def info_attributes(info: dict[str, str]) -> dict[str, Any]:
    """Info.cfg's lines as group attributes (``Group`` 'DCM', ``Height`` 184.0, ``Weight`` 95.0), its frame
    numbers (ED, ES, NbFrame) left out: they number frames, they group no patients."""
    return {key: parse_cell(value, key) for key, value in info.items() if key.lower() not in FRAME_NUMBERS}


def frame_phases(info: dict[str, str], path: Path | None = None) -> dict[int, str]:
    """Frame number -> its cardiac phase, "ED" or "ES", by Info.cfg's ``ED: 1`` and ``ES: 12`` lines (a number
    written ``12.0`` too); a phase whose line is missing is left out, and so, said (``path``: the file), is one
    whose line is no frame number, and both where the two lines name one frame (which phase it is, is unknown)."""
    numbers = {key.upper(): (value, parse_cell(value)) for key, value in info.items() if key.upper() in PHASES}
    phases: dict[int, str] = {}
    for phase, (written, number) in numbers.items():
        if not (isinstance(number, (int, float)) and float(number).is_integer()):
            say_once(f"{path}: {phase} {written!r} is no frame number; no frame of this patient is given the phase "
                     f"{phase}", key=f"info-phase-{path}-{phase}")
        elif int(number) in phases:
            say_once(f"{path}: ED and ES name one frame ({int(number)}); it is given no phase",
                     key=f"info-phase-{path}-same")
            del phases[int(number)]
        else:
            phases[int(number)] = phase
    return phases


def holds_frames(folder: Path) -> bool:
    return bool(frames_among(_nifti_files(folder)))


def _sub_folders(folder: Path) -> list[Path]:
    return natural_sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: p.name)


def patients_by_split_folder(root: Path) -> dict[Path, list[Path]]:
    """Root's sub-folders named as a split (``training/``, ``testing/``) -> their patient folders of
    frames; only those holding one. The test folder comes last, so that cases are listed (``all``, ``fewsam
    info``'s first case) from the training patients on, as the release numbers them."""
    if not root.is_dir():
        return {}
    found = {}
    for split in sorted(_sub_folders(root), key=lambda p: p.name.lower() in TEST_FOLDERS):
        if split.name.lower() in SPLIT_FOLDERS:
            patients = [p for p in _sub_folders(split) if holds_frames(p)]
            if patients:
                found[split] = patients
    return found


def patients_in_test_folders(folders: dict[Path, list[Path]]) -> set[Path]:
    """The patient folders of ``folders`` (``patients_by_split_folder``) in a folder named as the test split."""
    return {p for split, patients in folders.items() if split.name.lower() in TEST_FOLDERS for p in patients}
