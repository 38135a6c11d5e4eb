"""The one error family users see. The CLI turns these into a single line and a non-zero exit."""

import errno
import os
import signal
from collections.abc import Collection

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file-size limit (ulimit -f, FAT32)
NOT_PERMITTED = (errno.EACCES, errno.EPERM, errno.EROFS)


class FewsamError(Exception):
    """A problem the user can fix (bad input, wrong option, incompatible files)."""


class DataError(FewsamError):
    """Input data is missing, unreadable, or inconsistent (shapes, label values)."""


class CacheError(FewsamError):
    """An embedding cache entry is corrupt or was written by another model/preprocessing."""


class ModelError(FewsamError):
    """A checkpoint is missing, unreadable, or does not match the requested model."""


class RunError(FewsamError):
    """A run directory is missing, incomplete, or would be overwritten."""


class Stopped(BaseException):
    """Ctrl-C or SIGTERM (``kill``, a batch scheduler, the studio stopping a worker) in the command
    line: the command winds down -- staged outputs removed, the fit's log says how it ended, the last
    checkpoint resumes it -- instead of dying mid-write. A BaseException, so no ``except Exception``
    swallows it, and not a KeyboardInterrupt, which typer turns into a silent exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        # set by the fit's RunFolder when it removed a new run that held no checkpoint yet: the stop
        # message then cannot promise a resume, only a fresh start (the embedding cache is kept)
        self.run_removed = False
        # set by ``atomic.staged_folder`` when the stop came while its files were moving into place, which
        # finishes first: the output folder then holds the whole new set, and the stop message says so
        self.written: str | None = None
        # set by ``progress.command_log``: the log the stopped command leaves, for the stop message to name
        self.log: str | None = None
        # set by ``resumable.resumable_staging``: what a stopped predict kept, and the command that goes on from it
        self.kept: str | None = None
        # set by ``predict`` for a run whose predictions need no encoder: no embeddings were cached to offer
        self.encodes = True

    @property
    def how(self) -> str:
        return "terminated (SIGTERM)" if self.signum == signal.SIGTERM else "interrupted"


def raise_stopped_on_signals() -> None:
    """Ctrl-C and SIGTERM raise :class:`Stopped` in the main thread, so a fit's log says how it ended
    and staged outputs are removed whichever way the user, a scheduler or the studio stops the process."""

    def _raise(signum: int, frame: object) -> None:
        raise Stopped(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise)


def end_as_signalled(stop: Stopped) -> None:
    """End the process as the signal would have ended it (a parent reads ``-SIGTERM``, not an exit code),
    once a :class:`Stopped` has unwound: the studio tells a cancelled or stopped worker from a crash so."""
    signal.signal(stop.signum, signal.SIG_DFL)
    os.kill(os.getpid(), stop.signum)


def is_disk_full(err: OSError) -> bool:
    """No space left (or the user's quota or file-size limit reached) where fewsam writes."""
    return err.errno in DISK_FULL


def disk_full_message(err: OSError) -> str:
    """One line for a full disk: what failed and what to do (a fit then resumes from its last checkpoint,
    embed keeps the slices it cached, predict wrote nothing)."""
    where = f" writing {err.filename}" if err.filename else ""
    return (f"{os.strerror(err.errno or errno.ENOSPC)}{where}; free space (or use another --out / --cache), "
            "then run the same command again")


def is_not_permitted(err: OSError) -> bool:
    """A file or folder fewsam may not read or write (permissions, a read-only mount) that the
    up-front checks could not see (ACLs, root squash on a network share, a file inside the data)."""
    return err.errno in NOT_PERMITTED and bool(err.filename)


def not_permitted_message(err: OSError) -> str:
    """One line for a refused read or write: which file, and what to do."""
    return (f"{os.strerror(err.errno or errno.EACCES)}: {err.filename}; give fewsam access to it (or use another "
            "--out / --cache / --json), then run the same command again")


def is_name_too_long(err: OSError) -> bool:
    """A path given to fewsam with a name longer than the file system holds (ENAMETOOLONG): such a
    file cannot exist, and every look at it -- even whether it exists -- fails with this error."""
    return err.errno == errno.ENAMETOOLONG and bool(err.filename)


def name_too_long_message(err: OSError) -> str:
    """One line for a name too long: which path, shortened, and what to do."""
    name = str(err.filename)
    shown = name if len(name) <= 80 else f"{name[:77]}..."
    return f"{os.strerror(errno.ENAMETOOLONG)}: {shown} ({len(os.fsencode(name))} bytes); give a shorter path"


def is_out_of_memory(err: BaseException) -> bool:
    """Memory ran out: numpy's MemoryError, or torch's RuntimeError from its CPU allocator ("can't
    allocate memory") or a GPU's (``torch.OutOfMemoryError``, "CUDA out of memory")."""
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


SIZE_OPTIONS = ("--batch-size", "--image-size")  # what a fit holds in memory at once, as the user set it
EVERY_MEMORY_OPTION = frozenset({*SIZE_OPTIONS, "--model"})  # when the command is not known
WORK_KEPT = {  # what the command kept of its work, so running it again does not start over
    "fit": "a fit resumes from its last checkpoint",
    "embed": "the slices already cached are not encoded again",
    "demo": "demo resumes its phantom and its fit in --out",
}


def out_of_memory_message(err: BaseException, command: str | None = None,
                          options: Collection[str] | None = None) -> str:
    """One line for memory that ran out: what ``command`` (``fit``, ``predict``, ...) can change, named
    by the options it has (``options``), and what it kept. Advice to lower an option the command does
    not take would send the user to an error; predict takes its model and slice size from the run, so
    it can only move to another device or be given more memory. Neither given (the studio's worker):
    every option that sizes a fit."""
    detail = " ".join(str(err).split())
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    kept = WORK_KEPT.get(command or "fit")
    return (f"out of memory ({detail or type(err).__name__}); {memory_advice(options)}, then run the same command "
            f"again{f' ({kept})' if kept else ''}")


def memory_advice(options: Collection[str] | None) -> str:
    """The changes that make a command fit in memory, among ``options``: a smaller batch, slice or model
    first; a command with none of those can still run on another --device; freeing memory always helps."""
    offered = EVERY_MEMORY_OPTION if options is None else frozenset(options)
    sizes = [option for option in SIZE_OPTIONS if option in offered]
    changes = [f"lower {' or '.join(sizes)}"] if sizes else []
    if "--model" in offered:
        changes.append("choose a smaller --model")
    if not changes and "--device" in offered:
        changes.append("use another --device")
    changes.append("free memory (a GPU's: close other jobs on it)")
    return changes[0] if len(changes) == 1 else f"{', '.join(changes[:-1])}, or {changes[-1]}"


def resource_failure_message(err: BaseException, command: str | None = None,
                             options: Collection[str] | None = None) -> str | None:
    """The one line above for a full disk, a refused file, a name too long or memory that ran out, or
    None for any other failure: the command line and the studio's worker say these the same way (the command line also
    says which command ran out of memory and its options, ``out_of_memory_message``)."""
    if isinstance(err, OSError) and is_disk_full(err):
        return disk_full_message(err)
    if isinstance(err, OSError) and is_not_permitted(err):
        return not_permitted_message(err)
    if isinstance(err, OSError) and is_name_too_long(err):
        return name_too_long_message(err)
    if is_out_of_memory(err):
        return out_of_memory_message(err, command, options)
    return None
