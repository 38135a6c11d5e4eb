"""A stopped predict's finished cases, kept for the same command to go on from (``resumable_staging``).

Hundreds of CT volumes take hours on a CPU, so a predict stopped on case 70 of 100 (Ctrl-C, SIGTERM,
kill -9, a damaged case the user then replaces) keeps the 69 it finished, and the same command again
predicts only the other 31, as ``nnUNetv2_predict --continue_prediction`` does. --out still appears only
whole, at the end: the finished cases wait beside it, in ``.OUT.predict-partial/``:

- ``predictions/``: the set that moves into --out once every case is done;
- ``finished.json``: what made them (``identity``: --out, the run's files, the data, its split and cases,
  the options that change a prediction), the finished cases, each with its files, and (``inputs``) the size
  and modification time of each file a finished case was read from: an image replaced after its prediction
  was made (re-exported, corrected) is predicted again rather than its stale prediction taken up, found
  without reading or hashing any image. A journal without them takes its cases up as they are.

A case counts as finished once the journal names it, and the journal is rewritten (atomically) after all
of its files are in place, so a file a kill left half-written is never taken for a finished case:
whatever the journal does not name is removed before predicting goes on. A predict with other settings
finds another identity and starts afresh, saying so. Its writer holds an exclusive lock on the folder: a
second predict into the same --out at the same time is refused rather than fill it too, and a folder no
live predict holds is the next predict's, to take up or to clear.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from fewsam.atomic import (LockHeld, all_hidden_names, hidden_name, let_go, make_parents, move_in_whole,
                           remove_abandoned_stagings, remove_if_empty, take_folder)
from fewsam.errors import RunError, Stopped
from fewsam.progress import record, tell
from fewsam.runs import config_differences, write_json

KEPT_SUFFIX = ".predict-partial"
JOURNAL = "finished.json"
FILES = "predictions"

# (st_size, st_mtime_ns) of each file a case was read from, by path
Stamps = dict[str, list[int]]
InputFiles = Callable[[str], Iterable[Path]]


def file_stamps(paths: Iterable[Path]) -> Stamps:
    """The size and modification time of each of ``paths``: what tells a replaced file apart without reading
    it. A file that is gone is left out, so that its case differs from the one recorded."""
    stamps: Stamps = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        stamps[os.path.abspath(path)] = [stat.st_size, stat.st_mtime_ns]  # the same whatever --data's spelling
    return stamps


def kept_folder(out: Path) -> Path:
    """Where the finished cases of a predict into ``out`` wait: a name derived from ``out`` alone, so that
    the same command finds them again."""
    return out.parent / hidden_name(out.name, KEPT_SUFFIX)


@dataclass
class KeptCases:
    """The finished cases of one predict into --out: ``finished`` maps a case id to its files (its
    prediction first), relative to ``files``, the folder that moves into --out; ``inputs`` maps it to the
    ``file_stamps`` of the files it was read from (``input_files`` lists them; none recorded without it)."""

    folder: Path
    identity: dict[str, Any]
    finished: dict[str, list[str]] = field(default_factory=dict)
    inputs: dict[str, Stamps] = field(default_factory=dict)
    input_files: InputFiles | None = None

    @property
    def files(self) -> Path:
        return self.folder / FILES

    def finish(self, case_id: str, files: Sequence[Path]) -> None:
        """Record ``case_id`` as finished; called once all its ``files`` (relative to ``files``) are in place."""
        self.finished[case_id] = [Path(name).as_posix() for name in files]
        if self.input_files is not None:
            self.inputs[case_id] = file_stamps(self.input_files(case_id))
        self.write()

    def inputs_changed(self) -> list[str]:
        """The finished cases whose input files are no longer those recorded (replaced, grown, gone); a case
        recorded without them (an older journal) counts as unchanged."""
        if self.input_files is None:
            return []
        return [case_id for case_id in self.finished
                if case_id in self.inputs and self.inputs[case_id] != file_stamps(self.input_files(case_id))]

    def in_place(self) -> dict[str, list[str]]:
        """The finished cases whose files are all there (a stop while clearing them removed some)."""
        return {case_id: names for case_id, names in self.finished.items()
                if all((self.files / name).is_file() for name in names)}

    def write(self) -> None:
        inputs = {case_id: stamps for case_id, stamps in self.inputs.items() if case_id in self.finished}
        write_json(self.folder / JOURNAL, {"identity": self.identity, "finished": self.finished, "inputs": inputs})

    def keep_only_finished(self) -> None:
        """Remove every file under ``files`` that no finished case names (a temporary or a case's file a kill
        left before the journal named it), and the folders that leaves empty."""
        named = {self.files / name for names in self.finished.values() for name in names}
        for path in sorted(self.files.rglob("*"), reverse=True):  # a folder's files before the folder
            if path.is_symlink() or not path.is_dir():
                if path not in named:
                    path.unlink()
            elif not any(path.iterdir()):
                path.rmdir()


@contextmanager
def kept_folder_held(out: Path) -> Iterator[list[Path]]:
    """The lock on the kept folder of ``out`` (made where missing, with the parents of ``out``), held while
    the block runs: a predict takes it before it opens its log, so that a second predict into the same
    --out is refused before it writes a line into the log of the one at work. Yields the folders it made,
    for ``resumable_staging`` to remove where nothing is kept in them."""
    made = make_parents(out.parent)
    try:
        lock = _taken(kept_folder(out), out)
    except BaseException:
        remove_if_empty(made)
        raise
    try:
        _remove_plain_named_kept_folder(out)
        yield made
    finally:
        let_go(lock)


def _remove_plain_named_kept_folder(out: Path) -> None:
    """The kept folder beside a long ``out`` under the plain name ``all_hidden_names`` gives besides today's,
    which no predict of this fewsam takes up: removed, and said, where its journal names ``out`` and no predict
    holds it. One whose journal names another --out (a long one that begins alike) is that one's, left alone."""
    for name in all_hidden_names(out.name, KEPT_SUFFIX)[1:]:
        folder = out.parent / name
        earlier = _read_journal(folder)
        if earlier is None or earlier.identity.get("out") != str(out.resolve()):
            continue
        try:
            fd, _ = take_folder(folder)
        except (LockHeld, OSError):
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            let_go(fd)
        tell(f"removed {folder}: the {len(earlier.finished)} predictions an earlier fewsam kept for {out}, under a "
             "name this one does not take up")


@contextmanager
def resumable_staging(out: Path, made: list[Path], identity: dict[str, Any], total: int, resume: bool,
                      overwrite: bool, replaces: Iterable[str] = (),
                      joining: Mapping[str, Path] = MappingProxyType({}),
                      input_files: InputFiles | None = None) -> Iterator[KeptCases]:
    """``atomic.staged_folder`` for a long predict of ``total`` cases, run while ``kept_folder_held`` (which
    made the folders ``made``) holds its folder: the cases finished by an earlier predict with the same
    ``identity`` are taken up (unless ``resume`` is False: --no-resume, or the files ``input_files`` lists for
    a case changed since), and when the block fails, the ones finished so far stay for the same command again.
    When it ends well, the finished set moves into ``out`` whole (``replaces`` and ``joining`` as for
    ``staged_folder``)."""
    remove_abandoned_stagings(out)
    folder = kept_folder(out)
    try:
        kept = _taken_up(folder, identity, total, resume, input_files)
        yield kept
        kept.keep_only_finished()
        move_in_whole(kept.files, out, overwrite, replaces, joining)
    except BaseException as exc:
        left = _read_journal(folder)  # what the disk holds: a stop while taking the folder up keeps it too
        if left is not None and left.identity != identity:
            pass  # stopped before another predict's cases were cleared: theirs, left for the command that made them
        elif left is not None and left.in_place():
            _say_kept(exc, KeptCases(folder, identity, left.in_place()), total, resume)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            remove_if_empty(made)
        raise
    else:
        shutil.rmtree(folder, ignore_errors=True)


def _taken(folder: Path, out: Path) -> int | None:
    """An exclusive lock on ``folder`` (made when missing), held until the predict ends; refused in one line
    while another predict into ``out`` holds it. None where the file system has no locks."""
    while True:
        folder.mkdir(exist_ok=True)
        try:
            fd, _ = take_folder(folder)
        except LockHeld:
            raise RunError(f"another predict into {out} is running (it holds {folder}); wait for it to end, or "
                           "choose another --out") from None
        except FileNotFoundError:  # removed as it was opened, by a predict that had just finished
            continue
        if _is_folder_at(fd, folder):
            return fd
        let_go(fd)  # the folder locked had been removed (its predict finished): take the one there now


def _is_folder_at(fd: int, folder: Path) -> bool:
    """Whether the open folder ``fd`` is still the one at ``folder``."""
    try:
        here, opened = os.stat(folder), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)


def _taken_up(folder: Path, identity: dict[str, Any], total: int, resume: bool,
              input_files: InputFiles | None) -> KeptCases:
    """The cases an earlier predict finished in ``folder``, where it had the same ``identity``, their files
    are all in place and their input files are unchanged; anything else there is cleared. Either way, the user
    is told."""
    earlier = _read_journal(folder)
    kept = KeptCases(folder, identity, input_files=input_files)
    if earlier is not None and earlier.finished:
        if not resume:
            tell(f"not resuming (--no-resume): the {len(earlier.finished)} predictions kept in {folder} are "
                 "discarded")
        elif earlier.identity != identity:
            tell(f"not resuming: the {len(earlier.finished)} predictions kept in {folder} were made by another "
                 f"predict ({config_differences(earlier.identity, identity)}); starting afresh")
        else:
            kept.finished, kept.inputs = earlier.in_place(), earlier.inputs
            _drop_changed_inputs(kept)
    for path in folder.iterdir():  # the journal is replaced below, in one step, not removed first
        if path.name != JOURNAL and (path.name != FILES or not kept.finished):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    kept.files.mkdir(exist_ok=True)
    kept.keep_only_finished()
    kept.write()
    if kept.finished:
        tell(f"resuming: {len(kept.finished)} of {total} cases already predicted in {folder}")
    return kept


def _drop_changed_inputs(kept: KeptCases) -> None:
    """Leave out of ``kept`` the cases whose input files changed since they were predicted, saying how many,
    so that they are predicted again from the files there now."""
    changed = kept.inputs_changed()
    for case_id in changed:
        del kept.finished[case_id]
    if changed:
        tell(f"{len(changed)} kept case{'s' if len(changed) != 1 else ''} whose input files changed "
             f"{'are' if len(changed) != 1 else 'is'} predicted again")


def _read_journal(folder: Path) -> KeptCases | None:
    """The journal an earlier predict left in ``folder``; None where there is none or it cannot be read."""
    try:
        journal = json.loads((folder / JOURNAL).read_text(encoding="utf-8"))
        identity, finished = journal["identity"], journal["finished"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(identity, dict) or not isinstance(finished, dict):
        return None
    if not all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in finished.values()):
        return None
    return KeptCases(folder, identity, finished, _recorded_inputs(journal.get("inputs")))


def _recorded_inputs(inputs: Any) -> dict[str, Stamps]:
    """The ``inputs`` of a journal, the cases whose record is malformed left out (as are all of an older
    journal, which has none): those are taken up as they are."""
    if not isinstance(inputs, dict):
        return {}
    return {case_id: stamps for case_id, stamps in inputs.items()
            if isinstance(stamps, dict) and all(isinstance(stamp, list) for stamp in stamps.values())}


def _say_kept(exc: BaseException, kept: KeptCases, total: int, resume: bool) -> None:
    """The log says what a failed or stopped predict kept, and which command takes it up (not the same one
    where it has --no-resume, which would discard it); a stop's message says so too."""
    what = f"{len(kept.finished)} of {total} predictions are kept in {kept.folder}"
    again = "the same command again" if resume else "the same command without --no-resume"
    record(f"{what}: {again} predicts only the rest")
    if isinstance(exc, Stopped):
        exc.kept = f"{what} (--out is written whole, at the end): run {again} to resume"
