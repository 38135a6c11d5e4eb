"""Shared fixtures: real data paths (../shared/data) and tiny stand-ins with known answers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

import fewsam.api  # noqa: F401
import fewsam.bench  # noqa: F401
import fewsam.predict  # noqa: F401
from fewsam.models.sam import PreprocessInfo

# The modules above bind ``load_model`` by name when first imported. Imported here, before any test, so
# that none is first imported while a test has ``registry.load_model`` patched: it would keep the stand-in
# after the test (monkeypatch restores only the attributes it set) and load it for every later test.

# Tests that import OpenVINO themselves (pytest.importorskip) load it as fewsam does, without the
# telemetry that forks from threads (fewsam.models.precision.import_openvino says why that hangs).
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

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
def notices(caplog, monkeypatch):
    """What ``say_once`` tells the user during a test (as if the process had said nothing yet)."""
    from fewsam import progress

    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level(logging.INFO, logger="fewsam")
    return caplog


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


TINY_LABEL = np.zeros((40, 48), np.uint8)  # RV, Myo and LV blocks of a 40x48 slice
TINY_LABEL[10:20, 10:20], TINY_LABEL[22:30, 10:20], TINY_LABEL[10:30, 25:35] = 1, 2, 3


@contextmanager
def training_raising_at_step(step: int, error: BaseException) -> Iterator[None]:
    """Inside the block, the training loop raises ``error`` as it logs ``step`` (a stop or a failure part-way
    through a fit, its earlier checkpoints written); the loop is itself again after the block."""
    import fewsam.train

    log_step = fewsam.train._log

    def raising(run_dir: Path, entry: dict) -> None:
        if entry.get("step") == step:
            raise error
        log_step(run_dir, entry)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fewsam.train, "_log", raising)
        yield


def write_h5(path: Path, image: np.ndarray, label: np.ndarray, key: str = "label") -> None:
    """One ACDC (SSL4MIS) h5 file: float32 image, uint8 label under ``key``."""
    import h5py

    with h5py.File(path, "w") as f:
        f["image"] = image.astype(np.float32)
        f[key] = label.astype(np.uint8)


def write_tiny_acdc(root: Path, val: list[str]) -> Path:
    """ACDC (SSL4MIS) layout at ``root``: 2 labelled training slices and the ``val`` volumes of 2
    slices, random images over TINY_LABEL: enough for the readers and a 2-step fit."""
    (root / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = ["patient001_frame01_slice_0", "patient001_frame01_slice_1"]
    for name in train:
        write_h5(root / "data" / f"{name}.h5", rng.random((40, 48)), TINY_LABEL)
    for name in val:
        write_h5(root / "data" / f"{name}.h5", rng.random((2, 40, 48)), np.stack([TINY_LABEL, TINY_LABEL]))
    (root / "train_slices.list").write_text("\n".join(train) + "\n")
    (root / "val.list").write_text("\n".join(val) + "\n")
    return root


def fit_tiny_supervised(base: Path, val: list[str]) -> tuple[Path, Path]:
    """(a tiny supervised run, the ACDC-layout data of ``val`` cases it was fitted on) under ``base``: it
    predicts from pixels, so predict needs no SAM, and the 2-step fit takes a few seconds."""
    from fewsam.api import FitOptions, fit
    from fewsam.methods.supervised import SupervisedConfig

    data = write_tiny_acdc(base / "acdc", val)
    fit("supervised", FitOptions(data=data, run=base / "run", labeled_cases=1, show_progress=False),
        SupervisedConfig(steps=2, val_every=2, image_size=32))
    return base / "run", data


def scores_of_labels_as_predictions(data: Path, tmp_path: Path) -> dict:
    """``fewsam evaluate``'s scores of every case's own label written as its prediction (into tmp_path/pred):
    a layout whose predictions are written and read back on the label's grid scores Dice 1."""
    import json

    from typer.testing import CliRunner

    from fewsam.cli import app
    from fewsam.data import open_dataset, write_prediction

    dataset = open_dataset(data)
    for case_id in dataset.split("all"):
        case = dataset.load(case_id)
        write_prediction(case, case.label, tmp_path / "pred")
    scored = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--data", str(data), "--split",
                                      "all", "--quiet", "--json", str(tmp_path / "scores.json")])
    assert scored.exit_code == 0, scored.output
    return json.loads((tmp_path / "scores.json").read_text(encoding="utf-8"))


def main_raising(monkeypatch, capsys, error: BaseException) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``fewsam.cli.main`` when the command raises ``error``: how the
    entry point reports what a command could not finish, without running one."""
    from fewsam import cli

    def command() -> None:
        raise error

    for setup in ("_tune_allocator", "_show_notes", "_stop_on_signals"):
        monkeypatch.setattr(cli, setup, lambda: None)
    monkeypatch.setattr(cli, "run_app", command)  # the real app stays: main reads the command's options from it
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


def write_png_cases(tmp_path: Path, label: np.ndarray, cases: dict[str, tuple[dict[str, str], np.ndarray]]
                    ) -> tuple[Path, Path]:
    """A binary PNG folder (random images, every mask ``label`` as 0/255, an index.csv with each
    case's attribute columns, all in split "test") and a prediction folder holding each case's
    prediction: (data root, prediction folder). ``cases``: id -> (attribute columns, prediction)."""
    from PIL import Image

    from fewsam.data import open_dataset, write_prediction

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "msk").mkdir()
    columns = list(next(iter(cases.values()))[0])
    rows = [",".join(["image", "mask", *columns, "split"])]
    rng = np.random.default_rng(0)
    for cid, (attributes, _) in cases.items():
        Image.fromarray(rng.integers(0, 255, label.shape, dtype=np.uint8)).save(root / "img" / f"{cid}.png")
        Image.fromarray(label * 255).save(root / "msk" / f"{cid}.png")
        rows.append(",".join([f"img/{cid}.png", f"msk/{cid}.png", *(attributes[c] for c in columns), "test"]))
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    pred = tmp_path / "pred"
    dataset = open_dataset(root)
    for cid in dataset.split("test"):
        write_prediction(dataset.load(cid), cases[cid.split("/")[-1]][1][None], pred)
    return root, pred



@pytest.fixture
def tiny_sam_phantom(tmp_path, monkeypatch):
    """A phantom dataset whose fits, predictions and embeddings load the tiny SAM of test_supervised,
    on one thread (fast on a busy CPU)."""
    from test_supervised import tiny_sam

    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.models import registry

    monkeypatch.setattr(registry, "load_model", lambda *args, **kwargs: tiny_sam())
    monkeypatch.setattr("fewsam.api.load_model", lambda *args, **kwargs: tiny_sam())
    monkeypatch.setattr("fewsam.predict.load_model", lambda *args, **kwargs: tiny_sam())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    torch.set_num_threads(threads)


def write_lv_png_folder(root: Path, n: int, foreground: int | None = None) -> Path:
    """``n`` phantom slices as images/caseI.png; with ``foreground``, masks/caseI.png holding the LV
    as that pixel value on 0."""
    from PIL import Image

    from fewsam.data.phantom import phantom_volume

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        image, label = phantom_volume(rng, 1, (40, 48))
        Image.fromarray((image[0] * 255).astype(np.uint8)).save(root / "images" / f"case{i}.png")
        if foreground is not None:
            (root / "masks").mkdir(exist_ok=True)
            mask = ((label[0] == 3) * foreground).astype(np.uint8)
            Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


def write_images_and_masks(root: Path, names: list[str], mask: np.ndarray, mask_suffix: str = ".png") -> Path:
    """images/NAME.png (random 8-bit greyscale of ``mask``'s shape) + masks/NAME``mask_suffix`` holding
    ``mask`` as given (its dtype and coding: 0/255, 0/65535, ...), for each name."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for name in names:
        Image.fromarray((rng.random(mask.shape) * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}{mask_suffix}")
    return root
