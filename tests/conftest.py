"""Shared fixtures: real data paths (../shared/data) and tiny stand-ins with known answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fewsam.models.sam import PreprocessInfo

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


class FakeSam:
    """Duck-typed stand-in for SamModel's cache-facing surface: a deterministic 'encoder'."""

    def __init__(self, name: str = "fake", weights: str = "0" * 64) -> None:
        self.name = name
        self.weights_sha256 = weights
        self.image_size = 32
        self.encode_calls = 0

    def preprocess_signature(self) -> str:
        return "fake-minmax-32"

    def preprocess(self, image: np.ndarray):
        h, w = image.shape[:2]
        t = torch.zeros(3, 32, 32)
        t[:, :h, :w] = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
        return t, PreprocessInfo((h, w), (h, w), 32)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encode_calls += images.shape[0]
        return images.mean(dim=1, keepdim=True).repeat(1, 4, 1, 1)[:, :, :8, :8] + 1.0


@pytest.fixture
def fake_sam() -> FakeSam:
    return FakeSam()


def run_fewsam(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line in a new process, as a user runs it."""
    env = dict(os.environ, FEWSAM_NO_REEXEC="1")
    return subprocess.run([sys.executable, "-m", "fewsam", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    """The contract for a user's mistake: exit code 2, one `error:` line naming it, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def fit_twice_identically(fit_args: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """``fewsam fit ...`` twice (run_a, run_b under ``tmp_path``, in-process CLI): both succeed and
    keep bit-identical best weights, the determinism contract for one seed. Returns the two runs."""
    import torch
    from typer.testing import CliRunner

    from fewsam.cli import app

    runs = (tmp_path / "run_a", tmp_path / "run_b")
    for run in runs:
        result = CliRunner().invoke(app, [*fit_args, "--out", str(run)])
        assert result.exit_code == 0, result.output
    a, b = (torch.load(run / "checkpoint_best.pt", weights_only=True)["module"] for run in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return runs
