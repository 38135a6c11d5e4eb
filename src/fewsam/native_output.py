"""What native libraries write to the process's stderr themselves, kept off the terminal.

GDCM's decoders (libjpeg: "Corrupt JPEG data: premature end of data segment"; OpenJPEG: "Stream too
short"), MetaIO ("MetaImage: M_ReadElementsData: data not read completely") and ITK's own
"WARNING: In ..." blocks write to file descriptor 2 from C and C++, past Python's ``sys.stderr``: a
user's mistake then ended in their lines above fewsam's one ``error:`` line, and a read that
succeeded left stray lines on the terminal. ``native_output_kept`` puts that text in the command's log
instead, the decoder's reason in a few words where fewsam knows the words (``decoder_reason``), and
a read that succeeded despite a decoder's complaint said once, naming the file.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from fewsam.errors import DataError
from fewsam.progress import open_logs, record, say_once

# The decoder's words fewsam has seen on damaged files, and what they tell a user in a few words. Only
# these reach a user's line; any other text goes to the log alone, as its meaning was never checked.
DECODER_REASONS = (
    ("Corrupt JPEG data", "damaged JPEG data"),
    ("Unsupported marker type", "damaged JPEG data"),
    ("Stream too short", "JPEG 2000 data cut short"),
    ("Tile part length size inconsistent with stream length", "JPEG 2000 data cut short"),
    ("Failed to decode the codestream", "damaged JPEG 2000 data"),
    ("data not read completely", "voxel data cut short"),
    ("Uncompress failed", "voxel data that do not decompress"),
)
# Complaints after which ITK still returns an image that is none of the file's: MetaIO's failed
# decompression (a header saying ``CompressedData = True`` over raw voxels) leaves the voxel buffer
# as it was allocated, different values at each read. Such a read is refused, not said.
NOT_THE_FILES_VOXELS = ("Uncompress failed",)
AGAIN = "copy or export it again from its source"

_capturing = threading.RLock()
_logged: set[tuple[tuple[str, ...], str, str]] = set()


@contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """The lines native code writes to file descriptor 2 while the block runs, appended to the yielded
    list when the block ends (also when it raises).

    C and C++ libraries write to the descriptor, not to ``sys.stderr``, so it is pointed at a temporary
    file (``os.dup2``) and pointed back in a ``finally``. The descriptor belongs to the whole process: the
    lock keeps two threads' blocks from swapping it under each other (a thread restoring the other's
    file would leave stderr in a deleted file), and whatever another thread writes to stderr meanwhile
    (a progress bar's redraw) lands in the capture, so in the log. fewsam reads its data in the main
    thread, and each block is one file's read, so little else is written meanwhile. Python's own
    pending stderr text is flushed first, so it still reaches the terminal. Where the process has no
    descriptor 2 (a daemon), nothing is captured."""
    lines: list[str] = []
    with _capturing, _sink_or_none() as sink:
        _flush_python_stderr()
        try:
            saved = os.dup(2) if sink is not None else None
        except OSError:
            saved = None
        if saved is None:  # no descriptor 2, or no room for the sink: the read goes on uncaptured
            yield lines
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            _flush_python_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


@contextmanager
def _sink_or_none() -> Iterator[Any]:
    """A temporary file for the captured text, or None where none can be made (a full or read-only
    temporary folder): a read must not fail for want of a place to put a library's chatter."""
    try:
        sink = tempfile.TemporaryFile()
    except OSError:
        yield None
        return
    with sink:
        yield sink


def _flush_python_stderr() -> None:
    """Python's buffered stderr text written out now, so it lands where fd 2 points at this moment
    (``sys.stderr`` is None under ``pythonw`` and some daemons)."""
    if sys.stderr is not None:
        sys.stderr.flush()


def decoder_reason(lines: list[str]) -> str | None:
    """A few words for the user and the decoder's own line that says so (``damaged JPEG data ('Corrupt
    JPEG data: premature end of data segment')``), for the first of ``lines`` that ``DECODER_REASONS``
    knows; None where none is known."""
    for line in lines:
        for words, reason in DECODER_REASONS:
            if words in line:
                return f"{reason} ({line!r})"
    return None


@contextmanager
def native_output_kept(source: object, pixels: bool = False) -> Iterator[list[str]]:
    """``native_stderr_captured`` over the read of ``source`` (a file or folder), its text recorded in
    the command's log (``_log_once``). Where a read of its
    ``pixels`` went on despite a decoder's known complaint, the user is told once that the file was read
    as decoded (a header read that decodes a frame on the way says nothing: the pixel read that follows
    raises or says); where it raised, the caller words the error, ``decoder_reason`` of the yielded
    lines giving the reason. A read whose image is none of the file's (``NOT_THE_FILES_VOXELS``) raises
    a DataError."""
    lines: list[str] = []
    try:
        with native_stderr_captured() as lines:
            yield lines
    finally:
        _log_once(source, lines)
    if not pixels:
        return
    refused = decoder_reason([line for line in lines if any(words in line for words in NOT_THE_FILES_VOXELS)])
    if refused:
        raise DataError(f"cannot read {source}: {refused}; {AGAIN}")
    reason = decoder_reason(lines)
    if reason:
        say_once(f"{source}: its decoder reports {reason}; it is read as decoded, so part of its image may be "
                 f"wrong: check it, or {AGAIN}", key=f"decoder-{source}")


def _log_once(source: object, lines: list[str]) -> None:
    """The captured text in the open logs, once per log, source and text: a fit reads a case many
    times, and may read it first before its log opens."""
    key = (open_logs(), str(source), " / ".join(lines))
    if lines and key[0] and key not in _logged:
        _logged.add(key)
        record(f"{source}: native library output: {key[2]}")
