"""Atomic file writes: a temporary file in the target folder, then a rename.

A kill at any moment leaves either the old file or the new one, never half of one; the new file's bytes
reach the disk before its name does (``fsync``), and the rename before the writer goes on, so a power
cut leaves no empty or half-written file under a name a later step trusts (a studio label, a
checkpoint a resumed fit loads). Every writer
in fewsam (cache entries, checkpoints, run configs, predictions) goes through here. A kill can
leave the temporary file behind (``.NAME.RANDOM.tmp``, a long NAME cut short: ``hidden_name``);
``stale_temporaries`` finds them so that whoever owns the folder (under its lock) can clear them; in a
folder live writers share (the embedding cache) each writer holds a lock on its temporary while it
writes, and ``remove_abandoned`` clears those no live writer holds. Ctrl-C and
SIGTERM are held while a file is written and acted on once it is in place: a Python handler that
raises inside a writer (torch's zip writer, for one) would otherwise end in the writer's own error
instead of the stop it asked for.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping

from fewsam.errors import FewsamError, Stopped

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)

TEMPORARY_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], replace: bool = True) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path`` and rename it into place. ``replace``
    False: a file at ``path`` is never replaced, even one made while ``write`` ran (FileExistsError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with stop_signals_held():
        fd, tmp = _create_temporary(path)
        held = hold(tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                if not fh.closed:  # a writer may close what it was given
                    fh.flush()
                    os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                _rename_unless_taken(tmp, path)
            sync_folder(path.parent)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            failed = write_error_behind(exc, path)
            if failed is None:
                raise
            raise failed from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            let_go(held)
    return path


def _rename_unless_taken(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if nothing is there: a hard link fails, atomically, where a file is
    (a rename would replace it). A file system without hard links gets the check and the rename apart."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX keeps it in the folder's entry, which needs its own fsync);
    a file system that cannot sync a folder (some network mounts) is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error_behind(exc: Exception, path: Path) -> OSError | None:
    """The OSError (a full disk, a quota, a file-size limit) behind a writer's failure, naming ``path``;
    None when there is none. torch's checkpoint writer reports a failed write as a RuntimeError of its
    own ("unexpected pos"), and OSErrors raised from inside a writer name no file, so without this a
    full disk ends in a traceback instead of the one line that says where and what to do."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__context__
    if seen is None or seen.errno is None or (seen is exc and seen.filename):
        return None
    return OSError(seen.errno, seen.strerror or os.strerror(seen.errno), str(path))


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


def atomic_write_bytes(path: str | Path, data: bytes, replace: bool = True) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), replace)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusively created ``.NAME.RANDOM.tmp`` next to ``path``.

    Created with mode 0o666 so that the process umask applies as for any ``open()``: files in a
    shared cache or run folder stay readable to the group when the umask says so (``mkstemp``
    would make every one of them private, 0o600)."""
    while True:
        tmp = path.parent / hidden_name(path.name, f".{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def make_temporary_folder(parent: Path, prefix: str) -> Path:
    """A new, empty ``PREFIX.RANDOM`` folder in ``parent``, to fill and then rename into place.

    Made with mode 0o777 so that the umask applies, as ``_create_temporary`` does for files: a
    ``tempfile.mkdtemp`` folder is always private (0o700), and renamed into a shared cache it would
    shut every other user of the cache out of it."""
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir(mode=0o777)
            return folder
        except FileExistsError:
            continue


class LockHeld(Exception):
    """Another process holds the lock file ``take_lock_file`` was asked for."""


def take_lock_file(path: Path) -> tuple[int, int | None]:
    """Open ``path`` (created when missing) and take an exclusive flock on it, without waiting.

    The lock lasts until the descriptor closes, which the kernel does when the process ends however
    it ends, so a killed owner leaves no stale lock. Returns (descriptor, None) when locked. Only a
    lock another process holds refuses (``LockHeld``): a file system without locks (an NFS mount
    without its lock service) answers with another error, and taking that for "in use" would refuse
    the folder for good, so (descriptor, errno) comes back and the caller goes on unlocked, saying so."""
    fd = _open_lock_file(path)
    return fd, _locked_alone(fd, path)


def take_folder(folder: Path) -> tuple[int, int | None]:
    """``take_lock_file`` for a folder fewsam owns (a resumable staging folder): the lock is taken on the
    folder itself, so no lock file is left among the files it holds."""
    fd = os.open(folder, os.O_RDONLY)
    return fd, _locked_alone(fd, folder)


def _locked_alone(fd: int, path: Path) -> int | None:
    """An exclusive flock on ``fd`` without waiting: None when taken, the errno of a file system without
    locks, ``LockHeld`` (``fd`` closed) when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return err.errno or errno.ENOLCK
        os.close(fd)
        raise LockHeld(str(path)) from None
    return None


def _open_lock_file(path: Path) -> int:
    """The lock file's descriptor; a folder or an unwritable file in its place is the user's to move, said
    in one line (a run's or a project's lock is a file fewsam makes, so only a person puts one there)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except IsADirectoryError:
        raise FewsamError(f"{path} is a folder where fewsam keeps a lock file; move it away and try again") from None
    except PermissionError as err:
        raise FewsamError(f"cannot open the lock file {path} ({err.strerror}); make it and its folder writable, "
                          "or choose another folder") from None


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
    check_path_can_be_made(path, option, error, "folder")
    if path.exists() and not path.is_dir():
        raise error(f"{option} {path} is a file; give a folder path")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise error(f"{option} {path}: {existing} is a file, not a folder; give another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"{option} {path}: {existing} is read-only; give a writable {option} folder")


def inside_data(path: Path, data: str | Path | None) -> bool:
    """Whether ``path`` is the data folder ``data`` or lies in it (links resolved)."""
    if data is None or not Path(data).expanduser().is_dir():
        return False
    folder, target = Path(data).expanduser().resolve(), path.resolve()
    return target == folder or folder in target.parents


def can_write_in(folder: Path) -> bool:
    """Whether fewsam may make files in ``folder``, or in its nearest existing parent while it is not
    made yet: a cache shared on read-only storage is then read, never written."""
    absolute = Path(folder).absolute()
    existing = next((p for p in (absolute, *absolute.parents) if p.exists()), None)
    return existing is not None and existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def refused_write(err: OSError) -> bool:
    """A write the storage refused (permissions, a read-only mount) although ``can_write_in`` said
    yes: ACLs and a network share's root squash are not seen by ``os.access``."""
    return err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


DEFAULT_NAME_MAX = 255  # bytes in one file name on ext4, XFS, APFS and NTFS alike


def check_path_can_be_made(path: Path, option: str, error: type[Exception], kind: str) -> None:
    """Refuse an output path (a ``kind``, "folder" or "file") the file system cannot hold, before any
    work is done: a link on its way that leads nowhere (or back to itself), where mkdir fails with
    "File exists", a path lookup with a RuntimeError and a file written there replaces the link; or a
    name longer than the file system allows, where every look at the path fails. Walked from the
    root down, as a name too long cannot even be looked up."""
    absolute = path.absolute()
    place = Path(absolute.anchor)
    parts = absolute.parts[1:]
    for i, part in enumerate(parts):
        limit = name_limit(place)
        place = place / part
        _check_name_lengths((part,), limit, path, option, error)
        if place.is_symlink() and not place.exists():
            fix = f"create that {kind}" if place == absolute and kind == "folder" else "fix the link"
            raise error(f"{option} {path}{'' if place == absolute else f': {place}'} is a link to "
                        f"{os.readlink(place)}, {_why_broken(place)}; {fix} or give another {option}")
        if not place.is_dir():  # a file (the caller says so) or not made yet: what follows is made here
            _check_name_lengths(parts[i + 1:], limit, path, option, error)
            _refuse_kernel_file_system(place.parent, path, option, error)
            return
    _refuse_kernel_file_system(place, path, option, error)


# File systems through which the kernel shows its own state (processes, devices, cgroups, tracing): no file
# of one's own can be made in them, and root's write access (``os.access``) does not say so
KERNEL_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore", "bpf", "configfs",
    "efivarfs", "binfmt_misc", "fusectl", "devpts", "mqueue", "nsfs", "selinuxfs", "autofs", "hugetlbfs"})
MOUNT_TABLE = Path("/proc/self/mountinfo")


def _refuse_kernel_file_system(folder: Path, path: Path, option: str, error: type[Exception]) -> None:
    """An output in ``/proc`` or ``/sys`` (a typo, a path variable left half empty) is refused before any
    work: run as root, every up-front check passes, and the write at the end of the work fails there with
    "No such file or directory" for a temporary file the user never named."""
    kind = file_system_type(folder)
    if kind in KERNEL_FILE_SYSTEMS:
        raise error(f"{option} {path}: {folder} is on a {kind} file system, the kernel's view of its own state, "
                    f"where no file can be written; give another {option}")


def file_system_type(folder: Path) -> str | None:
    """The type of the file system ``folder`` lies on (``proc``, ``ext4``...): that of the deepest mount
    point above it in Linux's mount table, the last one mounted there; None where no table can be read
    (other systems)."""
    try:
        lines = MOUNT_TABLE.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return None
    real = os.path.realpath(folder)
    deepest, kind = "", None
    for line in lines:
        mount, _, source = line.partition(" - ")  # mount: id, parent, device, root, mount point, ...
        mount_fields, source_fields = mount.split(), source.split()  # source: type, device, options
        if len(mount_fields) < 5 or not source_fields:
            continue
        point = _unescaped_mount_point(mount_fields[4])
        if _lies_in(real, point) and len(point) >= len(deepest):
            deepest, kind = point, source_fields[0]
    return kind


def _unescaped_mount_point(field: str) -> str:
    """A mount point as the mount table writes it, with spaces, tabs and backslashes as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _lies_in(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _check_name_lengths(parts: tuple[str, ...], limit: int, path: Path, option: str,
                        error: type[Exception]) -> None:
    """The names still to be made below the last existing folder, against that folder's limit."""
    too_long = next((part for part in parts if len(os.fsencode(part)) > limit), None)
    if too_long is not None:
        raise error(f"{option} {path}: the name {_shortened(too_long)!r} is {len(os.fsencode(too_long))} bytes, "
                    f"longer than the {limit} this file system allows in one name; give a shorter {option}")


def _why_broken(link: Path) -> str:
    """What is wrong with a link that leads to nothing: its target is missing, or links lead in a loop."""
    try:
        os.stat(link)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "which leads back to itself (a loop of links)"
    return "which does not exist"


def _shortened(name: str) -> str:
    return name if len(name) <= 40 else f"{name[:37]}..."


def name_limit(folder: Path) -> int:
    """The longest file name, in bytes, that the file system of ``folder`` holds."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer: the common limit
        return DEFAULT_NAME_MAX


HIDDEN_NAME_KEPT = 64  # characters of a target's name kept in its temporary's name
NAME_DIGEST_CHARS = 8  # hex digits of the digest that tells apart two long names cut alike


def hidden_name(name: str, suffix: str) -> str:
    """``.NAME<suffix>`` for a temporary beside the file or folder ``name``. A NAME over
    ``HIDDEN_NAME_KEPT`` characters is cut short, so that the suffix does not push a name the file system
    holds over its limit (a 240-character --out), and ends in a digest of the whole name: two long
    --out in one folder that begin alike then keep their own logs and finished cases. A NAME that fits
    is kept whole, so its hidden names read as ``.OUT.predict.log`` and the like."""
    return f".{_kept_part(name)}{suffix}"


def all_hidden_names(name: str, suffix: str) -> list[str]:
    """``hidden_name`` and, for a NAME over ``HIDDEN_NAME_KEPT`` characters, also its plain form without the
    digest (NAME cut at ``HIDDEN_NAME_KEPT``), which fewsam's earlier releases wrote: what those left beside a
    long --out is cleared by the same cleanups rather than stay for good under a name nothing looks for."""
    return list(dict.fromkeys([hidden_name(name, suffix), f".{name[:HIDDEN_NAME_KEPT]}{suffix}"]))


def _kept_part(name: str) -> str:
    """``name`` itself when it fits in ``HIDDEN_NAME_KEPT`` characters, else its beginning (readable in a
    listing) and ``-`` and the digest of all of it, ``HIDDEN_NAME_KEPT`` characters in all. The digest
    depends on ``name`` alone, so a prefix made with any suffix finds the names made with another."""
    if len(name) <= HIDDEN_NAME_KEPT:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:NAME_DIGEST_CHARS]
    return f"{name[:HIDDEN_NAME_KEPT - NAME_DIGEST_CHARS - 1]}-{digest}"


@contextmanager
def staged_folder(out: Path, overwrite: bool, replaces: Iterable[str] = (),
                  joining: Mapping[str, Path] = MappingProxyType({})) -> Iterator[Path]:
    """A hidden folder beside ``out`` to write into (predictions, a report); its files move into
    ``out`` when the block ends well, and it (with any parent folders made for it) is removed when it
    does not, so a failure or Ctrl-C half-way leaves ``out`` as it was. ``replaces``: the names of the
    files in ``out`` the new set replaces as a whole (an earlier report's plots): those it does not
    write again go with the move, so an older set's leftovers are not taken for the new one's. Names,
    not a pattern: a user's own file that merely looks like one of the set is never removed.
    ``joining``: files written elsewhere while the block runs (predict's log, followed with ``tail -f``
    where the user was told it is), by their name in the set: they move in with it, and stay where
    they were when it does not move in."""
    made = make_parents(out.parent)
    remove_abandoned_stagings(out)
    staging = out.parent / hidden_name(out.name, f".partial-{secrets.token_hex(4)}")
    staging.mkdir()
    owned = hold(staging)
    try:
        yield staging
        move_in_whole(staging, out, overwrite, replaces, joining)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_if_empty(made)
        raise
    finally:
        let_go(owned)


def move_in_whole(staging: Path, out: Path, overwrite: bool, replaces: Iterable[str] = (),
                  joining: Mapping[str, Path] = MappingProxyType({})) -> None:
    """The staged set (with the files of ``joining``) moved into ``out`` (``staged_folder``). Ctrl-C
    meanwhile acts once every file is in place: its ``Stopped`` then says ``out`` was written whole."""
    moved = False
    try:
        with stop_signals_held():
            with _joined(staging, joining):
                _move_into(staging, out, overwrite, replaces)
            moved = True
    except Stopped as stop:
        if moved:
            stop.written = str(out)
        raise


@contextmanager
def _joined(staging: Path, joining: Mapping[str, Path]) -> Iterator[None]:
    """The files of ``joining`` (name in the set -> where they were written) moved into ``staging`` for
    the block; those still there when it fails go back where they were, so that a log stays where its
    user was told it is. A file already gone (taken by another writer into the same ``out``) is left out."""
    moved = [(source, staging / name) for name, source in joining.items() if source.is_file()]
    for source, target in moved:
        os.replace(source, target)
    try:
        yield
    except BaseException:
        for source, target in moved:
            if target.is_file():
                os.replace(target, source)
        raise


ABANDONED_GRACE_S = 60.0  # a temporary this old and unheld was left by a writer that died (kill -9)


def hold(path: Path) -> int | None:
    """A shared flock on the temporary file or folder ``path``, held by its writer until it is renamed into
    place or removed: the kernel lets it go when the writer dies however it dies, which tells
    ``remove_abandoned`` a temporary a kill -9 left from one still being written. None where the file
    system has no locks."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def let_go(fd: int | None) -> None:
    """Release what ``hold`` took (nothing where it took nothing)."""
    if fd is not None:
        os.close(fd)


def remove_abandoned(folder: Path, prefix: str, suffix: str = "") -> None:
    """Remove the temporaries ``PREFIX + 8 hex digits + SUFFIX`` in ``folder`` that writers killed outright
    (kill -9, the OOM killer, a power cut) left: Ctrl-C removes its own, but these (a staging folder of
    every prediction written before the kill, a half-written cache entry or compiled encoder) stayed for
    good, one more at each killed attempt. One that a live writer holds (``hold``), or made moments ago
    (not held yet), is left alone, as is one on a file system without locks, where a dead writer's cannot
    be told from a live one's."""
    try:
        candidates = [p for p in folder.iterdir() if _is_temporary_name(p.name, prefix, suffix)]
    except OSError:
        return
    for path in candidates:
        if path.is_symlink():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while a writer holds its shared lock
            if time.time() - path.stat().st_mtime >= ABANDONED_GRACE_S:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)


def remove_abandoned_stagings(out: Path) -> None:
    """The staging folders (``staged_folder``) that killed writers left beside ``out``."""
    for prefix in all_hidden_names(out.name, ".partial-"):
        remove_abandoned(out.parent, prefix)


def remove_abandoned_temporaries(path: Path) -> None:
    """The temporary files (``atomic_write``) that writers killed while writing ``path`` left beside it."""
    for prefix in all_hidden_names(path.name, "."):
        remove_abandoned(path.parent, prefix, TEMPORARY_SUFFIX)


def _is_temporary_name(name: str, prefix: str, suffix: str = "") -> bool:
    """Whether ``name`` is ``prefix`` + the 8 hex digits fewsam draws + ``suffix``, and nothing else: a
    user's own hidden file or folder that merely begins alike is not fewsam's to remove."""
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return False
    tail = name[len(prefix):len(name) - len(suffix)]
    return len(tail) == 8 and all(c in "0123456789abcdef" for c in tail)


def make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    for p in missing:
        p.mkdir()
    return missing


def remove_if_empty(made: list[Path]) -> None:
    """Remove the folders ``make_parents`` made, innermost first, those still empty: a failed writer
    leaves no empty folder the user never asked for."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            pass


def _move_into(staging: Path, out: Path, overwrite: bool, replaces: Iterable[str] = ()) -> None:
    """``out`` absent: rename the staging folder (atomic). Present: move file by file, replacing
    same-named files (``overwrite``), never removing anything else of the user's.

    Every target is checked before the first file moves, and Ctrl-C or SIGTERM are held until the
    last one has: an existing ``out`` then holds either all of the new files or none of them."""
    with _folder_locked(out.parent):
        _move_files_into(staging, out, overwrite, replaces)


@contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on ``folder`` itself (no lock file left in the user's folder): two writers
    finishing into one ``out`` at once (two ``predict --overwrite``) then move one after the other,
    so ``out`` holds one writer's complete set of files, not a mix of both. A file system without
    locks answers with an error of its own; the move then goes on unlocked, as it would without this."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
        yield
    finally:
        os.close(fd)


def _move_files_into(staging: Path, out: Path, overwrite: bool, replaces: Iterable[str]) -> None:
    from fewsam.errors import RunError

    if not out.exists():
        staging.rename(out)
        sync_folder(out.parent)
        return
    if any(out.iterdir()) and not overwrite:
        raise RunError(f"{out} was filled by something else while writing into it; choose another --out or pass "
                       "--overwrite")
    moves = [(path, out / path.relative_to(staging)) for path in sorted(staging.rglob("*")) if path.is_file()]
    for _, target in moves:
        blocked = _in_the_way(target, out)
        if blocked is not None:
            kind = "folder" if blocked.is_dir() else "file"
            raise RunError(f"cannot write {target}: a {kind} {blocked} is in the way; move it or choose another "
                           "--out (nothing was written)")
    written = {target for _, target in moves}
    older = [p for p in (out / name for name in replaces) if p.is_file() and p not in written]
    with stop_signals_held():
        for path, target in _copied_across(moves):
            target.parent.mkdir(parents=True, exist_ok=True)
            _moved(path, target)
        for path in older:
            path.unlink(missing_ok=True)
        for folder in {target.parent for _, target in moves}:
            sync_folder(folder)
    shutil.rmtree(staging)


def _copied_across(moves: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """``moves`` (staged file, target), where a target lies on another file system than the staging beside
    ``out`` (``out`` a mount point, such as a container's volume, or a link to a folder on other storage),
    which no rename reaches, with that file first copied whole into a temporary in the nearest folder of its
    target: a copy that fails (the disk there full) leaves ``out`` as it was, and the renames that follow
    stay within one file system. The staged files go with the staging folder."""
    placed: list[tuple[Path, Path]] = []
    copies: list[Path] = []
    try:
        for path, target in moves:
            folder = next(f for f in (target.parent, *target.parents) if f.is_dir())
            if path.stat().st_dev == folder.stat().st_dev:
                placed.append((path, target))
                continue
            fd, copy = _create_temporary(folder / target.name)
            copies.append(copy)
            _copy_synced(path, fd, target)
            placed.append((copy, target))
    except BaseException:
        for copy in copies:
            copy.unlink(missing_ok=True)
        raise
    return placed


def _copy_synced(path: Path, fd: int, target: Path) -> None:
    """``path``'s bytes into the open file ``fd``, on the disk before it is renamed to ``target``; a full disk
    names ``target``, for the one line that says where space ran out."""
    try:
        with os.fdopen(fd, "wb") as copy, open(path, "rb") as source:
            shutil.copyfileobj(source, copy)
            copy.flush()
            os.fsync(copy.fileno())
    except OSError as exc:
        raise (write_error_behind(exc, target) or exc) from exc


def _moved(path: Path, target: Path) -> None:
    """``path`` renamed to ``target``, or, where a rename cannot reach it though ``_copied_across`` saw one
    file system (two mounts of one), copied there whole through a temporary beside it (``atomic_write``)
    and then removed."""
    try:
        os.replace(path, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        with open(path, "rb") as source:
            atomic_write(target, lambda fh: shutil.copyfileobj(source, fh))
        path.unlink()


def _in_the_way(target: Path, out: Path) -> Path | None:
    """What keeps a file from being written at ``target`` under ``out``: a folder of its name, or a
    file where one of its folders below ``out`` must go; None when nothing does."""
    if target.is_dir():
        return target
    folders = target.relative_to(out).parents
    return next((out / f for f in folders if f != Path(".") and (out / f).exists() and not (out / f).is_dir()),
                None)
