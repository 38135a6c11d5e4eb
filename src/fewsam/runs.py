"""Run directories: everything needed to predict again, and nothing silently overwritten.

RUN/config.json records the method, model, checkpoint, class map, labelled set (and a hash of
its images and labels) and every hyper-parameter. Fitting into a folder that already holds a
run resumes it when the configuration and the data are identical and refuses otherwise.

One fit at a time owns a run folder (``RunFolder``: an flock on RUN/.lock). A fit that ends
well writes RUN/manifest.json (size and sha256 of every file predict reads); ``check_run``
refuses a run whose fit never finished or whose files were lost or damaged since, so that a
prediction is never made from a partial run.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from fewsam import __version__
from fewsam.atomic import LockHeld, atomic_write_bytes, stale_temporaries, take_lock_file
from fewsam.errors import RunError, Stopped
from fewsam.progress import say_once

CONFIG = "config.json"
LAST = "checkpoint_last.pt"  # the resume state of the training loop
BEST = "checkpoint_best.pt"  # the best-validated weights: what predict uses
LOG = "fit_log.jsonl"
TEXT_LOG = "fit.log"  # the same fit for a reader: progress, notices, validation, timestamped
# beside `fewsam predict`'s predictions: the command, host, notices and progress that made them; kept here,
# with the run's own files, so that opening data can tell a prediction folder without importing the model
PREDICT_LOG = "predict.log"
MANIFEST = "manifest.json"  # written when a fit ends well: what predict reads, with sizes and hashes
LOCK = ".lock"
DATA_HASH = "data_sha256"  # config key: the labelled slices' and validation cases' arrays
MASK_CODING = "mask_coding"  # config key: a 2D dataset's class -> mask pixel coding (a fact of the data)
# config.json is checked by content, not by hash; the logs are the user's to read, annotate or rotate
NOT_FOR_PREDICT = {CONFIG, LAST, LOG, TEXT_LOG, MANIFEST, LOCK}
COPIED_RUN = "teacher"  # RUN/teacher/: another run's predictor files copied in (distill's teacher blend)


class RunFolder:
    """RUN, owned by one fit from before its data is opened until it ends.

    ``with RunFolder(run) as folder:`` refuses a foreign folder, creates RUN and takes its lock
    (a second fit into the same folder is refused at once); ``folder.prepare(config)`` resumes or
    refuses as ``prepare_run_dir`` does. A clean exit writes the manifest; a failure before the
    first checkpoint of a new run (its own, or that of a stage fitted below it) removes what the
    fit had made. A run whose fit had finished (``folder.finished``) is left exactly as it is: its
    manifest is neither removed nor rewritten, so a rerun that fails or is stopped cannot turn a
    finished run into an unfinished one."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir)
        self.created = self.new = self.prepared = self.finished = False
        self._lock: int | None = None

    def __enter__(self) -> "RunFolder":
        _refuse_foreign(self.path)
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = _take_lock(self.path)
        self.new = not (self.path / CONFIG).exists()
        return self

    def prepare(self, config: dict[str, Any], defaults: dict[str, Any] | None = None) -> Path:
        """Write (or match) config.json, refuse damaged finished runs, clear what a kill left."""
        fitted = self._holds_work() or (self.path / MANIFEST).exists()
        path, resuming = prepare_run_dir(self.path, config, defaults, fitted)
        self.finished = resuming and _verify_finished(path)
        for tmp in stale_temporaries(path):
            tmp.unlink(missing_ok=True)
        if not self.finished:
            (path / MANIFEST).unlink(missing_ok=True)
        self.prepared = True
        return path

    def __exit__(self, exc_type, exc, tb) -> None:
        ok = exc_type is None
        try:
            if ok and self.prepared and not self.finished:
                write_manifest(self.path)
        except BaseException:
            ok = False
            raise
        finally:
            removed = not ok and self.new and not self._holds_work()
            if removed:
                self._undo()
            if isinstance(exc, Stopped):  # the outermost folder exits last, so its word is the one kept
                exc.run_removed = removed
            os.close(self._lock)

    def _holds_work(self) -> bool:
        """Whether the new run already holds resumable training: its own checkpoint, or that of a stage
        fitted into a folder below it (distill's own teacher in RUN/teacher_fit/, SAM-Match's decoder
        in RUN/sam/). A fit stopped after such a stage resumes from it, as the stop message promises,
        instead of losing a teacher fitted for hours with the student's first steps."""
        return any(self.path.rglob(LAST))

    def _undo(self) -> None:
        """Remove a new run again: the whole folder if the fit made it, else what it put in it."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _verify_finished(path: Path) -> bool:
    """Whether the run at ``path`` finished (it has a readable manifest), refusing one whose files
    were damaged since. A run without a readable manifest is unfinished: resuming it is what
    writes one."""
    try:
        _, files = _read_manifest(path)
    except RunError:
        return False
    _verify_files(path, files, f"delete {path} and fit again (nothing was changed)")
    return True


@contextmanager
def run_folder(run_dir: str | Path, config: dict[str, Any], defaults: dict[str, Any] | None = None) -> Iterator[Path]:
    """``RunFolder`` for a config known up front: locked, prepared, manifest written on success."""
    with RunFolder(run_dir) as folder:
        yield folder.prepare(config, defaults)


def _refuse_foreign(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} is a file, not a run folder; choose another --out")
    if path.exists() and not holds_a_run(path) and any(p.name != LOCK for p in path.iterdir()):
        raise RunError(f"{path} exists and is not a fewsam run folder; choose another --out")


def _take_lock(path: Path) -> int:
    """An exclusive flock on RUN/.lock, released when its descriptor closes (also when killed).
    On a file system without locks the fit goes on unlocked and says so (``take_lock_file``)."""
    try:
        fd, unsupported = take_lock_file(path / LOCK)
    except LockHeld:
        raise RunError(f"{path} is in use by another fit (it holds {path / LOCK}); wait for that fit to end "
                       "or choose another --out") from None
    if unsupported is not None:
        say_once(f"{path} is on a file system without file locks ({os.strerror(unsupported)}): "
                 "a second fit into it at the same time would not be refused; run one at a time")
    return fd


def prepare_run_dir(run_dir: str | Path, config: dict[str, Any],
                    defaults: dict[str, Any] | None = None, fitted: bool = True) -> tuple[Path, bool]:
    """Create RUN (or accept it for resuming). Returns (path, resuming). ``fitted`` False: RUN holds no
    checkpoint yet (a fit killed outright before its first one, which Ctrl-C would have removed), so a
    refusal does not send the user to resume it with its settings (a fit the OOM killer stopped would only
    be stopped again), but says that nothing is fitted in it.

    ``defaults``: the config's sections as the method's default settings give them. An option the
    stored run predates (a fewsam upgrade added it) counts as set to its default there, and the fit
    says which options those were: an unfinished run still resumes after an upgrade, while asking
    a new option with another value is refused like any other change."""
    path = Path(run_dir)
    config = {**config, "fewsam_version": __version__}
    existing = path / CONFIG
    if existing.exists():
        stored, predated = with_options_it_predates(read_config(path), defaults or {})
        _refuse_other_method(path, stored, config)
        by_hash = bool(stored.get(DATA_HASH) and config.get(DATA_HASH))
        requested = json.loads(json.dumps(config))
        # options first: another labelled budget or --val-split changes the data hash too, and is no change of data
        changed = config_differences(_comparable(stored, by_hash), _comparable(requested, by_hash),
                                     first=config.get("method"))
        if changed:
            advice = ("rerun with its settings to resume" if fitted else
                      f"it was stopped before its first checkpoint, so nothing is fitted in it: delete {path} to "
                      "start this fit there")
            raise RunError(f"{path} already holds a run with a different configuration ({changed}); "
                           f"{advice}, or choose another --out (nothing was overwritten)")
        _refuse_other_labelled_slices(path, stored, config)
        _refuse_changed_data(path, stored, config)
        if predated:
            say_once(f"{path} was written before the options {', '.join(predated)} existed: resumed with "
                     "their defaults")
        if by_hash and stored.get("data") != config.get("data"):
            _record_moved_data(path, config["data"])
        return path, True
    _refuse_foreign(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json(existing, config)
    return path, False


def with_options_it_predates(stored: dict[str, Any], defaults: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``stored`` with the options of ``defaults``'s sections that it lacks set to their defaults
    (and their names, "section.name"); sections it lacks entirely are left out, not invented."""
    filled = dict(stored)
    names = []
    for section, values in defaults.items():
        if isinstance(values, dict) and isinstance(stored.get(section), dict):
            missing = {k: v for k, v in values.items() if k not in stored[section]}
            filled[section] = {**stored[section], **json.loads(json.dumps(missing))}
            names += [f"{section}.{k}" for k in sorted(missing)]
    return filled, names


def config_differences(stored: dict[str, Any], requested: dict[str, Any], shown: int = 4,
                       first: str | None = None) -> str:
    """The settings that keep a run from resuming, as "name: stored -> requested" (nested
    sections as "section.name"), so a user sees which option to change back; "" when equal.
    ``first``: a section listed before the rest (the method's own options, which the user gave,
    rather than what they imply: the model a --sam fit loads)."""
    pairs = []
    for key in sorted(set(stored) | set(requested), key=lambda k: (k != first, k)):
        old, new = stored.get(key), requested.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            pairs += [(f"{key}.{k}", old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
                      if old.get(k) != new.get(k)]
        elif old != new:
            pairs.append((key, old, new))
    text = "; ".join(f"{name}: {_short(a)} -> {_short(b)}" for name, a, b in pairs[:shown])
    return text + (f"; and {len(pairs) - shown} more" if len(pairs) > shown else "")


def _short(value: Any, limit: int = 40) -> str:
    text = "unset" if value is None else json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _comparable(config: dict[str, Any], by_hash: bool = False) -> dict[str, Any]:
    """Fields that must agree between a run and its resumption: not the display-only settings, and
    not the data hash, which ``_refuse_changed_data`` compares with its own message, nor the mask coding
    the data shows (a run written before fewsam kept it still resumes). ``by_hash``
    (both configs hold a data hash): not the data folder's path either, as the hash says whether it
    is the same data; a dataset copied to a job's own scratch folder still resumes the run."""
    skip = {"device", "cache", "progress", DATA_HASH, MASK_CODING} | ({"data"} if by_hash else set())
    return {k: _comparable_section(k, v) for k, v in config.items() if k not in skip}


def _comparable_section(key: str, section: Any) -> Any:
    """A config section as a resumption compares it: paths resolved (``_with_resolved_paths``; the
    SAM checkpoint too) and the labelled slices left out, as the data, not an option, decides which
    slices a budget takes (``_refuse_other_labelled_slices`` names their change as one of the data).
    The step plateaus count from (``train.patience_after``) is left out of a fit without --patience, where
    it decides nothing: two such fits that differ in it alone train alike, so the one resumes the other."""
    if key == "checkpoint" and isinstance(section, str):
        return str(Path(section).expanduser().resolve())
    if key == "labelled" and isinstance(section, dict):
        section = {k: v for k, v in section.items() if k != "refs"}
    if key == "train" and isinstance(section, dict) and not section.get("patience"):
        section = {k: v for k, v in section.items() if k != "patience_after"}
    return _with_resolved_paths(section)


# files and folders named on the command line: `fs3` and `/work/fs3` are one teacher, one --attributes table
PATH_OPTIONS = ("teacher", "attributes")


def _with_resolved_paths(section: Any) -> Any:
    """A config section with its path options resolved against the working folder, so that a fit
    resumed with the same folder spelled otherwise (relative, absolute, through ~) is no change."""
    if not isinstance(section, dict):
        return section
    return {k: str(Path(v).expanduser().resolve()) if k in PATH_OPTIONS and isinstance(v, str) else v
            for k, v in section.items()}


def _record_moved_data(path: Path, data: str) -> None:
    """config.json names the data folder a resumed fit read (what `predict --refine-if-better` reads
    its validation cases from), and the fit says that it moved."""
    stored = read_config(path)
    say_once(f"the data of {path} moved from {stored.get('data')} to {data} (the same labelled slices and "
             "validation cases): resumed, and config.json now names the new folder")
    write_json(path / CONFIG, {**stored, "data": data})


def _refuse_other_method(path: Path, stored: dict[str, Any], config: dict[str, Any]) -> None:
    """A run of another method differs in every section; name that, not the first few settings."""
    if config.get("method") and stored.get("method") != config["method"]:
        raise RunError(f"{path} holds a {stored.get('method')} run, not a {config['method']} one; fit into another "
                       "--out (nothing was overwritten)")


def _refuse_other_labelled_slices(path: Path, stored: dict[str, Any], config: dict[str, Any]) -> None:
    """The same budget taking other slices means the training cases of the data changed (a case added,
    removed or renamed moves the budget order): said as that, since rerunning with the run's settings,
    as a change of options is told to, cannot resume it."""
    old, new = ((c.get("labelled") or {}).get("refs") for c in (stored, config))
    if old is None or new is None or old == new:
        return
    raise RunError(f"the labelled budget now takes other slices of {config.get('data') or 'the data'} "
                   f"({_short(old)} -> {_short(new)}) than when {path} was fitted: its training cases changed (a "
                   "case added, removed or renamed); restore them, or fit into another --out (nothing was overwritten)")


def _refuse_changed_data(path: Path, stored: dict[str, Any], config: dict[str, Any]) -> None:
    """Resuming (or re-running) a fit whose labels or images changed would mix two datasets."""
    if stored.get(DATA_HASH) and config.get(DATA_HASH) and stored[DATA_HASH] != config[DATA_HASH]:
        if stored.get("data") and stored.get("data") != config.get("data"):  # not a moved copy: other data
            raise RunError(f"{path} was fitted on {stored['data']}, and the labelled slices or validation cases in "
                           f"{config.get('data')} differ from those; give its data, or fit into another --out "
                           "(nothing was overwritten)")
        raise RunError(f"the labelled slices or validation cases in {config.get('data') or 'the data'} changed "
                       f"since {path} was fitted; fit into another --out (nothing was overwritten)")


def data_sha256(dataset: Any, refs: Iterable[Any], val_ids: Iterable[str]) -> str:
    """sha256 over the labelled slices' and the validation cases' images and labels (their bytes,
    dtypes and shapes), each case read once through ``dataset.load``."""
    digest = hashlib.sha256()
    by_case: dict[str, list[int]] = {}
    for ref in refs:
        by_case.setdefault(ref.case_id, []).append(ref.z)
    for case_id, zs in by_case.items():
        case = dataset.load(case_id)
        for z in zs:
            _hash_arrays(digest, f"{case_id}:{z}", case.image[z], None if case.label is None else case.label[z])
    for case_id in val_ids:
        case = dataset.load(case_id)
        _hash_arrays(digest, case_id, case.image, case.label)
    return digest.hexdigest()


def _hash_arrays(digest: Any, name: str, image: Any, label: Any) -> None:
    digest.update(name.encode() + b"\0")
    for array in (image, label):
        if array is None:
            digest.update(b"none\0")
            continue
        digest.update(f"{array.dtype}{tuple(array.shape)}\0".encode())
        digest.update(array.tobytes())


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """RUN/config.json as a dict that names its method; a clear error for anything else."""
    path = Path(run_dir) / CONFIG
    if Path(run_dir).is_file():  # its config.json or a checkpoint, given for the folder that holds it
        folder = Path(run_dir).parent
        if (folder / CONFIG).is_file():
            raise RunError(f"{run_dir} is a file of the run folder {folder}; give that folder")
        raise RunError(f"{run_dir} is a file, not a run folder; give the folder `fewsam fit` wrote")
    if not path.exists():
        raise RunError(f"{run_dir} is not a fewsam run folder (no {CONFIG}); run `fewsam fit ...` first")
    config, problem = _parsed_config(path)
    if problem is None:
        return config
    if not _holds_fit_files(Path(run_dir)):  # someone else's config.json: their folder is not to be deleted
        raise RunError(f"{run_dir} is not a fewsam run folder (its {CONFIG} {problem}); give the folder "
                       "`fewsam fit` wrote")
    raise RunError(f"{path} {problem}; delete {run_dir} and fit again")


def _parsed_config(path: Path) -> tuple[dict[str, Any], None] | tuple[None, str]:
    """(config, None) when ``path`` is a JSON object naming its method, else (None, what is wrong)."""
    try:
        config = json.loads(edited_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"is corrupt ({_first_line(err)})"
    if not isinstance(config, dict):
        return None, "is not a JSON object, so it records no run"
    if not isinstance(config.get("method"), str):
        return None, "does not say which method made the run (no \"method\")"
    return config, None


def edited_text(path: Path) -> str:
    """A JSON file's text as fewsam wrote it (UTF-8) or as an editor saved it after a change by hand
    (config.json's data folder that moved, an evaluation opened and saved): with a byte-order mark
    (Windows Notepad) or in UTF-16 ("Unicode"). Read as plain UTF-8, either was called corrupt (a run
    with the advice to delete it and fit it again)."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    return data.decode("utf-8-sig")


def records_an_unscaled_fit(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a fit recorded without fair scaling (its config.json's "fair" is null): one
    that may have been given --bins, --fair-gamma or --attributes without --fair-attribute, which config.json
    does not record, so that the command that made it resumes it."""
    path = Path(run_dir) / CONFIG
    try:
        config, problem = _parsed_config(path) if path.is_file() else (None, "absent")
    except OSError:
        return False
    return problem is None and "fair" in config and config["fair"] is None


FIT_FILES = (LAST, BEST, LOG, TEXT_LOG, MANIFEST)  # what only a fit writes into its run folder


def _holds_fit_files(path: Path) -> bool:
    return any((path / name).exists() for name in FIT_FILES)


def holds_a_run(path: Path) -> bool:
    """Whether the folder ``path`` is a fewsam run's: its config.json names a method, or it holds files
    only a fit writes (a damaged config.json is then named as the run's). A folder of the user's with a
    config.json of its own (a downloaded model, another tool's work folder) is none."""
    return (path / CONFIG).is_file() and (_holds_fit_files(path) or _parsed_config(path / CONFIG)[1] is None)


def check_run(run_dir: str | Path) -> dict[str, Any]:
    """The run's config, once its fit is known to have finished and every file predict reads is
    as the fit left it (sizes and sha256 in RUN/manifest.json). Refuses naming the file.

    config.json itself may be edited (a data folder that moved), but not lose a key the fit
    recorded: the manifest lists them, so a truncated config is an error, not a KeyError."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    way_out = f"delete {run_dir} and fit again"
    keys, files = _read_manifest(run_dir)
    missing = [key for key in keys if key not in config]
    if missing:
        raise RunError(f"{run_dir / CONFIG} lacks {', '.join(map(repr, missing))}, which its fit recorded; "
                       f"restore it, or {way_out}")
    _verify_files(run_dir, files, way_out)
    return config


def write_manifest(run_dir: Path) -> Path:
    """Record size and sha256 of every file predict reads (``predict_files``) and config.json's keys."""
    files = {str(p.relative_to(run_dir)): _file_record(p) for p in predict_files(run_dir)}
    path = run_dir / MANIFEST
    write_json(path, {"fewsam_version": __version__, "config_keys": sorted(read_config(run_dir)),
                      "files": files})
    return path


def predict_files(run_dir: Path) -> list[Path]:
    """What a prediction may read besides config.json: the run's own top-level files, every best
    checkpoint below it (SAM-Match's RUN/sam/) and every file of a copied run (RUN/teacher/, its
    config.json included: the copy is read as a run of its own; also the copy's own copied teacher,
    RUN/teacher/teacher/), but not the resume state, the log or temporaries."""
    top = [p for p in run_dir.iterdir() if p.is_file() and p.name not in NOT_FOR_PREDICT
           and not p.name.startswith(".")]
    nested = [p for p in run_dir.rglob(BEST) if p.parent != run_dir and p.is_file()]
    copied = [p for p in (run_dir / COPIED_RUN).rglob("*") if p.is_file() and not p.name.startswith(".")]
    return sorted(set(top + nested + copied))


def _read_manifest(run_dir: Path) -> tuple[list[str], list[tuple[str, int, str]]]:
    """(config keys, files as (name, bytes, sha256)) of RUN/manifest.json; refuses when it is absent
    (the fit never finished) or unreadable."""
    path = run_dir / MANIFEST
    if not path.exists():
        raise RunError(f"{run_dir} has no {MANIFEST}: its fit never finished (or an older fewsam made it); "
                       "resume it with the same `fewsam fit` command")
    try:
        manifest = json.loads(path.read_text())
        keys = [str(key) for key in manifest.get("config_keys", [])]
        files = [(str(name), int(rec["bytes"]), str(rec["sha256"])) for name, rec in manifest["files"].items()]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunError(f"{path} is corrupt ({_first_line(err)}); resume the run with the same `fewsam fit` "
                       "command to write it again") from err
    return keys, files


def predict_files_sha256(run_dir: Path) -> str:
    """One digest of the files predict reads from the run, as its manifest records them (sizes and
    sha256, which ``check_run`` verifies): predictions a stopped predict kept are taken up again only
    for the same weights and choices, also where another fit was written under the same path."""
    _, files = _read_manifest(run_dir)
    read = sorted(record for record in files if record[0] not in NOT_FOR_PREDICT)
    return hashlib.sha256(json.dumps(read).encode()).hexdigest()


def _verify_files(run_dir: Path, files: list[tuple[str, int, str]], way_out: str) -> None:
    """Refuse, naming the file, when a file the manifest lists is missing or changed; files predict
    does not read are passed over (the manifests of older fewsam versions list RUN/fit.log)."""
    for name, size, sha in files:
        if name not in NOT_FOR_PREDICT:
            _verify_file(run_dir / name, size, sha, way_out)


def _verify_file(path: Path, size: int, sha: str, way_out: str) -> None:
    if not path.is_file():
        raise RunError(f"{path} is missing from the run; {way_out}")
    if path.stat().st_size != size or _sha256(path) != sha:
        raise RunError(f"{path} is damaged (it differs from the one the fit wrote, see {MANIFEST}); {way_out}")


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def write_json(path: Path, data: Any, replace: bool = True) -> None:
    """Atomic JSON write; ``replace`` False: never over an existing file (``atomic_write``)."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write_bytes(path, text.encode(), replace)
