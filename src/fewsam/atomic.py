"""Atomic file writes: a temporary file in the target folder, then a rename.

A kill at any moment leaves either the old file or the new one, never half of one. Every writer
in fewsam (cache entries, checkpoints, run configs, predictions) goes through here. A kill can
leave the temporary file behind (``.NAME.RANDOM.tmp``); ``stale_temporaries`` finds them so
that whoever owns the folder can clear them. Ctrl-C and SIGTERM are held while a file is written
and acted on once it is in place: a Python handler that raises inside a writer (torch's zip
writer, for one) would otherwise end in the writer's own error instead of the stop it asked for.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)

TEMPORARY_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with stop_signals_held():
        fd, tmp = _create_temporary(path)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for the duration and deliver them, to the handlers they had, on leaving.

    Only the main thread can change handlers; elsewhere (and for a signal that is ignored or whose
    handler Python does not know) nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {
        signum: handler
        for signum in HELD_SIGNALS
        if (handler := signal.getsignal(signum)) not in (None, signal.SIG_IGN)
    }
    for signum in previous:
        signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusively created ``.NAME.RANDOM.tmp`` next to ``path``.

    Created with mode 0o666 so that the process umask applies as for any ``open()``: files in a
    shared cache or run folder stay readable to the group when the umask says so (``mkstemp``
    would make every one of them private, 0o600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def stale_temporaries(folder: str | Path) -> Iterator[Path]:
    """The temporary files ``atomic_write`` left under ``folder`` (at any depth) when killed mid-write.

    Only safe to delete while no writer is at work in the folder (a run folder under its lock)."""
    for path in Path(folder).rglob(f".*{TEMPORARY_SUFFIX}"):
        if path.is_file() and path.name.count(".") >= 3:
            yield path


def check_folder_path(path: Path, option: str, error: type[Exception] | None = None) -> None:
    """``path`` is to be a folder fewsam writes in: not a file, not under a file, and writable (itself,
    or its nearest existing parent until it is made). One line naming ``option`` instead of an OSError.
    Torch-free, so that the studio's server checks paths without loading the models."""
    from fewsam.errors import RunError

    error = error or RunError
    if path.exists() and not path.is_dir():
        raise error(f"{option} {path} is a file; give a folder path")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise error(f"{option} {path}: {existing} is a file, not a folder; give another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"{option} {path}: {existing} is read-only; give a writable {option} folder")
