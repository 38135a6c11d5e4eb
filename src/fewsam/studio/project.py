"""The studio's project folder: the user's labels, the fits made from them, predictions and exports.

Everything the studio writes goes here, never into the dataset (which it only reads through
``fewsam.data.open_dataset``, so every layout fewsam reads can be labelled)::

    PROJECT/labelled.json            which slices of which case are labelled (and for which data)
    PROJECT/label_save.json          the label save under way, undone by the next studio if it was killed
    PROJECT/labels/<rel_path>        studio labels per case, written by ``write_prediction``: the
                                     dataset's own mask format (NIfTI on the image's grid for
                                     volumes, PNG in the dataset's coding for 2D images, ...)
    PROJECT/fits/fit-NNNN/data       the labelled slices as a dataset fewsam reads (a fit's input)
    PROJECT/fits/fit-NNNN/run        the fitted run folder
    PROJECT/latest_run.json          the newest finished fit (written by the worker)
    PROJECT/predictions/fit-NNNN/    per predicted case: labels and per-slice predictive entropy
    PROJECT/export/                  the labelled set in the dataset's format (``export``)
    PROJECT/jobs/job-NNNN/           a background job's spec, status and log
    PROJECT/studio.log               what the server did
    PROJECT/studio.lock              held by the one studio serving the project (``one_studio``)

Every file is written atomically (``fewsam.atomic``): a crash leaves the old or the new file.
A slice's save writes two of them, the case's label file and labelled.json, and is recorded in
PROJECT/label_save.json until both are written: a save that fails, or is killed, half-way is undone
(``Project.journalled_save``), so the project shows the slice as before the save or as after it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import secrets
import shutil
import threading
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np

from fewsam.atomic import (TEMPORARY_SUFFIX, LockHeld, atomic_write_bytes, check_folder_path, hidden_name,
                           stale_temporaries, take_lock_file)
from fewsam.data import open_dataset, read_prediction, write_prediction
from fewsam.data.readers.common import IndexedDataset, class_map_from_json, natural_key
from fewsam.data.types import Case, ClassMap
from fewsam.data.writers import ignore_declaration, prediction_path, write_label, write_slice_label
from fewsam.errors import DataError
from fewsam.labels import label_dtype
from fewsam.progress import say_once
from fewsam.studio.errors import BadLabel, Conflict, NotFound, StudioError

STATE = "labelled.json"
SAVE_JOURNAL = "label_save.json"
LABELS = "labels"
FITS = "fits"
PREDICTIONS = "predictions"
EXPORT = "export"
JOBS = "jobs"
LATEST_RUN = "latest_run.json"
LOG = "studio.log"
PROJECT_LOCK = "studio.lock"
EXPORT_MANIFEST = "labelled_slices.json"
EXPORT_INDEX = "index.csv"  # an index-listed dataset's cases, naming the exported labels
UNLABELLED_NOTE = ("slices not listed are unlabelled, not background: where a volume is labelled on some slices, "
                   "its other slices hold the 'ignore' value (declared in 'ignore_file', as nnU-Net's ignore label), "
                   "or only its labelled slices are written ('slice_files')")
CACHED_CASES = 3  # whole volumes kept in memory for slice browsing (a CT can be hundreds of MB)


def default_project(data: Path) -> Path:
    """``<data>-studio`` beside the dataset: outside it, and easy to find."""
    data = data.expanduser().resolve()
    return data.parent / f"{data.name}-studio"


def check_writable_folder(path: Path, option: str) -> None:
    """``path`` is to be a folder the studio writes in (fewsam's one folder rule, as a studio error)."""
    check_folder_path(path.expanduser(), option, StudioError)


def refuse_classes_above_255(class_map: ClassMap, data: Path) -> None:
    """The studio's labels are one byte a pixel (the page paints and uploads them so), so classes stored as
    values above 255 (MM-WHS's 205-850, FreeSurfer's 1000-2035), which fit, predict and evaluate read, cannot
    be labelled here: refused when the project opens rather than wrapped onto other classes."""
    wide = [value for value in class_map.labels if value > 255]
    if wide:
        shown = ", ".join(map(str, wide[:4])) + (", ..." if len(wide) > 4 else "")
        raise StudioError(f"{data} stores classes as values above 255 ({shown}), and the studio labels classes "
                          "1-255 (one byte a pixel); label a copy whose classes are numbered 1, 2, ... (its "
                          "classes.json naming them)")


def painted_whole(case: Case, data: Path) -> Case:
    """The case with its label's unannotated pixels (``Case.ignore``: nnU-Net's ignore label, VOC's void)
    shown as background: the page paints every pixel of a slice as a class or the background, and a label
    saved here is whole. Said once, as a slice saved from it labels those pixels."""
    if case.ignore is None or case.label is None:
        return case
    say_once(f"{data}: the labels' unannotated pixels (value {case.ignore}) are shown as background; a slice "
             "saved here labels every pixel, so paint what they hold before saving", key=f"studio-unannotated-{data}")
    label = np.where(case.label == case.ignore, 0, case.label).astype(case.label.dtype)
    return replace(case, label=label, ignore=None)


def check_project_folder(project: Path, data: Path) -> None:
    """The project must be a writable folder outside the dataset: labels never go into the user's data."""
    check_writable_folder(project, "--project")
    root, target = data.expanduser().resolve(), project.expanduser().resolve()
    if target == root or root in target.parents:
        raise StudioError(f"--project {project} lies inside the dataset {root}; the studio never writes "
                          f"into the dataset: give a folder outside it (default {default_project(data)})")
    check_not_foreign(target)


def check_not_foreign(folder: Path) -> None:
    """A folder that is not yet a studio project (no labelled.json, no studio.log) but holds entries
    with the names the studio writes (labels/, export/, ...) holds someone else's files there: the
    studio would read them as its own and overwrite or replace them, so it refuses the folder."""
    if (folder / STATE).exists() or (folder / LOG).exists():
        return
    taken = [name for name in (LABELS, FITS, PREDICTIONS, EXPORT, JOBS, LATEST_RUN, SAVE_JOURNAL)
             if (folder / name).exists()]
    if taken:
        raise StudioError(f"--project {folder} is not a studio project but already holds {', '.join(taken)}, "
                          "which the studio would write over; give a new or empty --project folder")


@contextmanager
def one_studio(folder: Path, address: str, echo: Callable[[str], None]) -> Iterator[None]:
    """Serve ``folder`` as the only studio on it, or refuse with the address of the one that is.

    Each studio keeps the labelled set in memory and rewrites PROJECT/labelled.json whole at every
    save, so a second studio on the same folder (a forgotten one in another terminal, a colleague's)
    would drop the slices the first one marked, and each would fit and export without the other's
    work. The lock (PROJECT/studio.lock, an flock) ends with the process however it ends, so a
    killed studio never locks its project out."""
    path = folder / PROJECT_LOCK
    try:
        fd, unsupported = take_lock_file(path)
    except LockHeld:
        raise StudioError(f"another studio is already serving --project {folder} ({lock_holder(path)}); "
                          "use that one, or stop it (Ctrl+C in its terminal) and start again") from None
    try:
        if unsupported is not None:
            echo(f"note: {folder} is on a file system without file locks ({os.strerror(unsupported)}): a second "
                 "studio on this project would not be refused; run one at a time")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}, {address}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def lock_holder(path: Path) -> str:
    """Who holds PROJECT/studio.lock, as that studio wrote it ("process 123, http://127.0.0.1:8765/")."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or "its address is not known yet"
    except OSError:
        return "its address is not known"


def slice_numbers(value: object) -> set[int]:
    """The slice numbers of one case in PROJECT/labelled.json: a list of JSON integers, else ValueError
    (``int()`` would turn true into 1, 1.7 into 1 and 1e400 into an OverflowError)."""
    if not isinstance(value, list) or not all(isinstance(z, int) and not isinstance(z, bool) for z in value):
        raise ValueError(f"slice numbers must be a list of whole numbers, not {json.dumps(value)[:80]}")
    return set(value)


def case_key(case_id: str) -> str:
    """A file-name-safe key for a case id (ids may hold '/' and spaces): a short hash."""
    return hashlib.sha256(case_id.encode()).hexdigest()[:20]


def slice_revision(label: np.ndarray) -> str:
    """A short fingerprint of a slice's saved label pixels. The page sends back the one it loaded with
    its save, so that a save from a second tab or window, painted on a version that another save has
    since replaced, is refused instead of silently replacing that work. (Marking and unmarking leave
    the pixels, and so the revision, as they are: they lose nothing.)"""
    return hashlib.sha256(np.ascontiguousarray(label, np.uint8).tobytes()).hexdigest()[:16]


def kept_aside(path: Path) -> Path:
    """Where a save keeps the case's previous label file while it replaces it: a temporary beside it
    (``remove_label_leftovers`` removes one a killed save left there)."""
    return path.with_name(hidden_name(path.name, f".previous{TEMPORARY_SUFFIX}"))


@dataclass(frozen=True)
class LabelSave:
    """A slice's label save under way, as PROJECT/label_save.json records it: the case and slice, the case's
    label file (relative to PROJECT/labels), whether that file was there before the save (then kept aside,
    ``kept_aside``) and whether the slice was labelled before it."""

    case: str
    slice: int
    label: str
    previous: bool
    labelled: bool

    def __post_init__(self) -> None:
        """A record that names no slice, or a file outside PROJECT/labels, is refused: undoing it would put
        or remove a file the save never touched."""
        if not (isinstance(self.case, str) and isinstance(self.slice, int) and not isinstance(self.slice, bool)
                and isinstance(self.previous, bool) and isinstance(self.labelled, bool)):
            raise ValueError("it does not name a case, a slice and what the save replaced")
        label = PurePosixPath(self.label) if isinstance(self.label, str) else None
        if label is None or label.is_absolute() or ".." in label.parts or not label.parts:
            raise ValueError(f"its label file {self.label!r} is not a path inside the project's labels folder")


def read_save_journal(path: Path) -> LabelSave | None:
    """PROJECT/label_save.json, None when no save is under way; one that cannot be read is refused, with what
    to do (it is written atomically, so only an edit by hand or a damaged disk leaves it so)."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return LabelSave(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as err:
        raise StudioError(f"cannot read {path} ({err}), the record of a label save that was interrupted; delete it "
                          "to keep the labels as they are on disk (the slice being saved may show its new pixels "
                          "while unlabelled), then start the studio again") from None


def recorded_classes(state: Path) -> dict[int, str]:
    """The classes PROJECT/labelled.json records the labels were painted with; none when it cannot say."""
    try:
        classes = json.loads(state.read_text(encoding="utf-8"))["classes"]
        return {int(value): str(name) for value, name in classes.items() if str(value).isdecimal()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def listed_slices(state: Path, case_id: str) -> set[int]:
    """The slices of a case that PROJECT/labelled.json lists on disk now; none when it cannot be read."""
    try:
        return slice_numbers(json.loads(state.read_text(encoding="utf-8"))["slices"].get(case_id, []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def keep_aside(path: Path, kept: Path) -> None:
    """``kept`` becomes a hard link to ``path`` (which needs no space on a full disk), or a copy of it where
    the file system has no links (FAT, some network shares); a copy the disk cannot hold is removed, and
    its error raised."""
    kept.unlink(missing_ok=True)
    try:
        os.link(path, kept)
    except OSError:
        try:
            shutil.copy2(path, kept)
        except BaseException:
            kept.unlink(missing_ok=True)
            raise


def remove_label_leftovers(labels: Path) -> None:
    """The temporaries a studio killed while saving left in PROJECT/labels (``atomic_write``'s half-written
    files, label files kept aside, ``kept_aside``), once ``finish_interrupted_save`` has put back the one it
    needs. Only the one studio serving a project writes there: called once
    it serves (``one_studio`` is held), none is in use; a second studio, refused, must not call it."""
    if labels.is_dir():
        for leftover in stale_temporaries(labels):
            leftover.unlink(missing_ok=True)


def unreadable_run_record(path: Path, why: str) -> str:
    """What a damaged PROJECT/latest_run.json means and what to do: the worker writes it when a fit finishes."""
    return (f"the record of the latest finished fit, {path}, cannot be read ({why}); restore it from a backup, or "
            "press Fit to fit again (a finished fit writes it anew), then predict")


def is_run_record(record: object) -> bool:
    """Whether PROJECT/latest_run.json names a fit the studio can use: ``fit`` a plain folder name (it
    becomes part of a path under PROJECT/predictions) and ``run`` a path, both strings."""
    if not isinstance(record, dict):
        return False
    fit, run = record.get("fit"), record.get("run")
    return isinstance(fit, str) and isinstance(run, str) and fit not in ("", ".", "..") and Path(fit).name == fit


def run_in_project(record: dict[str, Any], project: Path) -> Path:
    """The run of the fit PROJECT/latest_run.json names. A studio fit's run is PROJECT/fits/<fit>/run, recorded by
    the path it was fitted in: in a project moved or copied since, that path is the run's old place (gone,
    or the other copy's), and the run is the one in ``project``. A run recorded elsewhere is kept as it is."""
    recorded = Path(record["run"])
    if recorded.parts[-3:] == (FITS, record["fit"], "run"):
        return project / FITS / record["fit"] / "run"
    return recorded


@dataclass(frozen=True)
class Prediction:
    """One case's prediction from a fit: (D, H, W) label values and each slice's mean entropy."""

    fit: str
    labels: np.ndarray
    entropy: np.ndarray


def encode_prediction(case_id: str, fit: str, labels: np.ndarray, entropy: np.ndarray) -> bytes:
    """The bytes of PROJECT/predictions/<fit>/<case_key>.npz (the worker writes them atomically)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=labels.astype(np.uint8), entropy=entropy.astype(np.float32),
                        case_id=np.array(case_id), fit=np.array(fit))
    return buf.getvalue()


class Project:
    """The dataset (read-only) and the project folder (the studio's writes), safe across threads.

    The server answers requests in a thread pool: every read-modify-write of labels holds
    ``lock``, and whole cases are cached (a few, least recently used) so browsing slices does not
    re-read a volume per slice.
    """

    def __init__(self, data: str | Path, folder: str | Path) -> None:
        self.data = Path(data).expanduser().resolve()
        self.folder = Path(folder).expanduser().resolve()
        check_project_folder(self.folder, self.data)
        self.dataset: IndexedDataset = open_dataset(self.data)
        refuse_classes_above_255(self.dataset.class_map, self.data)  # before the project folder is made
        self.folder.mkdir(parents=True, exist_ok=True)
        self.class_map = self._class_map()
        refuse_classes_above_255(self.class_map, self.folder / "classes.json")
        self.lock = threading.RLock()
        self._export_lock = threading.Lock()  # one export at a time: each replaces PROJECT/export whole
        self._cases: OrderedDict[str, Case] = OrderedDict()
        self._slices: dict[str, int] = {}
        self._label_errors: dict[str, str] = {}  # cases whose dataset label cannot be read (see load_case)
        self._absent: dict[str, list[int]] = {}  # labelled cases the dataset no longer holds (see _read_state)
        self.moved_from: Path | None = None  # the dataset's folder when the labels were made, if it moved since
        self._labelled = self._read_state()
        self._refuse_removed_classes_in_use()
        read_save_journal(self.folder / SAVE_JOURNAL)  # checked now, finished once served (finish_interrupted_save)
        if self.moved_from is not None:
            self._write_state()  # the labels now belong to this folder

    # --- the dataset -------------------------------------------------------------------------

    def _class_map(self) -> ClassMap:
        """The dataset's classes; a dataset without labels or class names takes PROJECT/classes.json, and so
        does a folder of 2D images without masks, whose reader otherwise offers its one guessed class
        ("foreground"), so that no second class could be labelled (``_adopt_project_classes``)."""
        path = self.folder / "classes.json"
        if path.is_file() and self._adopt_project_classes(path):
            return self.dataset.class_map
        if self.dataset.class_map.names:
            return self.dataset.class_map
        if path.is_file():
            return class_map_from_json(path)
        raise StudioError(f"{self.data} names no classes (no label files, no classes.json); write the "
                          f'classes to label into {path}, e.g. {{"1": "liver", "2": "tumour"}}')

    def _adopt_project_classes(self, path: Path) -> bool:
        """Give an image folder without masks and without its own classes.json the classes of PROJECT/
        classes.json, stored as its reader's mask coding where that has a pixel for each class (one class:
        0/255), else as the class indices; returns whether it took them (a folder with masks keeps its own)."""
        adopt = getattr(self.dataset, "adopt_mask_coding", None)
        if adopt is None:
            return False
        class_map = class_map_from_json(path)
        values = [0, *class_map.labels]
        current = self.dataset.mask_coding()["to_pixel"]
        to_pixel = {str(v): int(current[str(v)]) if all(str(c) in current for c in values) else v for v in values}
        return bool(adopt(class_map, {"to_pixel": to_pixel, "palette": None}))

    def case_ids(self) -> list[str]:
        return list(self.dataset.entries)

    def check_case(self, case_id: str) -> None:
        if case_id not in self.dataset.entries:
            raise NotFound(f"no case {case_id!r} in {self.data}")

    def num_slices(self, case_id: str) -> int:
        """Slices of a case from its header (remembered: the case list asks for every case)."""
        self.check_case(case_id)
        if case_id not in self._slices:
            self._slices[case_id] = self.dataset.num_slices(case_id)
        return self._slices[case_id]

    def check_slice(self, case_id: str, z: int) -> None:
        n = self.num_slices(case_id)
        if not 0 <= z < n:
            raise NotFound(f"case {case_id} has {n} slice(s), numbered 0 to {n - 1}; there is no slice {z}")

    def load_case(self, case_id: str) -> Case:
        """The case's arrays, from a small least-recently-used memory cache."""
        self.check_case(case_id)
        with self.lock:
            if case_id in self._cases:
                self._cases.move_to_end(case_id)
                return self._cases[case_id]
        case = self._load_for_labelling(case_id)
        with self.lock:
            self._cases[case_id] = case
            self._slices[case_id] = case.num_slices
            while len(self._cases) > CACHED_CASES:
                self._cases.popitem(last=False)
        return case

    def _load_for_labelling(self, case_id: str) -> Case:
        """A case with its dataset label, or without it where that label cannot be read (a mask of another
        size, blurred edges outside the coding, a file this user may not read): a broken label is a reason to
        label the image here, not to refuse to open it. Why it was left out is kept for the page
        (``label_error``); an image that cannot be read is refused, by the load without the label."""
        try:
            return painted_whole(self.dataset.load(case_id), self.data)
        except (DataError, OSError) as err:
            case = self.dataset.load(case_id, with_label=False)
            self._label_errors[case_id] = (f"the dataset's own label of {case_id} cannot be read, so it is not "
                                           f"shown; label the image here instead ({err})")
            return case

    def label_error(self, case_id: str) -> str | None:
        """Why the dataset's label of a loaded case is not shown, or None."""
        return self._label_errors.get(case_id)

    def allowed_values(self) -> list[int]:
        return [0, *self.class_map.labels]

    def values_outside_classes(self, label: np.ndarray) -> list[int]:
        """The values of a slice label that are neither the background nor a class of this project: saved,
        they would make the case's whole label file unreadable (``label_volume``)."""
        return sorted(set(np.unique(label).tolist()) - set(self.allowed_values()))

    def classes_text(self) -> str:
        """The values a label may hold, named, as refusals list them ("0 background, 1 RV, ...")."""
        return ", ".join(f"{v} {n}" for v, n in [(0, "background"), *sorted(self.class_map.names.items())])

    # --- labels ------------------------------------------------------------------------------

    @property
    def labels_dir(self) -> Path:
        return self.folder / LABELS

    def _read_state(self) -> dict[str, set[int]]:
        """PROJECT/labelled.json; refuses a project made for another dataset (its labels would not fit)."""
        path = self.folder / STATE
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
            recorded = Path(state["data"])
            slices = {str(c): slice_numbers(zs) for c, zs in state["slices"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise StudioError(f"cannot read {path} ({err}); restore it, or give another --project") from None
        if recorded != self.data:
            self._check_moved_here(recorded, slices)
        self._absent = {c: sorted(zs) for c, zs in slices.items() if c not in self.dataset.entries and zs}
        slices = {c: zs for c, zs in slices.items() if c in self.dataset.entries and zs}
        for case_id, zs in slices.items():
            self._check_recorded_slices(path, case_id, zs)
        return slices

    def _refuse_removed_classes_in_use(self) -> None:
        """Refuse at start a class map that lacks a class the saved labels still hold (taken out of
        PROJECT/classes.json after labelling): each case holding it could not be read, and the refusal
        per case would send the user to relabel it, where naming the class again is all it takes. Only
        when labelled.json records classes that are gone are the label files read, to see which hold
        them: a class painted nowhere may be taken out."""
        removed = {value: name for value, name in recorded_classes(self.folder / STATE).items()
                   if value not in self.class_map.names}
        if not removed:
            return
        held = {case_id: self._held_values(case_id, set(removed)) for case_id in self._labelled}
        holding = sorted((case_id for case_id, values in held.items() if values), key=natural_key)
        if not holding:
            return
        gone = sorted(set().union(*held.values()))
        named_in = self.folder / "classes.json"
        where = named_in if named_in.is_file() else f"the classes of {self.data}"
        classes = ", ".join(f"{value} {removed[value]!r}" for value in gone)
        cases = ", ".join(holding[:5]) + (f" and {len(holding) - 5} more" if len(holding) > 5 else "")
        them = "them" if len(gone) > 1 else "it"
        raise StudioError(f"{where} no longer names class{'es' if len(gone) > 1 else ''} {classes}, which the labels "
                          f"of {cases} hold; name {them} again there (classes may be added or renamed, and taken "
                          "out once no label holds them), then start the studio again")

    def _held_values(self, case_id: str, values: set[int]) -> set[int]:
        """Which of ``values`` the studio's label file of a case holds (none for a file that cannot be read:
        that is named when the case is opened, ``label_volume``)."""
        case = self.load_case(case_id)
        if not prediction_path(case, self.labels_dir).is_file():
            return set()
        try:
            volume = read_prediction(case, self.labels_dir)
        except DataError:
            return set()
        return values & set(np.unique(volume).tolist())

    def _check_moved_here(self, recorded: Path, slices: dict[str, set[int]]) -> None:
        """Accept a project whose dataset was moved or copied (with its project, to another disk or
        machine): the folder it was made for is gone and this dataset holds every labelled case, so
        the labels stay usable (their slice counts and shapes are checked as for any project).
        While that folder still exists, the project belongs to it and this dataset is refused."""
        refusal = f"--project {self.folder} holds labels of {recorded}, not of {self.data}"
        if recorded.exists():
            raise StudioError(f"{refusal}; give another --project for this dataset")
        lacking = sorted((c for c, zs in slices.items() if zs and c not in self.dataset.entries), key=natural_key)
        if lacking:
            shown = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
            raise StudioError(f"{refusal}, and this dataset lacks its labelled case(s) {shown}; give the dataset "
                              "these labels were made for, or another --project")
        self.moved_from = recorded

    def _check_recorded_slices(self, path: Path, case_id: str, zs: set[int]) -> None:
        """A hand-edited or damaged state file may name slices the case lacks; used as they are, they
        would fail every later fit and export (or, negative, silently mean the last slices)."""
        n = self.num_slices(case_id)
        outside = sorted(z for z in zs if not 0 <= z < n)
        if outside:
            raise StudioError(f"{path} lists slice(s) {outside} of {case_id}, which has {n} slice(s) numbered 0 "
                              f"to {n - 1}; restore the file, or give another --project")

    def _write_state(self) -> None:
        """PROJECT/labelled.json. The records of cases the dataset no longer holds (moved away, or left
        out of its split list for now) are written back unchanged: their label files are still in the
        project, and the slices are labelled again when the cases return, not forgotten at the first save."""
        kept = {**self._absent, **{c: sorted(zs) for c, zs in self._labelled.items() if zs}}
        state = {"data": str(self.data), "classes": self.class_map.to_json(),
                 "slices": dict(sorted(kept.items(), key=lambda i: natural_key(i[0])))}
        atomic_write_bytes(self.folder / STATE, json.dumps(state, indent=1).encode())

    def labelled(self) -> dict[str, list[int]]:
        """Labelled slices per case, cases in natural order."""
        with self.lock:
            return {c: sorted(zs) for c, zs in sorted(self._labelled.items(), key=lambda i: natural_key(i[0])) if zs}

    def is_labelled(self, case_id: str, z: int) -> bool:
        with self.lock:
            return z in self._labelled.get(case_id, set())

    def label_volume(self, case: Case) -> np.ndarray:
        """The studio's (D, H, W) labels of a case; zeros where nothing was saved. A label file that
        cannot be read (truncated, edited by hand) is named as the studio's labels, with what to do:
        the reader's own words call it a prediction."""
        shape = tuple(case.image.shape[:3])
        path = prediction_path(case, self.labels_dir)
        if not path.is_file():
            return np.zeros(shape, np.uint8)
        try:
            volume = read_prediction(case, self.labels_dir, self.class_map)
        except DataError as err:
            raise StudioError(f"the studio's labels of case {case.case_id} cannot be read: {err}; restore that "
                              "file from a backup, or move it away and label this case again") from None
        if volume.shape != shape:
            raise StudioError(f"the studio's labels of case {case.case_id} ({path}) are {volume.shape} (slices, "
                              f"height, width) but the case is {shape}; was its image replaced? Restore it, or "
                              "move the labels away and label this case again")
        return volume

    def check_label_file(self, case: Case, saving: int | None = None) -> None:
        """Refuse to use a case whose slices are marked labelled (other than ``saving``, the one being
        saved) while its label file is gone (deleted or moved by hand): read as zeros, those slices
        would be fitted and exported as background, or zeroed in the file the next save writes."""
        marked = sorted(self._labelled.get(case.case_id, set()) - {saving})
        path = prediction_path(case, self.labels_dir)
        if marked and not path.is_file():
            raise StudioError(f"slice(s) {marked} of {case.case_id} are marked labelled but the studio's label "
                              f"file {path} is missing; restore it, or unmark those slices")

    def check_label(self, raw: bytes, case_id: str, z: int, height: int, width: int) -> np.ndarray:
        """An uploaded slice label (H*W uint8 bytes, row-major) as (H, W), or a BadLabel that says why."""
        case = self.load_case(case_id)
        expected = tuple(case.image.shape[1:3])
        if (height, width) != expected:
            raise BadLabel(f"the label is {height}x{width} but slice {z} of {case_id} is "
                           f"{expected[0]}x{expected[1]} (height x width); reload the slice")
        if len(raw) != height * width:
            raise BadLabel(f"the label holds {len(raw)} bytes; a {height}x{width} slice needs {height * width} "
                           "(one class value per pixel)")
        label = np.frombuffer(raw, dtype=np.uint8).reshape(height, width)
        bad = self.values_outside_classes(label)
        if bad:
            raise BadLabel(f"label values {bad} are not classes of this dataset ({self.classes_text()})")
        return label

    def labelled_volume(self, case_id: str) -> np.ndarray:
        """The labels of a case with labelled slices, for a fit or an export: never zeros in place of
        a label file that went missing (``check_label_file``)."""
        case = self.load_case(case_id)
        with self.lock:
            self.check_label_file(case)
            return self.label_volume(case)

    def saved_slice(self, case_id: str, z: int) -> tuple[np.ndarray, bool, str]:
        """(label, labelled, revision) of a slice as saved now, read together under the lock."""
        self.check_slice(case_id, z)
        case = self.load_case(case_id)
        with self.lock:
            label, labelled = self.label_volume(case)[z], self.is_labelled(case_id, z)
        return label, labelled, slice_revision(label)

    def save_slice(self, case_id: str, z: int, label: np.ndarray, base: str | None = None) -> str:
        """Write a checked slice label into the case's label file, then mark the slice labelled; returns
        the slice's new revision. ``base``, the revision the label was painted on (None: not checked),
        must still be the saved one: else another tab saved this slice since, and Conflict says so."""
        self.check_slice(case_id, z)
        case = self.load_case(case_id)
        with self.lock:
            self.check_label_file(case, saving=z)
            volume = self.label_volume(case)
            if base is not None and slice_revision(volume[z]) != base:
                raise Conflict(f"slice {z} of {case_id} was saved in another tab or window after this one loaded "
                               "it; your edits are not saved: save again to replace that version with yours, or "
                               "open the slice again to see it")
            if label.shape != volume.shape[1:]:  # a prediction file from another fit or tool
                raise StudioError(f"a label of shape {label.shape} does not fit slice {z} of {case_id} "
                                  f"{volume.shape[1:]}; predict this case again")
            volume[z] = label
            with self.journalled_save(case_id, z, prediction_path(case, self.labels_dir)):
                write_prediction(case, volume, self.labels_dir)
                self._mark(case_id, z, True)
        return slice_revision(label)

    @contextmanager
    def journalled_save(self, case_id: str, z: int, path: Path) -> Iterator[None]:
        """Wraps a save's two writes, the case's label file ``path`` and then labelled.json marking slice ``z``:
        stopped at any point, by an error or a kill (SIGKILL, a power cut), the save leaves the project as it
        was before it or as it is after it, never the new pixels in the label file of a slice labelled.json
        does not list (the page would show it unlabelled but painted, and refuse its next Save as "saved in
        another tab": the revision it holds is the old one).

        The two files cannot be replaced by one rename: the label file is found at the dataset's own mask
        path (by the fit, the export, the reader), not named in labelled.json. So the save is recorded in
        PROJECT/label_save.json once the old label file is kept aside (a hard link; a copy where links are
        not to be had: the record comes after it, so that a copy cut short is never put back), and it is done
        when labelled.json lists the slice. Until then it is undone, by the error's handler here or, after a
        kill, by the next studio (``finish_interrupted_save``): the file kept aside is put back, or the new
        one removed when there was none, so no earlier label is lost. A slice that was labelled before is
        listed before and after, so labelled.json cannot tell how far its save got: it is undone, which is
        as consistent (the old pixels, listed as they were) and what the page was told, if it was told."""
        save = LabelSave(case_id, z, path.relative_to(self.labels_dir).as_posix(), path.is_file(),
                         self.is_labelled(case_id, z))
        if save.previous:
            keep_aside(path, kept_aside(path))
        try:
            atomic_write_bytes(self.folder / SAVE_JOURNAL, json.dumps(asdict(save)).encode())
            yield
        except BaseException:
            self._finish_save(save, done=self._listed_on_disk(save))
            raise
        self._finish_save(save, done=True)

    def _listed_on_disk(self, save: LabelSave) -> bool:
        """Whether labelled.json on disk now lists the slice a save marks, as only the save can have done
        (a Ctrl-C is delivered once the file is in place: the save is done then, though it raises)."""
        return not save.labelled and save.slice in listed_slices(self.folder / STATE, save.case)

    def _finish_save(self, save: LabelSave, done: bool) -> None:
        """Keep the new label file (``done``) or put the previous one back (remove the new one where there was
        none), then drop the file kept aside and the record: in this order, a kill in here leaves the record
        for the next studio to finish the same way."""
        path = self.labels_dir / save.label
        kept = kept_aside(path)
        if not done and save.previous and kept.is_file():
            os.replace(kept, path)
        elif not done and not save.previous and path.is_file():
            path.unlink()
        kept.unlink(missing_ok=True)  # a hard link to ``path`` itself outlives a rename onto it
        (self.folder / SAVE_JOURNAL).unlink(missing_ok=True)

    def finish_interrupted_save(self) -> str | None:
        """Finish the label save a killed studio left under way (``journalled_save``): kept where labelled.json
        lists its slice, else undone. Returns what was done, for the log; None when no save was under way.
        Only the studio serving the project may call it: another's save in progress would be undone."""
        save = read_save_journal(self.folder / SAVE_JOURNAL)
        if save is None:
            return None
        done = self._listed_on_disk(save)
        self._finish_save(save, done)
        return (f"a save of slice {save.slice} of {save.case} was interrupted by the end of the last studio; "
                + ("it was complete and is kept" if done else "it was undone, the slice is as it was before it"))

    def unmark(self, case_id: str, z: int) -> None:
        """Take a slice out of the labelled set (its pixels stay in the label file, unused)."""
        self.check_slice(case_id, z)
        with self.lock:
            self._mark(case_id, z, False)

    def _mark(self, case_id: str, z: int, labelled: bool) -> None:
        """Mark a slice labelled or not, in memory and in PROJECT/labelled.json together: a state file that
        cannot be written (a full disk) undoes the change, so the page, told the save or unmark failed, does
        not list the slice as it asked while the project on disk, and the next studio, have it as before."""
        slices = self._labelled.setdefault(case_id, set())
        was = z in slices
        (slices.add if labelled else slices.discard)(z)
        try:
            self._write_state()
        except BaseException:
            (slices.add if was else slices.discard)(z)
            raise

    def accept_prediction(self, case_id: str, z: int, replace: bool = False) -> None:
        """The latest fit's prediction of a slice becomes its label (it joins the labelled set).

        A slice already labelled keeps its label unless ``replace`` is asked: after a fit every slice
        of a predicted case has a prediction, the hand-labelled ones included, and one key press
        ("A", beside "S" for save) would otherwise put the model's guess in place of the user's work."""
        self.check_slice(case_id, z)
        prediction = self.prediction(case_id)
        if prediction is None:
            raise NotFound(f"there is no prediction of {case_id} to accept; fit, or predict this case, first")
        bad = self.values_outside_classes(prediction.labels[z])
        if bad:  # a fit made before the project's classes changed
            raise StudioError(f"the prediction of slice {z} of {case_id} holds values {bad}, which are not classes "
                              f"of this project ({self.classes_text()}); it was made by {prediction.fit} on other "
                              "classes: predict this case again (or fit again), then accept")
        with self.lock:
            if self.is_labelled(case_id, z) and not replace:
                raise Conflict(f"slice {z} of {case_id} is labelled already; accepting the prediction would replace "
                               "your label with it, so it was kept (confirm the replacement to accept)")
            self.save_slice(case_id, z, prediction.labels[z])

    # --- fits and predictions ----------------------------------------------------------------

    def latest_run(self) -> dict[str, Any] | None:
        """PROJECT/latest_run.json: the newest fit that finished, or None (none has, or its record cannot be
        read: browsing goes on without predictions, and ``run_to_predict_with`` says which)."""
        try:
            return self._read_latest_run()
        except StudioError:
            return None

    def run_to_predict_with(self) -> dict[str, Any]:
        """The newest finished fit, for Predict; refused as never made, or as a record that cannot be read
        (named, with what to do: "no fit has finished yet" would send the user to fit what they have fitted)."""
        record = self._read_latest_run()
        if record is None:
            raise StudioError("no fit has finished yet; fit first, then predict")
        return record

    def _read_latest_run(self) -> dict[str, Any] | None:
        """PROJECT/latest_run.json, None when there is none, StudioError when it cannot be read."""
        path = self.folder / LATEST_RUN
        if not path.exists() and not path.is_symlink():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise StudioError(unreadable_run_record(path, str(err))) from None
        if not is_run_record(record):
            raise StudioError(unreadable_run_record(path, 'it does not name a fit as {"fit": ..., "run": ...}'))
        return {**record, "run": str(run_in_project(record, self.folder))}

    def prediction_file(self, fit: str, case_id: str) -> Path:
        return self.folder / PREDICTIONS / fit / f"{case_key(case_id)}.npz"

    def prediction(self, case_id: str) -> Prediction | None:
        """The latest fit's prediction of a case, if that fit predicted it."""
        latest = self.latest_run()
        if latest is None:
            return None
        path = self.prediction_file(latest["fit"], case_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                labels, entropy = np.asarray(f["labels"]), np.asarray(f["entropy"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
            raise StudioError(f"cannot read prediction {path} ({err}); predict this case again") from None
        n = self.num_slices(case_id)
        if labels.ndim != 3 or labels.shape[0] != n or entropy.shape != (n,):
            raise StudioError(f"prediction {path} holds {labels.shape} labels and {entropy.shape} entropies, but "
                              f"{case_id} has {n} slice(s); predict this case again")
        return Prediction(latest["fit"], labels, entropy)

    def predicted_cases(self) -> list[str]:
        latest = self.latest_run()
        if latest is None:
            return []
        return [c for c in self.case_ids() if self.prediction_file(latest["fit"], c).is_file()]

    def suggest(self) -> dict[str, Any]:
        """The unlabelled predicted slice with the highest mean predictive entropy (active learning):
        where the model is least sure, a label teaches it most. A case listed as predicted whose prediction
        is gone when read (a newer fit named latest in between) is passed over, and so is a slice whose
        entropy is not a number, which ranks against nothing."""
        best: tuple[float, str, int] | None = None
        for case_id in self.predicted_cases():
            prediction = self.prediction(case_id)
            entropies = [] if prediction is None else prediction.entropy.tolist()
            for z, value in enumerate(entropies):
                if math.isnan(value) or self.is_labelled(case_id, z):
                    continue
                if best is None or value > best[0]:
                    best = (value, case_id, z)
        if best is None:
            raise NotFound("nothing to suggest: fit first, or predict more cases (every predicted slice is "
                           "labelled)")
        return {"case": best[1], "z": best[2], "entropy": best[0]}

    def next_fit_dir(self) -> Path:
        """PROJECT/fits/fit-NNNN, one past the highest there: every fit gets a fresh run folder."""
        fits = self.folder / FITS
        numbers = [int(p.name[4:]) for p in fits.glob("fit-*") if p.name[4:].isdigit()] if fits.is_dir() else []
        path = fits / f"fit-{max(numbers, default=0) + 1:04d}"
        path.mkdir(parents=True)
        return path

    def write_fit_dataset(self, folder: Path) -> tuple[int, list[str]]:
        """The labelled slices as a dataset the fit reads; returns how many slices it holds, and the blank
        slices left out (``_without_blank_slices``).

        Refuses (before any worker starts) an empty labelled set or one missing a class: the
        few-shot prompt bank needs pixels of every class."""
        from fewsam.studio.fitdata import write_fit_dataset

        with self.lock:
            labelled = self.labelled()
            if not labelled:
                raise StudioError("no slice is labelled yet; paint each class on a slice and save it, then fit")
            slices = [(case_id, z, self.labelled_volume(case_id)[z]) for case_id, zs in labelled.items() for z in zs]
        slices, blank = self._without_blank_slices(slices)
        missing = set(self.class_map.labels) - {int(v) for _, _, lab in slices for v in np.unique(lab)}
        if missing:
            names = ", ".join(self.class_map.names[v] for v in sorted(missing))
            raise StudioError(f"no labelled slice shows class {names}; paint it on at least one slice, then fit")
        count = write_fit_dataset(folder, [(self.load_case(c), z, lab) for c, z, lab in slices], self.class_map)
        return count, blank

    def _without_blank_slices(self, slices: list[tuple[str, int, np.ndarray]]
                              ) -> tuple[list[tuple[str, int, np.ndarray]], list[str]]:
        """The labelled slices less those whose image is one value everywhere (a volume's zero-padded end
        slice, labelled as background), and those left out as "CASE slice Z". A fit accepts such a slice
        inside a case with content, but each labelled slice is a case of its own in the fit's data, where
        the fit refuses it as an export gone wrong, naming ids the user never saw. A labelled slice of a
        case that is blank throughout is refused here, as the fit would refuse that case."""
        kept, blank = [], []
        for case_id, z, label in slices:
            image = self.load_case(case_id).image
            if float(image[z].max()) != float(image[z].min()):
                kept.append((case_id, z, label))
            elif float(image.max()) == float(image.min()):
                raise StudioError(f"case {case_id} is a constant image (every pixel {image.flat[0]:g}), nothing to "
                                  f"segment; unmark its labelled slice(s), then fit")
            else:
                blank.append(f"{case_id} slice {z}")
        if not kept:
            raise StudioError(f"every labelled slice is blank (one value everywhere: {', '.join(blank[:3])}); "
                              "label slices that show the anatomy, then fit")
        return kept, blank

    # --- export ------------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """PROJECT/export: each labelled case's labels in the dataset's own format and geometry (NIfTI
        with the image's affine and header, PNG in the dataset's mask coding, ...), named as the dataset's
        reader finds labels (``label_rel_path``: BUSI's ``x_mask.png``, ``masks/x.png``), a partly labelled
        volume's unlabelled slices marked unannotated (``_write_case``), labelled_slices.json saying which
        slices hold labels, and for a dataset an index.csv lists, that index
        naming each exported label alone (``_export_index``; without an index, the masks merged by their names
        written blank, ``_write_blank_masks``). Replaces the previous export whole, and
        refuses (before writing anything) when PROJECT/export holds anything an export did not write."""
        labelled = self.labelled()
        if not labelled:
            raise StudioError("no slice is labelled yet; nothing to export")
        target = self.folder / EXPORT
        with self._export_lock:  # two at once (a double click) would swap folders under each other
            check_export_target(target)
            remove_export_leftovers(self.folder)
            staging = self.folder / f".{EXPORT}.partial-{secrets.token_hex(4)}"
            try:
                files = self._write_export(staging, labelled)
                _swap_in(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return {"folder": str(target), "cases": len(labelled), "slices": sum(map(len, labelled.values())),
                "files": files}

    def _write_export(self, folder: Path, labelled: dict[str, list[int]]) -> list[str]:
        partial = [case_id for case_id, zs in labelled.items() if len(zs) < self.num_slices(case_id)]
        declared_in = self.dataset.ignore_file if partial else None
        ignore = export_ignore_value(self.class_map) if declared_in else None
        files, cases = [], {}
        for case_id, zs in labelled.items():
            case = self.load_case(case_id)
            with self.lock:
                volume = self.labelled_volume(case_id)
            cases[case_id] = self._write_case(case, volume, zs, folder, ignore)
            files += label_files(cases[case_id])
            blank = self._write_blank_masks(case, folder)
            if blank:
                cases[case_id]["blank"] = blank
        manifest: dict[str, Any] = {"data": str(self.data), "classes": self.class_map.to_json(), "cases": cases,
                                    "note": UNLABELLED_NOTE}
        if ignore is not None and declared_in is not None:
            atomic_write_bytes(folder / declared_in, ignore_declaration(self.data, declared_in, self.class_map, ignore))
            manifest.update(ignore=ignore, ignore_file=declared_in)
        index = self._export_index({case_id: entry["file"] for case_id, entry in cases.items() if "file" in entry})
        if index is not None:
            atomic_write_bytes(folder / EXPORT_INDEX, index.encode())
            manifest["index"] = EXPORT_INDEX
        atomic_write_bytes(folder / EXPORT_MANIFEST, json.dumps(manifest, indent=1).encode())
        return files

    def _write_case(self, case: Case, volume: np.ndarray, zs: list[int], folder: Path,
                    ignore: int | None) -> dict[str, Any]:
        """One labelled case of the export, and its manifest entry. A volume labelled on some slices has its
        other slices written as ``ignore``, the value the export declares unannotated (nnU-Net's ignore label),
        so that no tool trains on them as background; where the layout cannot declare one (ACDC's h5 files),
        its labelled slices are written as slice cases of their own (``slice_case_rel_path``) instead."""
        labels = volume
        if len(zs) < volume.shape[0]:
            if ignore is None:
                return {"slice_files": self._write_labelled_slices(case, volume, zs, folder), "slices": zs}
            labels = with_unannotated_slices(volume, zs, ignore)
        entry = self.dataset.entries[case.case_id]
        written = write_label(case, labels, folder, self.dataset.label_rel_path(entry), Path(entry.image))
        return {"file": written.relative_to(folder).as_posix(), "slices": zs}

    def _write_labelled_slices(self, case: Case, volume: np.ndarray, zs: list[int], folder: Path) -> list[str]:
        """The labelled slices of a partly labelled volume as slice cases of their own, for a layout that
        cannot mark the unlabelled ones; one that has no slice cases either is refused, naming what to do."""
        slice_rel_path = getattr(self.dataset, "slice_case_rel_path", None)
        if slice_rel_path is None:
            raise StudioError(f"{case.case_id} is labelled on slice(s) {zs} of {volume.shape[0]}, and the layout of "
                              f"{self.data} cannot mark the other slices as unlabelled, so an export would give "
                              "them as background; label every slice of it, or unmark its slices, then export")
        source = Path(self.dataset.entries[case.case_id].image)
        return [write_slice_label(source, z, volume[z], folder, slice_rel_path(case.case_id, z))
                .relative_to(folder).as_posix() for z in zs]

    def _write_blank_masks(self, case: Case, folder: Path) -> list[str]:
        """The case's other masks that its reader merges into its label by their names (BUSI's
        ``x_mask_1.png``), written blank (background) beside its exported label: copied into the dataset,
        the old ones would otherwise add outlines back that the user erased. Returns their paths."""
        extra = getattr(self.dataset, "extra_mask_rel_paths", None)
        written = []
        for rel in extra(case.case_id) if extra is not None else []:
            blank = np.zeros(case.image.shape[:3], np.uint8)
            written.append(write_prediction(replace(case, rel_path=rel), blank, folder).relative_to(folder).as_posix())
        return written

    def _export_index(self, labels: dict[str, str]) -> str | None:
        """The dataset's index.csv naming each exported label, for a dataset whose cases an index lists
        (``index_with_masks``): its reader reads a case's mask from the index alone, so a label exported
        for a case listed without one would be lost when the export is copied into the dataset. Cases
        still unlabelled stay listed with an empty mask cell. None for a dataset without an index."""
        index_with_masks = getattr(self.dataset, "index_with_masks", None)
        return index_with_masks(labels) if index_with_masks is not None else None


def export_ignore_value(class_map: ClassMap) -> int:
    """The label value that marks a partly labelled volume's unlabelled slices in an export: the dataset's own
    "ignore" value where it declares one, else one above the highest class, as nnU-Net v2 requires of its
    ignore label, kept within the studio's byte a pixel (the highest free value where class 255 is taken:
    fewsam reads any). Never a class's value, so no class gains or loses a pixel."""
    if class_map.ignore is not None:
        return class_map.ignore
    top = max(class_map.labels)
    return top + 1 if top < 255 else max(set(range(1, 256)) - set(class_map.labels))


def with_unannotated_slices(volume: np.ndarray, labelled: list[int], ignore: int) -> np.ndarray:
    """``volume`` with every slice not in ``labelled`` set to ``ignore`` (in a type that holds it)."""
    marked = volume.astype(label_dtype(max(ignore, int(volume.max(initial=0)))))
    unlabelled = np.ones(volume.shape[0], bool)
    unlabelled[labelled] = False
    marked[unlabelled] = ignore
    return marked


class UnreadableManifest(Exception):
    """An earlier export's labelled_slices.json that cannot be read; the text says why."""


def label_files(entry: dict[str, Any]) -> list[str]:
    """The label files an export wrote for one case, from its manifest entry: its label file, or the slice
    files of a partly labelled volume whose layout cannot mark the other slices (``_write_case``)."""
    return [str(entry["file"])] if "file" in entry else [str(rel) for rel in entry["slice_files"]]


def exported_files(folder: Path) -> set[str]:
    """The files a previous export wrote in ``folder`` (posix paths relative to it), from its manifest;
    empty when there is no manifest, UnreadableManifest when it cannot be read (damaged, edited by hand)."""
    path = folder / EXPORT_MANIFEST
    if not path.exists() and not path.is_symlink():
        return set()
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        declared = [str(manifest[key]) for key in ("index", "ignore_file") if manifest.get(key)]
        cases = manifest["cases"].values()
        return {EXPORT_MANIFEST, *declared, *(rel for entry in cases for rel in label_files(entry)),
                *(str(rel) for entry in cases for rel in entry.get("blank", []))}
    except (OSError, ValueError) as err:
        raise UnreadableManifest(str(err)) from None
    except (KeyError, TypeError, AttributeError) as err:
        raise UnreadableManifest(f"it does not list the exported cases and their files: "
                                 f"{type(err).__name__}: {err}") from None


def check_export_target(target: Path) -> None:
    """An export replaces ``target`` whole, so it may only replace an earlier export: a file, a link or
    a folder holding files no export wrote (the user's own) is refused with Conflict, not deleted."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise Conflict(f"{target} is not a folder an export wrote; move it away, then export again")
    try:
        ours = exported_files(target)
    except UnreadableManifest as err:
        raise Conflict(f"the earlier export's manifest {target / EXPORT_MANIFEST} cannot be read ({err}), so the "
                       f"files that export wrote in {target} cannot be told from any of yours, and the export "
                       "replaces that folder whole; move the folder away (or delete it if it holds only the "
                       "earlier export), then export again") from None
    foreign = sorted(p.relative_to(target).as_posix() for p in target.rglob("*")
                     if not p.is_dir() or p.is_symlink())
    foreign = [name for name in foreign if name not in ours]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise Conflict(f"{target} holds files an export did not write ({shown}); the export replaces that "
                       "folder whole, so move them out, then export again")


def remove_export_leftovers(folder: Path) -> None:
    """The staging and set-aside folders of exports killed before they finished (``export`` and
    ``_swap_in`` name them): each holds a whole set of label volumes, and nothing else removes them.
    Only one export runs at a time on a project (``one_studio``, the export lock), so none is in use."""
    for pattern in (f".{EXPORT}.partial-*", f".{EXPORT}.old-*"):
        for leftover in folder.glob(pattern):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)


def _swap_in(staging: Path, target: Path) -> None:
    """Put a finished folder in place of ``target``: the old one is moved aside, then removed (and put
    back if the new one cannot take its place, so a failed export leaves the previous one)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["Prediction", "Project", "case_key", "check_export_target", "check_not_foreign", "check_project_folder",
           "check_writable_folder", "default_project", "encode_prediction", "one_studio", "slice_revision"]
