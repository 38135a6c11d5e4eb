"""RUN/fit.log: a fit's progress, notices and validation scores in a text file, timestamped, also
when the terminal shows nothing (--quiet); a resumed fit appends to it."""

from __future__ import annotations

import io
import json
import logging
import re
import signal

import pytest
import torch

from conftest import training_raising_at_step
from fewsam import api
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import Stopped
from fewsam.methods.supervised import SupervisedConfig
from fewsam.progress import log_to, progress_bar, record
from fewsam.runs import LOG, TEXT_LOG

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_fit(data, run, steps: int):
    options = api.FitOptions(data=data, run=run, labeled_cases=1, show_progress=False)
    return api.fit("supervised", options, SupervisedConfig(steps=steps, val_every=2, image_size=16, batch_size=2))


def validation_scores(run) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / LOG).read_text().splitlines()]
    return [(r["step"], r["validation"]["score"]) for r in records if "validation" in r]


def test_a_quiet_fit_still_logs_progress_and_every_validation(tmp_path):
    data = write_phantom_dataset(tmp_path / "ph", n_train=2, n_val=1, slices=3)
    run = tmp_path / "run"
    result = tiny_fit(data, run, steps=4)
    lines = (run / TEXT_LOG).read_text().splitlines()
    assert all(re.match(STAMP, line) for line in lines)
    assert "fit supervised" in lines[0] and "host:" in lines[1]
    assert any(re.search(r"fit 4/4 \(100%\)", line) for line in lines)
    logged = [(int(m[1]), float(m[2])) for m in
              (re.search(r"validation at step (\d+): score ([\d.]+)", line) for line in lines) if m]
    assert logged == [(step, round(score, 4)) for step, score in validation_scores(run)]
    assert lines[-1].endswith(f"best validation score {result.best_score:.4f} at step {result.best_step}, "
                              f"{result.seconds / 60:.1f} min in the training loop")


def test_a_resumed_fit_appends_to_its_log(tmp_path):
    data = write_phantom_dataset(tmp_path / "ph", n_train=2, n_val=1, slices=3)
    run = tmp_path / "run"
    tiny_fit(data, run, steps=2)
    first = (run / TEXT_LOG).read_text()
    (run / "manifest.json").unlink()  # as if stopped after its last checkpoint, before it finished
    tiny_fit(data, run, steps=2)  # resumed at its last step
    text = (run / TEXT_LOG).read_text()
    assert text.startswith(first)
    assert "resumed at step 2 of 2" in text[len(first):]


def test_a_caller_who_silenced_the_notices_hears_none_from_a_fit_its_log_keeps_them(tmp_path, caplog):
    """logging.getLogger("fewsam").setLevel(WARNING) silences fewsam's notices; the fit's log lowered the
    logger to INFO to keep them, and so told the caller's handlers (a notebook's stderr) all the same."""
    data = write_phantom_dataset(tmp_path / "ph", n_train=2, n_val=1, slices=3)
    run = tmp_path / "run"
    tiny_fit(data, run, steps=2)
    (run / "manifest.json").unlink()  # stopped after its last checkpoint: the next fit says it resumed
    notices = logging.getLogger("fewsam")
    before = notices.level
    notices.setLevel(logging.WARNING)
    caplog.clear()
    try:
        with caplog.at_level(logging.INFO):  # the root's handlers take every level they are given
            tiny_fit(data, run, steps=2)
    finally:
        notices.setLevel(before)
    assert "resumed at step 2 of 2" in (run / TEXT_LOG).read_text()
    assert not [r.getMessage() for r in caplog.records if r.name == "fewsam"]
    assert notices.level == before and not notices.filters


def test_a_refused_fit_writes_no_log_into_the_existing_run(tmp_path):
    data = write_phantom_dataset(tmp_path / "ph", n_train=2, n_val=1, slices=3)
    run = tmp_path / "run"
    tiny_fit(data, run, steps=2)
    before = (run / TEXT_LOG).read_text()
    with pytest.raises(Exception, match="different configuration"):
        tiny_fit(data, run, steps=3)
    assert (run / TEXT_LOG).read_text() == before


def test_log_to_takes_notices_and_progress_and_lets_go_after(tmp_path):
    path = tmp_path / "x.log"
    shown = io.StringIO()
    with log_to(path):
        logging.getLogger("fewsam").info("encoder in fp32")
        record("an event")
        with progress_bar(False, stream=shown) as bar:  # a disabled display: the file still gets the lines
            job = bar.add_task("embed", total=2)
            bar.update(job, advance=2)
    record("after the block")
    text = path.read_text()
    assert "encoder in fp32" in text and "an event" in text and "embed 2/2 (100%)" in text
    assert "after the block" not in text and shown.getvalue() == ""


def test_a_fit_inside_a_fit_names_itself_in_the_log(tmp_path):
    """SAM-Match trains SAM's decoder with the same loop inside the student's fit: its validation
    lines carry its name, the main fit's lines stay as they are."""
    from test_train import CFG, ToyTask

    from fewsam.train import train

    with log_to(tmp_path / "fit.log"):
        train(ToyTask(), CFG, tmp_path / "sam", show_progress=False, name="SAM decoder")
        train(ToyTask(), CFG, tmp_path / "main", show_progress=False)
    lines = (tmp_path / "fit.log").read_text().splitlines()
    inner = [line for line in lines if "SAM decoder: validation at step" in line]
    main = [line for line in lines if re.search(r"\d\d (validation at step)", line)]
    assert len(inner) == len(main) == CFG.steps // CFG.val_every
    assert any(re.search(r"SAM decoder \d+/40", line) for line in lines)


@pytest.mark.parametrize("error, told", [
    (RuntimeError("disk gone\nsecond line"), "stopped: RuntimeError: disk gone"),
    (KeyboardInterrupt(), "interrupted; the same command resumes from the last checkpoint"),
    (Stopped(signal.SIGTERM), "terminated (SIGTERM); the same command resumes from the last checkpoint"),
])
def test_a_stopped_fit_ends_its_log_on_how_it_ended(tmp_path, error, told):
    """fit.log ends as every command's log does (predict.log, embed.log), with what a fit can do next."""
    data = write_phantom_dataset(tmp_path / "ph", n_train=2, n_val=1, slices=3)
    run = tmp_path / "run"
    with pytest.raises(type(error)), training_raising_at_step(3, error):  # its checkpoint of step 2 kept
        tiny_fit(data, run, steps=4)
    lines = (run / TEXT_LOG).read_text().splitlines()
    assert lines[-1].endswith(f" {told}") and sum(line.endswith(f" {told}") for line in lines) == 1


def test_a_fit_inside_a_command_writes_its_header_and_its_end_to_its_own_log_alone(tmp_path):
    """distill without --teacher fits few-shot SAM inside its own fit: the outer log takes the inner fit's
    progress, but holds its own command, host and notices once and ends on one line saying how the outer
    work ended, not on that line twice (the inner fit's ending is its own log's)."""
    from fewsam.progress import command_log, notices_collected

    data = write_phantom_dataset(tmp_path / "ph", n_train=2, n_val=1, slices=3)
    run, outer = tmp_path / "run", tmp_path / "outer.log"
    # the outer fit's own notices, as api.fit collects them: not those of earlier work in this process
    with pytest.raises(RuntimeError), notices_collected(), command_log(outer, "fit distill"), \
            training_raising_at_step(3, RuntimeError("disk gone")):
        tiny_fit(data, run, steps=4)
    inner_lines = [line.split(" ", 2)[2] for line in (run / TEXT_LOG).read_text().splitlines()]
    outer_lines = [line.split(" ", 2)[2] for line in outer.read_text().splitlines()]
    for lines, command in ((inner_lines, "fit supervised"), (outer_lines, "fit distill")):
        assert sum(line.startswith("host: ") for line in lines) == 1 and command in lines[0]
        assert lines[-1] == "stopped: RuntimeError: disk gone" and lines.count(lines[-1]) == 1
    assert not any("fit supervised" in line for line in outer_lines)
    assert any(line.startswith("fit 2/4 (50%)") for line in outer_lines)  # the inner fit's progress
