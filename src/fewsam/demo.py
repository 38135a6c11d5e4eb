"""``fewsam demo``: the whole few-shot pipeline on a generated phantom, in about two minutes on a CPU.

Writes DIR/data (an nnU-Net-style NIfTI folder), DIR/run (the fitted run), DIR/pred (NIfTI
predictions with the input geometry), DIR/eval.json and DIR/overlays/*.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fewsam.api import FitOptions, fit
from fewsam.config import DEFAULT_CACHE
from fewsam.data import open_dataset, read_prediction
from fewsam.data.phantom import PHANTOM_NAME, write_phantom_dataset
from fewsam.errors import RunError
from fewsam.evaluate import evaluate
from fewsam.methods.fewshot import FewShotConfig
from fewsam.predict import predict
from fewsam.report import save_overlay
from fewsam.runs import write_json


def demo_config(steps: int = 80) -> FewShotConfig:
    """The demo's short recipe: a constant small learning rate without weight averaging, which
    suits an 80-step fit on a phantom (the method's defaults are tuned for 400 steps on real data)."""
    return FewShotConfig(steps=steps, lr=1e-4, ema=0.0, val_every=max(steps // 4, 1), batch_size=4)


def run_demo(out_dir: str | Path, device: str = "cpu", cache_root: str = DEFAULT_CACHE, steps: int = 80,
             labelled_slices: int = 2, show_progress: bool = True) -> dict[str, Any]:
    out_dir = Path(out_dir)
    check_demo_folder(out_dir)
    config = demo_config(steps)  # checks --steps before the phantom is written into --out
    data = out_dir / "data"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(data)
    opts = FitOptions(data=data, run=out_dir / "run", labeled_slices=labelled_slices, device=device,
                      cache=cache_root, show_progress=show_progress)
    fit("fewshot", opts, config)
    pred = out_dir / "pred"
    predict(out_dir / "run", data, pred, "val", cache_root, device, overwrite=True, show_progress=show_progress)
    result = evaluate(pred, data, "val", show_progress=show_progress)
    overlays = _write_overlays(data, pred, out_dir / "overlays")
    write_json(out_dir / "eval.json", result)  # last: it marks the demo finished (``check_demo_folder``)
    result["overlays"] = str(overlays)
    result["n_val"] = result["n_cases"]
    return result


DEMO_ENTRIES = ("data", "run", "pred", "overlays", "eval.json")  # what a demo writes in its --out


def check_demo_folder(out_dir: Path) -> None:
    """--out must be new, empty, or a demo's own folder (an interrupted demo resumes there). The demo
    writes data/, run/, pred/ (replacing same-named predictions) and overlays/ into it: in a folder
    of the user's (``fewsam demo --out .`` in a project with its own data/) the phantom would land
    among the user's data and predictions."""
    if (out_dir / "eval.json").exists():
        raise RunError(f"{out_dir} already holds a finished demo; choose another --out")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    # The phantom is written first: without it, nothing in the folder is a demo's.
    ours = DEMO_ENTRIES if _holds_phantom(out_dir / "data") else ()
    theirs = sorted(p.name for p in out_dir.iterdir() if p.name not in ours)
    if theirs:
        shown = ", ".join(theirs[:3]) + (" ..." if len(theirs) > 3 else "")
        raise RunError(f"--out {out_dir} holds files the demo did not write ({shown}); give a new or empty "
                       "folder for the demo's data, run, predictions and overlays")


def _holds_phantom(data: Path) -> bool:
    """Whether ``data`` is the demo's phantom: its dataset.json names it, or it is one cut off while
    being written (image and label folders only, dataset.json comes last)."""
    try:
        return json.loads((data / "dataset.json").read_text()).get("name") == PHANTOM_NAME
    except (OSError, ValueError, AttributeError):
        return data.is_dir() and {p.name for p in data.iterdir()} <= {"imagesTr", "labelsTr"}


def _write_overlays(data: Path, pred: Path, folder: Path) -> Path:
    dataset = open_dataset(data)
    for case_id in dataset.split("val"):
        case = dataset.load(case_id)
        predicted = read_prediction(case, pred)
        for z in range(case.num_slices):
            save_overlay(case.slice_image(z), predicted[z], case.slice_label(z), folder / f"{case_id}_z{z:02d}.png")
    return folder
