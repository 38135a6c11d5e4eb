"""What docs/data.md and docs/scaling.md promise, held to the code where a reader would otherwise find
out only on a cluster or on a folder of their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fewsam.cache import EmbeddingCache


def _fit_fewshot(data: Path, run: Path) -> None:
    from fewsam.api import FitOptions, fit
    from fewsam.methods.fewshot import FewShotConfig

    options = FitOptions(data=data, run=run, labeled_slices=2, cache=str(run.parent / "cache"),
                         precision="fp32", show_progress=False)
    fit("fewshot", options, FewShotConfig(steps=2, val_every=2, views=1, batch_size=2))


def test_predict_on_ray_converts_an_openvino_encoder_once_on_the_driver(tiny_sam_phantom, tmp_path, monkeypatch):
    """docs/scaling.md: with OpenVINO the driver converts the encoder once and the workers read the IR it
    leaves beside the cache; otherwise every worker of ``predict --ray`` converts it at the same time."""
    pytest.importorskip("openvino")
    from fewsam.distributed import ray_jobs
    from fewsam.predict import predict

    run = tmp_path / "run"
    _fit_fewshot(tiny_sam_phantom, run)
    prepared: list[str] = []
    sent: list[str] = []
    monkeypatch.setattr(EmbeddingCache, "prepare_encoder", lambda cache: prepared.append(cache.precision.backend))

    def workers_start(address, job, case_ids, staging, workers=None, show_progress=True):
        sent.append(address)
        assert prepared, "the Ray workers started before the driver converted the encoder"
        return []

    monkeypatch.setattr(ray_jobs, "predict_on_ray", workers_start)
    predict(run, tiny_sam_phantom, tmp_path / "pred", cache_root=tmp_path / "cache", precision="fp32-openvino",
            ray="local", show_progress=False)
    assert sent == ["local"] and prepared == ["openvino"]
