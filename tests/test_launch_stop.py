"""Ctrl-C (or SIGTERM) on ``python -m fewsam.distributed.launch ... fit``: torchrun stops its processes, rank 0
says once how the fit stopped and that the same command resumes it, and the launcher leaves as the fit under one
process does (exit 128 + the signal), without torchrun's SignalException traceback after that line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fewsam.data.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow  # two processes start torch, then train for a few seconds


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_torchrun_fit_says_so_in_one_line_and_exits_as_one_process_does(tmp_path, signum):
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "fewsam.distributed.launch", "--nproc-per-node", "1", "fit", "supervised",
               "--data", str(data), "--labeled-cases", "1", "--image-size", "32", "--batch-size", "2",
               "--steps", "100000", "--val-every", "100000", "--precision", "fp32", "--quiet", "--out", str(run)]
    env = dict(os.environ, FEWSAM_NO_REEXEC="1", OMP_NUM_THREADS="1")
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not (run / "fit_log.jsonl").is_file():  # training: a step was logged
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "the fit never started"
            time.sleep(0.2)
        launcher.send_signal(signum)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert "Traceback" not in stderr and "SignalException" not in stderr, stderr
    assert launcher.returncode == 128 + signum, stderr
    assert "run the same command again" in stderr, stderr
