"""Fits are bit-reproducible: a phantom few-shot fit (without and with augmented copies) and a short
phantom SAM-Match fit (tiny SAM) give exactly the weights, pseudo-labels and predictions recorded in
tests/golden/determinism.json.

The digests were recorded before the code was reorganised around the method registry, so this
test holds every later change to the same numbers. Floating-point kernels differ between CPU
models and torch builds: on another host the few-shot weights must agree within a tolerance
instead (their per-tensor sums are recorded too). Re-record deliberately, after a change that is
meant to alter the numbers: ``python tests/test_determinism.py --record``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fewsam.data.phantom import write_phantom_dataset
from fewsam.embedded import embed_case
from fewsam.methods import fewshot, samatch
from fewsam.methods.student import StudentPredictor
from fewsam.runs import BEST, prepare_run_dir

GOLDEN = Path(__file__).with_name("golden") / "determinism.json"
FEWSHOT = fewshot.FewShotConfig(steps=6, val_every=3, batch_size=2, views=2, augmented_views=0)
# the copies' embeddings are read back from the cache as steps draw them: the weights are those of copies held
FEWSHOT_COPIES = replace(FEWSHOT, augmented_views=2)
SAMATCH = samatch.SamMatchConfig(unlabeled_batch=4, unlabeled_limit=4, warmup_steps=4, refresh_every=4, ramp_steps=4,
                                 sam_steps=2, sam_batch=2, sam_val_slices=4, sam_round_steps=2, threshold=0.0,
                                 steps=12, lr=0.05, val_every=4, optimizer="sgd", image_size=64,
                                 channels=(8, 16, 32, 64), num_res_units=1, batch_size=4)


def host() -> dict[str, str]:
    """What decides the rounding: torch, the CPU, and its widest vector unit (one model name, e.g.
    "AMD EPYC", covers virtual CPUs with and without AVX-512, whose kernels round differently)."""
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
               platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    isa = next((name for name in ("amx_bf16", "avx512f", "avx2") if name in flags), "other")
    return {"torch": torch.__version__, "cpu": cpu, "machine": platform.machine(), "isa": isa}


def weights_digest(folder: Path) -> tuple[str, dict[str, float]]:
    """sha256 over the best checkpoint's tensors (sorted by name), and each float tensor's sum."""
    state = torch.load(folder / BEST, map_location="cpu", weights_only=True)["module"]
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().numpy().tobytes())
    return h.hexdigest(), {k: float(v.double().sum()) for k, v in sorted(state.items()) if v.is_floating_point()}


def arrays_digest(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def run_fits(root: Path) -> dict[str, dict]:
    """The fits on a fresh phantom under ``root``; their digests."""
    from test_supervised import context

    torch.set_num_threads(1)
    data = write_phantom_dataset(root / "data", n_train=4, n_val=2, slices=6, seed=1)
    ctx = context(data, root, n_slices=3, precision="fp32")  # the reference path the digests hold
    (root / "fs").mkdir()
    fewshot.fit(ctx, FEWSHOT, root / "fs")
    predictor = fewshot.FewShotPredictor(root / "fs", ctx.model, acceleration=ctx.acceleration)
    cases = [ctx.dataset.load(c) for c in ctx.val_ids]
    preds = [predictor.predict_case(case, embed_case(case, ctx.cache)) for case in cases]
    digest, sums = weights_digest(root / "fs")
    out = {"fewshot": {"weights": digest, "sums": sums, "predictions": arrays_digest(preds)}}
    (root / "fs_copies").mkdir()
    fewshot.fit(ctx, FEWSHOT_COPIES, root / "fs_copies")
    digest, sums = weights_digest(root / "fs_copies")
    out["fewshot_copies"] = {"weights": digest, "sums": sums}

    ctx = context(data, root, n_cases=1, precision="fp32")
    config = {"method": "samatch", "model": "tinysam", "class_map": ctx.class_map.to_json(), "values": ctx.values,
              "samatch": asdict(SAMATCH), **SAMATCH.derived_record(0)}
    run, _ = prepare_run_dir(root / "sm", config)
    samatch.fit(ctx, SAMATCH, run)
    preds = [StudentPredictor(run).predict_case(case) for case in cases]
    pseudo = torch.load(run / "pseudo_labels" / "step_0000008.pt", weights_only=True)["labels"].numpy()
    digest, sums = weights_digest(run)
    out["samatch"] = {"weights": digest, "sums": sums, "predictions": arrays_digest(preds),
                      "pseudo_labels_step8": arrays_digest([pseudo]), "sam_stage1": weights_digest(run / "sam")[0]}
    return out


def test_fits_reproduce_the_recorded_numbers(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    threads = torch.get_num_threads()
    try:
        got = run_fits(tmp_path)
    finally:  # the digests need one thread; the tests after this one keep the suite's setting
        torch.set_num_threads(threads)
    if golden["recorded_on"] == host():
        for method in ("fewshot", "fewshot_copies", "samatch"):
            assert got[method] == golden[method], method
        return
    # Another CPU or torch build rounds differently. The few-shot fit is smooth in its inputs, so
    # its weights stay close; SAM-Match's pseudo-labels are argmaxes that a rounding difference
    # can flip, so there only the run's structure is compared.
    for fit in ("fewshot", "fewshot_copies"):
        for name, total in golden[fit]["sums"].items():
            assert got[fit]["sums"][name] == pytest.approx(total, rel=1e-2, abs=1e-2), name
    assert got["samatch"]["sums"].keys() == golden["samatch"]["sums"].keys()


def test_two_fits_on_two_threads_of_one_process_give_the_weights_each_gives_alone(tmp_path, monkeypatch, caplog):
    """torch's generators are the process's: two fits on two threads would draw from one stream. Each thread's
    fit, held between seeding and drawing its U-Net's weights until the other has seeded too (or a few
    seconds have passed, when it cannot: it waits for this one), gives the weights its seed gives alone,
    and the fit that waits says so."""
    import threading

    from conftest import write_tiny_acdc
    from fewsam.api import FitOptions, fit
    from fewsam.methods import supervised

    data = write_tiny_acdc(tmp_path / "acdc", ["patient010_frame01", "patient011_frame01"])

    def fitted(run: Path, seed: int) -> str:
        fit("supervised", FitOptions(data=data, run=run, labeled_cases=1, seed=seed, show_progress=False),
            supervised.SupervisedConfig(steps=2, val_every=2, image_size=32))
        return weights_digest(run)[0]

    alone = {seed: fitted(tmp_path / f"alone{seed}", seed) for seed in (0, 1)}
    assert alone[0] != alone[1]
    seeded = {seed: threading.Event() for seed in (0, 1)}
    build = supervised.build_unet

    def built_once_both_seeded(cfg, classes):
        seed = int(torch.initial_seed())
        seeded[seed].set()
        seeded[1 - seed].wait(timeout=3)
        return build(cfg, classes)

    monkeypatch.setattr(supervised, "build_unet", built_once_both_seeded)
    caplog.set_level("INFO", logger="fewsam")
    together: dict[int, str] = {}
    threads = [threading.Thread(target=lambda s=seed: together.update({s: fitted(tmp_path / f"thread{s}", s)}))
               for seed in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert together == alone
    assert any("waits for it" in message for message in caplog.messages), caplog.messages


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps({"recorded_on": host(), **run_fits(Path(tmp))}, indent=1, sort_keys=True) + "\n")
    print(f"recorded {GOLDEN}")
