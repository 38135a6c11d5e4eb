"""Progress for long work (embedding, fitting, predicting, evaluating, benchmarking): a rich bar on a terminal,
plain lines elsewhere.

A rich bar redrawn in place means nothing in a log file, under CI or nohup: there it appears
only when the work ends. So when stderr is not a terminal, progress is written as plain lines
("fit 120/400 (30%) loss 0.410, 2:10 elapsed, ~5:03 left") every 5% of the work or every
30 seconds, whichever comes first, and when a task completes.

``log_to(path)`` also writes those lines, fewsam's notices and ``record``-ed events (validation
scores), each with its date and time, to a text file. ``command_log`` opens every command's log, writes its
header and how the command ended: a fit keeps ``RUN/fit.log``, ``embed`` appends to ``embed.log`` in the cache
folder it fills and ``predict`` writes ``.OUT.predict.log`` beside its --out while it runs, moved into OUT as
``predict.log`` with the predictions (the two said as the command starts), so long work can be followed
(``tail -f``) and read afterwards whatever the terminal showed.

Each log receives the lines of the work that opened it: two fits on two threads of one process (a user's
thread pool) each keep their own, as the files open in a thread's context (``contextvars``) decide where its
lines go. A thread the work starts keeps its lines in the work's log when started in a copy of that context
(``contextvars.copy_context().run``); a thread that opened no log of its own (started plainly) writes to every
open log, so that with one piece of work running, as usual, no line of its threads is lost.
"""

from __future__ import annotations

import functools
import itertools
import logging
import shlex
import sys
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fewsam.errors import Stopped

T = TypeVar("T")
LINE_EVERY_PERCENT = 5
LINE_EVERY_SECONDS = 30.0
PART_LINE_GAP_SECONDS = 5.0
"""Within one item of ``tracked_with_parts`` (a case), plain lines at most this often: a volume of ten
slices predicted in a second would otherwise add twenty lines of its own between two of the cases'."""
NOTICES = logging.getLogger("fewsam")  # what a command tells its user (precision chosen, skipped files)
EVENTS = logging.getLogger("fewsam.log_file")  # progress lines and events for the log file alone
EVENTS.propagate = False
_open_logs: list[logging.Handler] = []  # the files of every active ``log_to`` block in the process
_own_logs: ContextVar[tuple[logging.Handler, ...]] = ContextVar("fewsam_own_logs", default=())
"""The files of the ``log_to`` blocks active in this thread's context, innermost last."""
_logs_lock = threading.Lock()  # log_to blocks of several threads open and close the shared loggers
_callers_levels: list[tuple[logging.Logger, int]] = []  # the levels the first open log found, given back by the last


class _NoticesForPythonCallers(logging.StreamHandler):
    """fewsam's notices on stderr for a Python caller who set up no logging (a notebook, a script): logging
    would drop them (they are INFO), and a notebook user would never read which encoder was chosen or that an
    option goes unused. Silent once the application has handlers of its own on the root logger (they get the
    notices by propagation); the command line puts its own in its place (``cli._show_notes``). The stream is
    looked up at each notice: a notebook or a test may swap ``sys.stderr`` after fewsam is imported."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        self.stream = sys.stderr
        super().emit(record)


PYTHON_CALLER_NOTICES = _NoticesForPythonCallers()
PYTHON_CALLER_NOTICES.setFormatter(logging.Formatter("%(message)s"))
NOTICES.addHandler(PYTHON_CALLER_NOTICES)
NOTICES.setLevel(logging.INFO)


class _LogFile(logging.FileHandler):
    """A log file that, once a write fails (the disk filled up, the folder went away), says so once and
    writes no more: the work goes on, where logging's default would print a traceback for every line."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self.failed:
            self.failed = True
            NOTICES.warning(f"could not write to the log file {self.baseFilename} ({sys.exc_info()[1]}); the work "
                            "goes on without it")

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)


class _LogFilesOnlyBelow(logging.Filter):
    """Notices below ``level``, the caller's own level of the ``fewsam`` logger (``setLevel(WARNING)`` to
    silence them), go to the open log files alone: the files lower the logger to INFO to keep every
    notice, which let a fit's notices through to the caller's terminal and handlers all the same."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        for handler in list(_open_logs):
            if record.levelno >= handler.level:
                handler.handle(record)
        return False


def _logs_here() -> tuple[logging.Handler, ...]:
    """The log files a line said here belongs in: those this thread's work opened, else (a thread started
    plainly by the work, one that opened no log) every open one."""
    return _own_logs.get() or tuple(_open_logs)


def _written_here(handler: logging.Handler) -> Callable[[logging.LogRecord], bool]:
    """``handler``'s filter: it takes the lines of the work that opened it alone. The loggers are shared by
    the process, so without it two fits on two threads each wrote the other's lines into its fit.log."""
    return lambda record: handler in _logs_here()


def _attach(handler: logging.Handler) -> None:
    """``handler`` on fewsam's loggers; the first open log lowers them to INFO (the Python API sets no
    level: notices would be dropped), below a caller's own level for the log files alone."""
    with _logs_lock:
        if not _open_logs:
            _lower_levels()
        _open_logs.append(handler)
        for logger in (NOTICES, EVENTS):
            logger.addHandler(handler)


def _detach(handler: logging.Handler) -> None:
    """``handler`` off fewsam's loggers; the last open log gives the caller's levels back."""
    with _logs_lock:
        _open_logs.remove(handler)
        for logger in (NOTICES, EVENTS):
            logger.removeHandler(handler)
        if not _open_logs:
            _restore_levels()


def _lower_levels() -> None:
    """The caller's levels kept, and fewsam's loggers at INFO for the log files (under ``_logs_lock``)."""
    callers_level = NOTICES.getEffectiveLevel()
    if callers_level > logging.INFO:
        NOTICES.addFilter(_LogFilesOnlyBelow(callers_level))
    _callers_levels[:] = [(logger, logger.level) for logger in (NOTICES, EVENTS)]
    for logger, level in _callers_levels:
        if not level or level > logging.INFO:
            logger.setLevel(logging.INFO)


def _restore_levels() -> None:
    """The caller's levels given back once no log is open (under ``_logs_lock``)."""
    for quiet in [f for f in NOTICES.filters if isinstance(f, _LogFilesOnlyBelow)]:
        NOTICES.removeFilter(quiet)
    for logger, level in _callers_levels:
        logger.setLevel(level)
    _callers_levels.clear()


@contextmanager
def log_to(path: Path) -> Iterator[Path]:
    """Append progress, notices and events of the work in this thread (and in the threads it starts in a
    copy of its context) to the text file ``path``, timestamped, while the block runs (appended: a resumed
    fit continues its log)."""
    with _log_file(path):
        yield path


@contextmanager
def _log_file(path: Path) -> Iterator[logging.Handler]:
    """``log_to``'s file, handed to ``command_log``, which writes some lines to it alone (``_write``)."""
    handler = _LogFile(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    handler.addFilter(_written_here(handler))
    own = _own_logs.set((*_own_logs.get(), handler))
    _attach(handler)
    try:
        yield handler
    finally:
        _detach(handler)
        _own_logs.reset(own)
        handler.close()


def _write(log: logging.Handler, message: str) -> None:
    """An event for ``log`` alone, not for the logs of the work around it (``record`` writes to all)."""
    log.handle(EVENTS.makeRecord(EVENTS.name, logging.INFO, __file__, 0, message, None, None))


def command_line(fallback: str) -> str:
    """This process's command as a shell reads it (pasted, it runs again: ``--out "my run"`` stays quoted),
    or ``fallback`` and the script's name when fewsam was called from Python."""
    command = Path(sys.argv[0])
    if command.name == "fewsam" or command.parts[-2:] == ("fewsam", "__main__.py"):
        return f"fewsam {shlex.join(sys.argv[1:])}"
    return f"{fallback} from Python ({command.name})"


def host_line() -> str:
    """The CPU, cores, threads and the instruction sets that decide fewsam's speed, for a log's header."""
    from fewsam.models.precision import machine

    host = machine()
    return (f"host: {host['cpu'] or 'unknown CPU'}, {host['cores']} cores, {host['torch_threads']} torch threads, "
            f"flags {' '.join(host['flags']) or 'none of note'}")


@contextmanager
def command_log(path: Path, command: str, moved_to: Path | None = None, *, say_where: bool = True,
                after_a_stop: str = "") -> Iterator[Path]:
    """Every command's log (a fit's ``RUN/fit.log``, ``embed``'s, ``predict``'s) at ``path`` (appended): its
    command line, fewsam's version and the host, the notices said so far, then its progress and how it
    ended, so that hours of encoding or training can be followed and checked afterwards.

    ``say_where``: the log's path is said as the command starts, as a cache folder's or a staged output's
    log is nowhere a user would look (a fit's is in the run folder the user named). ``moved_to``: where the
    log goes when the command ends well (predict's, into --out with the predictions), said with it.
    ``after_a_stop``: what the user can do after Ctrl-C or SIGTERM (a fit: resume from its checkpoint),
    on the line that says the command was stopped.

    A command inside another (distill's own few-shot teacher, fitted inside the student's fit) writes its
    header and how it ended to its own log alone: the outer log, which receives the inner command's
    progress too, holds that command line, host and notices once, and ends on its own line."""
    from fewsam import __version__

    if say_where:
        tell(f"{command} log: {path}" + ("" if moved_to is None else f" (moved to {moved_to} at the end)"))
    with _log_file(path) as log:
        for line in (f"fewsam {__version__}: {command_line(command)}", host_line(), *notices()):
            _write(log, line)
        try:
            yield path
        except KeyboardInterrupt:
            _write(log, _stopped("interrupted", after_a_stop))
            raise
        except Stopped as stop:  # Ctrl-C or SIGTERM in the command line, which raises Stopped, not KeyboardInterrupt
            _write(log, _stopped(stop.how, after_a_stop))
            stop.log = stop.log or str(path)
            raise
        except Exception as exc:
            _write(log, f"stopped: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
            raise


def _stopped(how: str, after_a_stop: str) -> str:
    """A log's last line for a command stopped by Ctrl-C or SIGTERM, with what the user can do next."""
    return f"{how}; {after_a_stop}" if after_a_stop else how


def record(message: str) -> None:
    """An event for the log file only (nothing when no ``log_to`` is active), e.g. a validation score."""
    if _open_logs:
        EVENTS.info(message)


def open_logs() -> tuple[str, ...]:
    """The files a line said here is written to (``_logs_here``), innermost last (none outside them)."""
    return tuple(handler.baseFilename for handler in _logs_here())


def tell(message: str) -> None:
    """An event the user is told as it happens, in the terminal as well as the log file: what changes
    the course of a fit (resumed half-way, stopped early by --patience) would otherwise show only as a
    progress bar that starts or ends part-way, with no word why."""
    NOTICES.info(message)


_said: dict[str, str] = {}  # key -> message, in the order said
_asked: ContextVar[tuple[dict[str, str], ...]] = ContextVar("fewsam_asked", default=())
"""Per ``notices_collected`` block active in this thread's context: key -> message, in the order asked (a
fit on another thread collects its own)."""


def say_once(message: str, key: str | None = None) -> None:
    """Tell the user ``message`` the first time this process says it (or anything under ``key``):
    embed, fit and predict resolve the precision more than once, and a dataset of 4D files would
    repeat one notice per file; the user needs to read each once. A repeat inside ``notices_collected``
    (a second fit in one process) still reaches that fit's log, once: its log is its record."""
    key = message if key is None else key
    collected = _asked.get()
    new_to_this_work = bool(collected) and key not in collected[0]
    if key not in _said:
        _said[key] = message
        NOTICES.info(message)
    elif new_to_this_work:
        record(_said[key])  # the terminal heard it before; the log of this work (a fit) has not
    for asked in collected:
        asked.setdefault(key, _said[key])


def said() -> list[str]:
    """What ``say_once`` has said in this process, in order (a log file opened later repeats it)."""
    return list(_said.values())


@contextmanager
def notices_collected() -> Iterator[None]:
    """Collect what ``say_once`` is asked to say while the block runs, said before or not (``notices``):
    one piece of work (a fit) among others in the process, each with notices of its own."""
    outer = _asked.set((*_asked.get(), {}))
    try:
        yield
    finally:
        _asked.reset(outer)


Work = TypeVar("Work", bound=Callable[..., Any])


def with_own_notices(function: Work) -> Work:
    """``function`` (a fit, a prediction, an embedding) run inside ``notices_collected``, from its first
    check on: its log lists the notices it was given, also those said before it opened the log (an option
    it does not read), and not those of earlier work in the process (a U-Net fit's before a prediction)."""
    @functools.wraps(function)
    def collected(*args: Any, **kwargs: Any) -> Any:
        with notices_collected():
            return function(*args, **kwargs)

    return collected  # type: ignore[return-value]


def notices() -> list[str]:
    """The notices of the outermost ``notices_collected`` block, in order, including those said earlier in
    the process and so not said again; outside any block, everything said (``said``). A fit's log lists
    these: ``said`` alone would also list what earlier fits in the same process were told about their data,
    and leave out what this fit was told but the terminal already heard."""
    collected = _asked.get()
    return list(collected[0].values()) if collected else said()


class _EventStream:
    """A text stream whose lines become log-file events (the target of a ``PlainProgress``)."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                record(line)
        return len(text)

    def flush(self) -> None:
        pass


class _Both:
    """Forwards ``add_task``/``update`` to the display and to plain lines in the log file."""

    def __init__(self, display: Any, log: "PlainProgress") -> None:
        self.display, self.log = display, log
        self.ids: dict[Any, int] = {}

    def add_task(self, description: str, **kwargs: Any) -> Any:
        task_id = self.display.add_task(description, **kwargs)
        self.ids[task_id] = self.log.add_task(description, **kwargs)
        return task_id

    def update(self, task_id: Any, **kwargs: Any) -> None:
        self.display.update(task_id, **kwargs)
        self.log.update(self.ids[task_id], **kwargs)

    def remove_task(self, task_id: Any) -> None:
        self.display.remove_task(task_id)
        self.log.remove_task(self.ids.pop(task_id))


@contextmanager
def progress_bar(enabled: bool = True, stream: TextIO | None = None, redrawn_while_working: bool = True
                 ) -> Iterator[Any]:
    """A progress display on stderr (or ``stream``) with rich's ``add_task``/``update``; disabled
    ones accept them too, so callers need no branches. Not a terminal: plain lines (``PlainProgress``).
    ``redrawn_while_working=False``: a terminal's bar is redrawn only when updated (``refresh=True``), not
    ten times a second from a thread of its own, which would take a share of the time a bench measures."""
    with _display(enabled, stream, redrawn_while_working) as display:
        yield _Both(display, PlainProgress(_EventStream())) if _open_logs else display


@contextmanager
def _display(enabled: bool, stream: TextIO | None, redrawn_while_working: bool = True) -> Iterator[Any]:
    console = Console(stderr=True, file=stream)
    if enabled and not console.is_terminal and not console.is_jupyter:
        yield PlainProgress(console.file)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
        auto_refresh=redrawn_while_working,
    )
    with progress:
        yield progress


def tracked(items: Sequence[T], description: str, enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` one by one under a progress bar that advances after each is handled."""
    with progress_bar(enabled) as bar:
        job = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.update(job, advance=1)


class Parts:
    """Progress inside the item ``tracked_with_parts`` is handling (the slices of one long volume): a
    task of its own under the items' task, started once the item says how many parts it has."""

    def __init__(self, bar: Any, name: str) -> None:
        self.bar, self.name = bar, name
        self.task: Any = None

    def counter(self, total: int) -> Callable[[int], None]:
        """Start counting ``total`` parts; the returned function advances the count by its argument."""
        self.close()
        self.task = self.bar.add_task(self.name, total=total, line_gap=PART_LINE_GAP_SECONDS)
        task = self.task
        return lambda n: self.bar.update(task, advance=n)

    def close(self) -> None:
        """The item is done: its task leaves the display (the items' own line tells it was finished)."""
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None


def tracked_with_parts(items: Sequence[T], description: str, part: str, enabled: bool = True
                       ) -> Iterator[tuple[T, Parts]]:
    """``tracked`` whose items report progress of their own: with each item, a ``Parts`` counting its
    ``part``s (a line reads "predict ct_003 slice 40/200 (20%), ..."), so that one long item (a CT
    volume of hundreds of slices) does not leave the display and the log silent for minutes."""
    with progress_bar(enabled) as bar:
        job = bar.add_task(description, total=len(items))
        for item in items:
            parts = Parts(bar, f"{description} {item} {part}")
            yield item, parts
            parts.close()
            bar.update(job, advance=1)


@contextmanager
def stages(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """Progress through ``total`` stages of unlike work (the bench's measurements, minutes in all): the
    function yielded says a stage as it begins and counts the one before as done. On a terminal the bar
    names the stage; elsewhere each stage is one line ("bench 3/12: cache hits (8 slices), 0:41 elapsed"),
    as one stage may take minutes and the next a second, which lines every 5% would not tell apart. The
    display is written only as a stage begins, never while one runs: the stages are what a bench times."""
    with progress_bar(enabled, redrawn_while_working=False) as bar:
        job = bar.add_task(description, total=total, one_line_per_stage=True)
        begun = itertools.count()

        def begin(stage: str) -> None:
            bar.update(job, completed=next(begun), description=f"{description} {stage}", refresh=True)

        yield begin
        bar.update(job, completed=total, description=description, refresh=True)


@dataclass
class _Task:
    name: str  # the description given to add_task: the line's first word(s)
    detail: str
    total: float | None
    completed: float
    started_at: float
    started_with: float  # work done before this process (a resumed fit): not counted in the rate
    printed_at: float
    printed_step: int  # how many LINE_EVERY_PERCENT steps the last line had reached
    finished: bool = False  # the completing line is out (or the task removed): later updates print nothing
    line_gap: float = 0.0  # the fewest seconds between two lines, the completing one included
    one_line_per_stage: bool = False  # a line as each stage begins (said by a description) and as all end


class PlainProgress:
    """rich.Progress's ``add_task``/``update`` as plain, line-buffered lines for logs."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.tasks: list[_Task] = []

    def add_task(self, description: str, total: float | None = None, completed: float = 0, line_gap: float = 0.0,
                 one_line_per_stage: bool = False, **_: Any) -> int:
        now = self.clock()
        self.tasks.append(_Task(description, "", total, completed, now, completed, now, self._step(total, completed),
                                line_gap=line_gap, one_line_per_stage=one_line_per_stage))
        return len(self.tasks) - 1

    def remove_task(self, task_id: int) -> None:
        """rich's ``remove_task``: the task prints no more lines."""
        self.tasks[task_id].finished = True

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               description: str | None = None, total: float | None = None, **_: Any) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance:
            task.completed += advance
        if description is not None:
            task.detail = description.removeprefix(task.name).strip() if description.startswith(task.name) \
                else description
        if task.one_line_per_stage and not self._done(task):
            if description is not None and not task.finished:  # a stage begins
                self._write(self._stage_line(task, self.clock()))
            return
        self._maybe_print(task)

    def _maybe_print(self, task: _Task) -> None:
        """A line at each 5% step, after 30 s without one, and once when the task completes; none
        sooner than the task's ``line_gap`` after the last (or after the start)."""
        now, step = self.clock(), self._step(task.total, task.completed)
        done = self._done(task)
        if task.finished or not (step > task.printed_step or now - task.printed_at >= LINE_EVERY_SECONDS or done):
            return
        if now - task.printed_at < task.line_gap:
            return
        task.printed_at, task.printed_step, task.finished = now, step, done
        self._write(self._line(task, now))

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    @staticmethod
    def _done(task: _Task) -> bool:
        return task.total is not None and task.completed >= task.total

    @staticmethod
    def _step(total: float | None, completed: float) -> int:
        return int(completed * 100 // (total * LINE_EVERY_PERCENT)) if total else 0

    @staticmethod
    def _stage_line(task: _Task, now: float) -> str:
        """"bench 3/12: cache hits (8 slices), 0:41 elapsed": the stage beginning, counted from 1."""
        count = f" {task.completed + 1:g}/{task.total:g}" if task.total else ""
        return f"{task.name}{count}: {task.detail}, {_clock(now - task.started_at)} elapsed"

    @staticmethod
    def _line(task: _Task, now: float) -> str:
        elapsed = now - task.started_at
        count = f"{task.completed:g}" if task.total is None else \
            f"{task.completed:g}/{task.total:g} ({100 * task.completed / task.total:.0f}%)" if task.total else "0/0"
        line = f"{task.name} {count}" + (f" {task.detail}" if task.detail else "") + f", {_clock(elapsed)} elapsed"
        rate = (task.completed - task.started_with) / elapsed if elapsed > 0 else 0.0
        if task.total and rate > 0 and task.completed < task.total:
            line += f", ~{_clock((task.total - task.completed) / rate)} left"
        return line


def _clock(seconds: float) -> str:
    """2:10 under an hour, 1:02:10 above."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
