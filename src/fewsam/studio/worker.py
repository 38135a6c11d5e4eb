"""The studio's background worker: ``python -m fewsam.studio.worker JOB.json``.

A separate process, so that a fit that runs out of memory or crashes cannot take the server
(or the user's labels) with it; the server watches its exit code and its status file. Two kinds
of job:

- ``fit``: ``fewsam.api.fit("fewshot", FitOptions(...), FewShotConfig(...))`` on the fit dataset
  the server wrote (``fitdata.py``), exactly as ``fewsam fit fewshot`` runs; then PROJECT/latest_run.json
  names the new run and the requested cases are predicted.
- ``predict``: the latest run predicts more cases.

Predictions come from the run's own predictor (``FewShotPredictor``: its decoder, prompt bank
and post-processing), with the per-class probabilities kept for one more number per slice: the
mean predictive entropy, which "suggest next" ranks slices by. Progress goes to the job's
status.json (phase, message, cases done); the fit's step, loss and validation Dice are in the
run's own fit_log.jsonl, which the server reads as it grows.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fewsam.atomic import atomic_write_bytes
from fewsam.errors import (FewsamError, Stopped, end_as_signalled, is_disk_full, raise_stopped_on_signals,
                           resource_failure_message)
from fewsam.studio.fitdata import FIT_VAL_SPLIT
from fewsam.studio.jobs import DISK_FULL_EXIT
from fewsam.studio.project import LATEST_RUN, PREDICTIONS, case_key, encode_prediction


class Status:
    """The job's status.json, rewritten atomically at each change (the server reads it any time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record: dict[str, Any] = {"state": "running", "phase": "starting", "message": "", "error": None}

    def update(self, **fields: Any) -> None:
        self.record.update(fields, updated=time.time())
        atomic_write_bytes(self.path, json.dumps(self.record).encode())


def fit_config(steps: int, views: int) -> Any:
    """The studio's recipe: ``fewsam demo``'s short few-shot recipe, with the page's steps and views."""
    from fewsam.demo import demo_config

    return replace(demo_config(steps), views=views)


def run_fit(spec: dict[str, Any], status: Status) -> dict[str, Any]:
    """Fit the few-shot decoder on the fit dataset, name the run as the latest, predict the cases."""
    from fewsam.api import FitOptions, fit

    fit_dir = Path(spec["fit_dir"])
    options = FitOptions(run=fit_dir / "run", data=fit_dir / "data", labeled_slices=spec["labelled_slices"],
                         val_split=FIT_VAL_SPLIT, device=spec["device"], cache=spec["cache"],
                         precision=spec["precision"], show_progress=False)
    status.update(phase="fit", message=f"encoding {spec['labelled_slices']} labelled slice(s) x {spec['views']} "
                                       "view(s), then fitting", steps=spec["steps"])
    result = fit("fewshot", options, fit_config(spec["steps"], spec["views"]))
    latest = {"fit": fit_dir.name, "run": str(options.run), "best_score": _finite(result.best_score),
              "best_step": result.best_step, "labelled_slices": spec["labelled_slices"], "finished": time.time()}
    atomic_write_bytes(Path(spec["project"]) / LATEST_RUN, json.dumps(latest, indent=1).encode())
    status.update(best_score=latest["best_score"])
    predicted = predict_cases({**spec, "fit": fit_dir.name, "run": str(options.run)}, status)
    return {**latest, "predicted": predicted}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def predict_cases(spec: dict[str, Any], status: Status) -> list[str]:
    """Predict ``spec["cases"]`` with the run's predictor; writes PROJECT/predictions/<fit>/<case>.npz."""
    from fewsam.cache import EmbeddingCache
    from fewsam.data import open_dataset
    from fewsam.embedded import CaseSlices
    from fewsam.methods.fewshot import FewShotPredictor
    from fewsam.models.precision import resolve_precision
    from fewsam.predict import load_run_model
    from fewsam.runs import check_run

    cases = list(spec["cases"])
    if not cases:
        return []
    status.update(phase="predict", message="loading the fitted model", cases_total=len(cases), cases_done=0)
    run = Path(spec["run"])
    model = load_run_model(check_run(run), spec["device"])
    predictor = FewShotPredictor(run, model, spec["device"])
    cache = EmbeddingCache(spec["cache"], model, resolve_precision(spec["precision"], spec["device"]))
    dataset = open_dataset(spec["data"])
    out = Path(spec["project"]) / PREDICTIONS / spec["fit"]
    for done, case_id in enumerate(cases):
        status.update(message=f"predicting {case_id} ({done + 1}/{len(cases)})", cases_done=done)
        case = dataset.load(case_id, with_label=False)
        labels, entropy = predict_with_entropy(predictor, CaseSlices(case, cache, spec["device"], streamed=True))
        atomic_write_bytes(out / f"{case_key(case_id)}.npz", encode_prediction(case_id, spec["fit"], labels, entropy))
    status.update(cases_done=len(cases))
    return cases


def predict_with_entropy(predictor: Any, slices: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(D, H, W) label values as ``predictor.predict_case`` makes them, and each slice's mean
    normalised entropy of the class probabilities (0: certain everywhere, 1: uniform everywhere)."""
    import torch

    from fewsam.inference import stack_volume
    from fewsam.labels import index_lut

    lut = index_lut(predictor.values)
    labels, entropy = [], []
    for probs in predictor.probabilities(slices):
        labels.append(lut[probs.argmax(axis=0)])
        entropy.append(mean_entropy(torch.from_numpy(probs)))
    return predictor.postprocess(stack_volume(labels)), np.asarray(entropy, np.float32)


def mean_entropy(probs: Any) -> float:
    """Mean over pixels of the entropy of (C, H, W) class probabilities, divided by log C."""
    import torch

    classes = probs.shape[0]
    if classes < 2:
        return 0.0
    per_pixel = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=0)
    return float(per_pixel.mean() / math.log(classes))


def run_job(spec: dict[str, Any], status: Status) -> dict[str, Any]:
    """Checks the studio's device first: a prediction would otherwise meet a missing GPU as torch's own
    error from deep inside model loading, not the line that says which device and what to do."""
    from fewsam.devices import check_device

    if spec["kind"] in ("fit", "predict"):
        check_device(spec["device"])
    if spec["kind"] == "fit":
        return run_fit(spec, status)
    if spec["kind"] == "predict":
        return {"predicted": predict_cases(spec, status)}
    raise FewsamError(f"unknown job kind {spec['kind']!r}")


def main(argv: list[str] | None = None) -> int:
    """Run the job in JOB.json; exit 0 when it finished, 1 when it failed (the reason in status.json), or
    ``DISK_FULL_EXIT`` when the disk is too full to record even that."""
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    status = Status(Path(spec["status"]))
    status.update(kind=spec["kind"], pid=os.getpid())
    raise_stopped_on_signals()  # Cancel and a stopping studio send SIGTERM: the fit winds down as the CLI's does
    try:
        result = run_job(spec, status)
    except Stopped as stop:  # its fit.log says so, a new run with no checkpoint is removed; then the signal's end
        end_as_signalled(stop)
        raise
    except FewsamError as err:
        return record_failure(status, str(err))
    except Exception as err:  # noqa: BLE001 - an unexpected failure still has to reach the page
        said = resource_failure_message(err)
        if said is not None:
            return record_failure(status, said)
        traceback.print_exc()
        return record_failure(status, f"{type(err).__name__}: {err} (details in the job's worker.log)")
    status.update(state="done", phase="done", message="finished", result=result)
    return 0


def record_failure(status: Status, error: str) -> int:
    """Say why the job failed in status.json (what the page shows) and worker.log; the exit code says a
    full disk when status.json, on that disk, cannot take the line (the server then says it instead)."""
    try:
        print(f"error: {error}", file=sys.stderr, flush=True)
    except OSError:
        pass  # worker.log is only the second place the line goes
    try:
        status.update(state="failed", error=error)
    except OSError as err:
        return DISK_FULL_EXIT if is_disk_full(err) else 1
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
