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


def test_a_busi_named_folder_without_pathologies_is_split_by_the_general_rule(tmp_path):
    """docs/data.md: BUSI's split by pathology applies where the data names the pathologies; a flat folder
    of ``X.png`` + ``X_mask.png`` under a path naming BUSI gets every 5th image in "val" like any other."""
    from PIL import Image

    from fewsam.data import open_dataset

    root = tmp_path / "busi_subset"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 32), dtype=np.uint8)).save(root / f"x{i}.png")
        mask = np.zeros((24, 32), np.uint8)
        mask[8:16, 10:20] = 255
        Image.fromarray(mask).save(root / f"x{i}_mask.png")
    dataset = open_dataset(root)
    assert dataset.class_map.names == {1: "lesion"}  # still read in BUSI's coding
    assert dataset.split("val") == ["x4"]
    assert dataset.split("train") == ["x0", "x1", "x2", "x3", "x5"]
