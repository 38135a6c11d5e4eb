"""What a stopped fit, ``fewsam compare`` and a studio Cancel say must match what happened: a fit stopped
before its first checkpoint has no run left to resume, the signed-rank test ranks fewer pairs than it
was given when some pairs tie, and a hand-edited job.json must not turn a Cancel into a 500."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from fewsam.cli import stopped_message
from fewsam.compare import describe
from fewsam.errors import Stopped
from fewsam.metrics import wilcoxon_compare
from fewsam.runs import LAST, RunFolder
from test_studio_edges import _left_running_worker

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


def test_compare_says_how_many_tied_pairs_the_test_left_out():
    a = {f"c{i}": 0.9 for i in range(8)}
    b = {**{f"c{i}": 0.9 for i in range(3)}, **{f"c{i}": 0.8 - 0.01 * i for i in range(3, 8)}}
    test = wilcoxon_compare(a, b)
    assert test["n"] == 8 and test["n_no_difference"] == 3
    ranked_alone = wilcoxon_compare({k: a[k] for k in list(a)[3:]}, {k: b[k] for k in list(a)[3:]})
    assert test["p"] == pytest.approx(ranked_alone["p"])  # the ties really are dropped, not ranked
    result = {"metric": "dice", "n_cases": 8, "mean_a": 0.9, "mean_b": 0.8, "n_comparisons": 1,
              "only_in_a": 0, "only_in_b": 0, **test}
    first = describe(result).splitlines()[0]
    assert first.startswith("8 paired cases, 3 with no difference left out by the test"), first


def test_compare_of_pairs_without_ties_says_nothing_of_them():
    test = wilcoxon_compare({"a": 0.9, "b": 0.8, "c": 0.7}, {"a": 0.5, "b": 0.6, "c": 0.65})
    result = {"metric": "dice", "n_cases": 3, "mean_a": 0.8, "mean_b": 0.58, "n_comparisons": 1,
              "only_in_a": 0, "only_in_b": 0, **test}
    assert "no difference" not in describe(result)


@pytest.mark.parametrize("spec", [{}, {"project": 3}, {"project": None}], ids=["no project", "a number", "null"])
def test_cancel_of_a_job_whose_spec_names_no_usable_project_answers_with_the_message(tmp_path, spec):
    from fewsam.studio.jobs import JobRunner

    job, process = _left_running_worker(tmp_path / "jobs")
    try:
        (job / "job.json").write_text(json.dumps({"kind": "fit", "fit_dir": str(tmp_path / "fit"), **spec}),
                                      encoding="utf-8")
        runner = JobRunner(tmp_path / "jobs")
        assert runner.running()
        answer = runner.cancel()
        assert answer["state"] == "cancelled", answer
        assert answer["message"] == "the fit was cancelled; your labels are unchanged"
    finally:
        process.kill()
        process.wait()
