"""What a stopped fit, ``fewsam compare`` and a studio Cancel say must match what happened: a fit stopped
before its first checkpoint has no run left to resume, the signed-rank test ranks fewer pairs than it
was given when some pairs tie, and a hand-edited job.json must not turn a Cancel into a 500."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fewsam.cli import stopped_message
from fewsam.errors import Stopped
from fewsam.runs import LAST, RunFolder

FIT = ["fewsam", "fit", "fewshot", "--data", "d", "--out", "run"]


def stop_inside_new_run(run: Path, checkpoint: bool) -> Stopped:
    with pytest.raises(Stopped) as stopped:
        with RunFolder(run) as folder:
            folder.prepare({"method": "fewshot"})
            if checkpoint:
                (run / LAST).write_bytes(b"resume state")
            raise Stopped(signal.SIGINT)
    return stopped.value


def test_a_fit_stopped_before_its_first_checkpoint_does_not_promise_a_resume(tmp_path):
    stop = stop_inside_new_run(tmp_path / "run", checkpoint=False)
    assert not (tmp_path / "run").exists()
    line = stopped_message(stop, FIT)
    assert "resume" not in line and "start the fit" in line and "cache" in line, line


def test_a_fit_stopped_after_a_checkpoint_still_says_it_resumes(tmp_path):
    stop = stop_inside_new_run(tmp_path / "run", checkpoint=True)
    assert (tmp_path / "run" / LAST).exists()
    assert stopped_message(stop, FIT).endswith("run the same command again to resume")
