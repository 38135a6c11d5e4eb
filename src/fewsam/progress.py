"""Progress bars for long work (embedding, fitting, predicting), silent when asked or not a TTY-friendly run."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


T = TypeVar("T")


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A rich Progress on stderr; disabled ones still accept add_task/update so callers need no branches."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
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
