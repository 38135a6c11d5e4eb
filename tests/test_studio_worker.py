"""The studio's worker on its own: the entropy that ranks slices, predictions as the run's predictor
makes them, the fit recipe, and failures that reach the page as one line in status.json."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from fewsam.embedded import EmbeddedSlice
from fewsam.data.types import SliceRef
from fewsam.models.sam import PreprocessInfo
from fewsam.methods.fewshot import FewShotPredictor
from fewsam.studio import worker
from fewsam.studio.app import DEFAULT_STEPS, DEFAULT_VIEWS


def test_mean_entropy_is_zero_when_certain_and_one_when_uniform():
    certain = torch.zeros(4, 8, 8)
    certain[2] = 1.0
    assert worker.mean_entropy(certain) == pytest.approx(0.0, abs=1e-6)
    assert worker.mean_entropy(torch.full((4, 8, 8), 0.25)) == pytest.approx(1.0)
    half = torch.full((4, 8, 8), 0.25)
    half[:, :, 4:] = certain[:, :, 4:]
    assert worker.mean_entropy(half) == pytest.approx(0.5)


class StubPredictor:
    """What ``predict_with_entropy`` reads of a ``FewShotPredictor``: a decoder, tokens, values, and
    the run's own probabilities and post-processing (the real methods)."""

    postprocess = FewShotPredictor.postprocess
    probabilities = FewShotPredictor.probabilities

    def __init__(self, logits: torch.Tensor, largest_component: bool = False) -> None:
        self.logits, self.values, self.device = logits, [0, 1, 3], "cpu"
        self.tokens = torch.zeros(3, 1, 4)
        self.largest_component, self.cavity_rule, self.mirror = largest_component, None, False

    def decoder(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits[: embeddings.shape[0]]


def embedded(count: int, hw: tuple[int, int] = (20, 30)) -> list[EmbeddedSlice]:
    info = PreprocessInfo(hw, hw, 32)
    return [EmbeddedSlice(SliceRef("c", z), np.zeros((4, 8, 8), np.float16), info, None, None) for z in range(count)]


def test_predictions_are_label_values_and_each_slice_gets_its_entropy():
    logits = torch.zeros(2, 3, 32, 32)
    logits[0, 2] = 50.0  # slice 0: value 3 everywhere, certain
    logits[1, :, :, :16] = torch.tensor([0.0, 50.0, 0.0])[:, None, None]  # slice 1: left half value 1 ...
    labels, entropy = worker.predict_with_entropy(StubPredictor(logits), embedded(2))  # ... right half uniform
    assert labels.shape == (2, 20, 30) and labels.dtype == np.uint8
    assert (labels[0] == 3).all()
    assert (labels[1][:, :10] == 1).all()
    assert entropy[0] == pytest.approx(0.0, abs=1e-4)
    assert 0.3 < entropy[1] < 0.7


def test_largest_component_post_processing_applies_when_the_run_chose_it():
    logits = torch.zeros(1, 3, 32, 32)
    logits[0, 1, :, :8] = 50.0
    logits[0, 1, :, 24:] = 50.0  # two islands of value 1: columns 0-7 (kept) and 24-29
    logits[0, 1, :, 30:] = 0.0
    logits[0, 0, :, 8:24] = 50.0
    raw, _ = worker.predict_with_entropy(StubPredictor(logits), embedded(1, (32, 32)))
    kept, _ = worker.predict_with_entropy(StubPredictor(logits, largest_component=True), embedded(1, (32, 32)))
    assert (raw == 1).sum() > (kept == 1).sum() > 0


def test_the_page_defaults_are_the_demo_recipe_and_the_fit_config_takes_steps_and_views():
    from fewsam.demo import demo_config
    from fewsam.methods.fewshot import FewShotConfig

    assert DEFAULT_STEPS == demo_config().steps
    assert DEFAULT_VIEWS == next(f.default for f in fields(FewShotConfig) if f.name == "views")
    cfg = worker.fit_config(12, 3)
    assert (cfg.steps, cfg.views, cfg.lr, cfg.ema) == (12, 3, demo_config(12).lr, demo_config(12).ema)


def test_a_failing_fit_reaches_status_json_as_one_line(tmp_path: Path):
    status = tmp_path / "status.json"
    spec = {"kind": "fit", "fit_dir": str(tmp_path / "fit-0001"), "project": str(tmp_path), "labelled_slices": 1,
            "steps": 2, "views": 1, "cases": [], "device": "cpu", "cache": str(tmp_path / "cache"),
            "precision": "fp32", "data": str(tmp_path / "missing"), "status": str(status)}
    (tmp_path / "job.json").write_text(json.dumps(spec))
    assert worker.main([str(tmp_path / "job.json")]) == 1
    record = json.loads(status.read_text())
    assert record["state"] == "failed" and "does not exist" in record["error"]
    assert not (tmp_path / "latest_run.json").exists()


def test_an_unknown_job_kind_fails_cleanly(tmp_path: Path):
    (tmp_path / "job.json").write_text(json.dumps({"kind": "dance", "status": str(tmp_path / "status.json")}))
    assert worker.main([str(tmp_path / "job.json")]) == 1
    assert "unknown job kind 'dance'" in json.loads((tmp_path / "status.json").read_text())["error"]
    assert math.isfinite(json.loads((tmp_path / "status.json").read_text())["updated"])
