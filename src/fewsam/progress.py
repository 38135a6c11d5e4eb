"""Progress for long work (embedding, fitting, predicting): a rich bar on a terminal, plain lines elsewhere.

A rich bar redrawn in place means nothing in a log file, under CI or nohup: there it appears
only when the work ends. So when stderr is not a terminal, progress is written as plain lines
("fit 120/400 (30%) loss 0.410, 2:10 elapsed, ~5:03 left") every 5% of the work or every
30 seconds, whichever comes first, and when a task completes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TextIO, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
LINE_EVERY_PERCENT = 5
LINE_EVERY_SECONDS = 30.0


@contextmanager
def progress_bar(enabled: bool = True, stream: TextIO | None = None) -> Iterator[Any]:
    """A progress display on stderr (or ``stream``) with rich's ``add_task``/``update``; disabled
    ones accept them too, so callers need no branches. Not a terminal: plain lines (``PlainProgress``)."""
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
    finished: bool = False  # the completing line is out: later updates print nothing


class PlainProgress:
    """rich.Progress's ``add_task``/``update`` as plain, line-buffered lines for logs."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.tasks: list[_Task] = []

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_: Any) -> int:
        now = self.clock()
        self.tasks.append(_Task(description, "", total, completed, now, completed, now, self._step(total, completed)))
        return len(self.tasks) - 1

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
        self._maybe_print(task)

    def _maybe_print(self, task: _Task) -> None:
        """A line at each 5% step, after 30 s without one, and once when the task completes."""
        now, step = self.clock(), self._step(task.total, task.completed)
        done = task.total is not None and task.completed >= task.total
        if task.finished or not (step > task.printed_step or now - task.printed_at >= LINE_EVERY_SECONDS or done):
            return
        task.printed_at, task.printed_step, task.finished = now, step, done
        self.stream.write(self._line(task, now) + "\n")
        self.stream.flush()

    @staticmethod
    def _step(total: float | None, completed: float) -> int:
        return int(completed * 100 // (total * LINE_EVERY_PERCENT)) if total else 0

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
