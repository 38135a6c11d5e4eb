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
    fit("fewshot", options, FewShotConfig(augmented_views=0, steps=2, val_every=2, views=1, batch_size=2))


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

    def workers_start(address, job, case_ids, staging, workers=None, show_progress=True, on_case=None):
        sent.append(address)
        assert prepared, "the Ray workers started before the driver converted the encoder"
        for case_id in case_ids:  # each case answered, as by a worker
            (staging / f"{case_id}.h5").write_bytes(b"a prediction")
            on_case(case_id, [Path(f"{case_id}.h5")])
        return [Path(f"{case_id}.h5") for case_id in case_ids]

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


def _busi_folder(root: Path, counts: dict[str, int]) -> Path:
    """BUSI's release layout: <pathology>/<pathology> (i).png + its _mask.png (normal images: empty masks)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, n in counts.items():
        (root / folder).mkdir(parents=True)
        for i in range(1, n + 1):
            name = f"{folder.lower()} ({i})"
            Image.fromarray(rng.integers(0, 255, (24, 32), dtype=np.uint8)).save(root / folder / f"{name}.png")
            mask = np.zeros((24, 32), np.uint8)
            if folder.lower() != "normal":
                mask[8:16, 10:20] = 255
            Image.fromarray(mask).save(root / folder / f"{name}_mask.png")
    return root


def test_busi_folders_named_in_capitals_are_split_by_pathology(tmp_path):
    """Benign/, Malignant/, Normal/ (as some copies of BUSI name them): the data was not taken for BUSI at
    all, and its normal images (empty masks) went into "train" and "val" like lesions."""
    from fewsam.data import open_dataset

    dataset = open_dataset(_busi_folder(tmp_path / "BUSI", {"Benign": 5, "Malignant": 5, "Normal": 3}))
    assert dataset.split("normal") == ["Normal/normal (1)", "Normal/normal (2)", "Normal/normal (3)"]
    assert dataset.split("val") == ["Benign/benign (5)", "Malignant/malignant (5)"]
    assert not any("ormal" in case for case in dataset.split("train"))


def test_an_empty_busi_validation_split_names_busis_rule(tmp_path):
    """One image per pathology leaves 'val' empty: the error explained a rule ("every 5th labelled subject")
    that BUSI's folders do not follow."""
    from fewsam.data import open_dataset
    from fewsam.errors import DataError

    dataset = open_dataset(_busi_folder(tmp_path / "busi", {"benign": 1, "malignant": 1}))
    with pytest.raises(DataError, match=r"it holds the last 20% of each pathology's images \(at least one of two"):
        dataset.split("val")
