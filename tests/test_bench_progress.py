"""``fewsam bench`` runs for minutes: it says each measurement on stderr as it begins, between the timed
regions and never inside one, and leaves stdout's figures and --json as they were (``--quiet``: no lines)."""

from __future__ import annotations

import io
import json
import re
import sys
import time

import pytest
from typer.testing import CliRunner

import fewsam.bench as bench
import fewsam.progress as progress
from fewsam.cli import app
from test_supervised import tiny_sam

SLICES = 2
STAGES = [
    "reading the data and loading the model",
    "encoder fp32 first call",
    f"encoder fp32 ({SLICES} slices, taking turns)",
    f"cache hits ({SLICES} slices)",
    "few-shot decoder training step (default, fp32, taking turns)",
    "U-Net student training step (default, fp32, taking turns)",
    f"decoder inference ({SLICES} slices)",
    "peak memory of default (a process of its own)",
    "peak memory of fp32 (a process of its own)",
    "a 30-step few-shot fit and one volume's prediction, from a warm cache",
    "matmul peak (fp32, bf16) and the encoder's GFLOP per slice",
]
FIGURES = {"machine", "default_vs_fp32", "matmul_peak_gflops", "encoder_gflop_per_slice", "encoder", "peak_memory_gib",
           "torch", "allocator", "omp_wait_policy", "slices", "cache_hit_s_per_slice", "decoder_inference_s_per_slice",
           "predict_s_per_volume_warm_cache", "fit_s_30_steps_warm_cache", "bench_s"}


def last_line() -> str:
    """The last line on stderr so far where stderr is a ``StringIO`` (else none: the command line's tests)."""
    written = getattr(sys.stderr, "getvalue", lambda: "")()
    return (written.splitlines() or [""])[-1]


@pytest.fixture
def quick_bench(tiny_sam_phantom, monkeypatch):
    """The bench on the tiny SAM and the PyTorch encoder alone (no OpenVINO conversion), its minutes-long
    measurements (training steps, a fit, a child process on the real model) stood in for by instant ones
    that note the stderr line they ran under. Returns the data folder and those notes (measurement, line)."""
    seen: list[tuple[str, str]] = []

    def noted(what: str, result):
        def measured(*args, **kwargs):
            seen.append((what, last_line()))
            return result
        return measured

    monkeypatch.setattr(bench, "load_model", lambda *args, **kwargs: tiny_sam())
    monkeypatch.setattr(bench, "encoder_names", lambda device, flags=None: ["fp32"])
    monkeypatch.setattr(bench, "compared_paths", lambda device, flags=None: {
        name: bench.path_choice("fp32", device) for name in ("default", "fp32")})
    monkeypatch.setattr(bench, "decoder_step", lambda *args: noted("decoder step", None))
    monkeypatch.setattr(bench, "student_step", lambda *args: noted("student step", None))
    monkeypatch.setattr(bench, "path_peak_memory", noted("peak memory", 1.0))
    monkeypatch.setattr(bench, "_predict_and_fit_times", noted("fit and predict", (0.5, 2.0)))
    monkeypatch.setattr(bench, "matmul_peaks", noted("matmul", {"fp32": 1.0, "bf16": 1.0}))
    return tiny_sam_phantom, seen


def stage_lines(stderr: str) -> list[tuple[int, int, str]]:
    """(stage, stages, what) of each "bench N/T: WHAT, M:SS elapsed" line."""
    return [(int(n), int(t), what) for n, t, what in re.findall(r"^bench (\d+)/(\d+): (.*), \d+:\d\d elapsed$",
                                                                 stderr, re.M)]


def test_bench_says_each_measurement_as_it_begins_and_none_while_one_is_timed(quick_bench, tmp_path, monkeypatch):
    data, seen = quick_bench
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: plain lines
    result = bench.run_bench(data, SLICES, tmp_path / "scratch")
    stderr = sys.stderr.getvalue()
    assert stage_lines(stderr) == [(i, len(STAGES), what) for i, what in enumerate(STAGES, 1)]
    assert stderr.splitlines()[-1].startswith(f"bench {len(STAGES)}/{len(STAGES)} (100%)")
    assert set(result) == FIGURES
    calls = 2 * (1 + bench.STEP_REPEATS)  # two paths, a warm-up call and the timed ones each
    under = [(what, stage_lines(line)[0][2]) for what, line in seen]  # the line last written as each ran
    assert under == [("decoder step", STAGES[4])] * calls + [("student step", STAGES[5])] * calls + [
        ("peak memory", STAGES[7]), ("peak memory", STAGES[8]), ("fit and predict", STAGES[9]), ("matmul", STAGES[10])]


def test_bench_figures_on_stdout_and_in_json_are_the_figures_alone(quick_bench, tmp_path):
    data, _ = quick_bench
    scores = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--data", str(data), "-n", str(SLICES), "--cache",
                                      str(tmp_path / "scratch"), "--json", str(scores)])
    assert result.exit_code == 0, result.output
    printed, written = json.loads(result.stdout), json.loads(scores.read_text())
    assert set(printed) == FIGURES and printed == written
    assert [what for *_, what in stage_lines(result.stderr)] == STAGES


def test_bench_quiet_says_no_stages(quick_bench, tmp_path):
    data, _ = quick_bench
    result = CliRunner().invoke(app, ["bench", "--data", str(data), "-n", str(SLICES), "--cache",
                                      str(tmp_path / "scratch"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert not re.search(r"^bench ", result.stderr, re.M)
    assert set(json.loads(result.stdout)) == FIGURES


def test_on_a_terminal_the_stages_bar_is_drawn_as_a_stage_begins_not_while_it_runs(monkeypatch):
    """rich redraws a live bar ten times a second from a thread of its own: inside the regions a bench times."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress.stages("bench", 2) as begin:
        begin("first")
        drawn = sys.stderr.getvalue()
        time.sleep(0.35)
        assert sys.stderr.getvalue() == drawn and "bench first" in drawn
        begin("second")
        assert "bench second" in sys.stderr.getvalue()[len(drawn):]
