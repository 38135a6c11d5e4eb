"""A real end-to-end path on a small subset of ACDC (the shared real-data folder): fit -> predict (h5) -> evaluate.

Test-time mirroring and SAM refinement (each several encoder or decoder passes per validation
slice) are switched off here: their choices are tested in test_mirroring and test_self_prompting."""

import json
import shutil

import h5py
import numpy as np
import pytest

from fewsam.api import FitOptions, fit
from fewsam.evaluate import evaluate
from fewsam.methods.fewmatch import FewMatchConfig
from fewsam.methods.fewshot import FewShotConfig
from fewsam.predict import predict
from tests.conftest import shared_data

LABELLED = ["patient099_frame01_slice_7", "patient099_frame01_slice_9", "patient099_frame02_slice_5",
            "patient099_frame02_slice_9"]
UNLABELLED = ["patient100_frame01_slice_5", "patient100_frame02_slice_6"]  # another patient, labels never read
VAL = "patient028_frame01"


def _subset(tmp_path):
    src = shared_data("acdc")
    root = tmp_path / "acdc"
    (root / "data").mkdir(parents=True)
    for name in LABELLED + UNLABELLED + [VAL]:
        shutil.copy(src / "data" / f"{name}.h5", root / "data")
    shutil.copy(src / "patient_info.csv", root)
    (root / "train_slices.list").write_text("\n".join(LABELLED + UNLABELLED) + "\n")
    (root / "val.list").write_text(VAL + "\n")
    return root


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    """The subset, and one embedding cache both fits share: the encoder is converted and their labelled views
    and validation slices are encoded once (the two tests check the methods, not the encoder's paths)."""
    root = tmp_path_factory.mktemp("acdc_subset")
    return _subset(root), str(root / "cache")


@pytest.mark.slow
def test_fewshot_on_real_acdc_slices(acdc, tmp_path):
    data, cache = acdc
    opts = FitOptions(data=data, run=tmp_path / "run", labeled_slices=4, cache=cache, show_progress=False)
    result = fit("fewshot", opts, FewShotConfig(augmented_views=0, steps=10, lr=3e-4, ema=0.0, val_every=5, views=2,
                                                batch_size=4, test_mirroring=False, sam_refinement=False))
    assert 0.0 <= result.best_score <= 1.0
    written = predict(tmp_path / "run", data, tmp_path / "pred", "val.list", cache, show_progress=False)
    assert [p.name for p in written] == [f"{VAL}.h5"]
    with h5py.File(written[0]) as f, h5py.File(data / "data" / f"{VAL}.h5") as g:
        assert f["pred"].shape == g["label"].shape and set(np.unique(f["pred"][:])) <= {0, 1, 2, 3}
    report = evaluate(tmp_path / "pred", data, "val.list", group_by="group", show_progress=False)
    assert report["n_cases"] == 1 and list(report["groups"]) == ["HCM"]
    # 4 labelled slices of another patient, 10 steps: the heart is found, if roughly (measured: LV Dice 0.81).
    assert report["per_class"]["LV"]["dice"] > 0.5, json.dumps(report["per_class"])


@pytest.mark.slow
def test_fewmatch_on_real_acdc_slices(acdc, tmp_path):
    """The semi-supervised decoder on real slices: the unlabelled patient joins after the warm-up,
    and the heart is still found."""
    data, cache = acdc
    opts = FitOptions(data=data, run=tmp_path / "run", labeled_slices=4, cache=cache, show_progress=False)
    cfg = FewMatchConfig(steps=16, ema=0.0, val_every=8, views=2, batch_size=4, warmup_steps=6, ramp_steps=5,
                         unlabeled_batch=2, test_mirroring=False, sam_refinement=False)
    result = fit("fewmatch", opts, cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "fit_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in log if "loss_u" in r][0] == 7
    written = predict(tmp_path / "run", data, tmp_path / "pred", "val.list", cache, show_progress=False)
    report = evaluate(tmp_path / "pred", data, "val.list", show_progress=False)
    assert 0.0 <= result.best_score <= 1.0 and len(written) == 1
    # 10 unlabelled steps after the warm-up (measured: LV Dice 0.90)
    assert report["per_class"]["LV"]["dice"] > 0.5, json.dumps(report["per_class"])
