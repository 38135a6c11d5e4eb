"""``fewsam predict``: a run folder + a data folder -> one prediction file per case, in the case's format.

The run folder says which method, model and weights made it; the predictor for that method is
rebuilt from it, cases are embedded through the cache, and predictions are written mirroring
the cases' relative paths so that ``fewsam evaluate`` (or any other tool) can pair them up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset, write_prediction
from fewsam.data.types import Case
from fewsam.embedded import EmbeddedSlice, embed_case
from fewsam.errors import DataError, ModelError, RunError
from fewsam.models.registry import load_model
from fewsam.models.sam import SamModel
from fewsam.progress import tracked
from fewsam.runs import read_config


STUDENT_METHODS = ("supervised", "samatch")  # U-Net students: predict from pixels


class Predictor(Protocol):
    def predict_case(self, case: Case, slices: list[EmbeddedSlice]) -> np.ndarray:
        """(D, H, W) uint8 label values for the case."""
        ...


def load_run_model(config: dict, device: str) -> SamModel:
    """The SAM backbone a run was fitted with; refuses a checkpoint that changed since."""
    model = load_model(config["model"], config.get("checkpoint"), device=device)
    if config.get("weights_sha256") and model.weights_sha256 != config["weights_sha256"]:
        raise ModelError(f"the checkpoint for {config['model']} differs from the one this run was fitted "
                         "with (sha256 mismatch); give the original --checkpoint")
    return model


def build_predictor(run_dir: Path, config: dict, model: SamModel | None, device: str, values: list[int],
                    refine_with_sam: bool = False) -> Predictor:
    """The method's predictor, rebuilt from the run folder (``values``: the data's label values)."""
    method = config.get("method")
    if refine_with_sam:
        from fewsam.methods.sam_refine import SamRefinedPredictor

        return SamRefinedPredictor(run_dir, model, device)
    if method == "fewshot":
        from fewsam.methods.fewshot import FewShotPredictor

        return FewShotPredictor(run_dir, model, device)
    if method == "prompted":
        from fewsam.methods.prompted import PromptedConfig, PromptedPredictor

        return PromptedPredictor(model, values, PromptedConfig(**config["prompted"]), device)
    if method in STUDENT_METHODS:
        from fewsam.methods.student import StudentPredictor

        return StudentPredictor(run_dir, device)
    raise RunError(f"{run_dir}: unknown method {method!r} in config.json")


def predict(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    split: str | None = None,
    cache_root: str | Path = "~/.cache/fewsam",
    device: str = "cpu",
    overwrite: bool = False,
    show_progress: bool = True,
    refine_with_sam: bool = False,
    refine_if_better: bool = False,
) -> list[Path]:
    """Write one prediction per case of ``split`` (default: the dataset's "val" split) under ``out``.

    ``refine_with_sam`` (SAM-Match runs): the student's confident regions prompt the run's SAM
    (``methods/sam_refine.py``); the slices are then embedded through the cache.
    ``refine_if_better``: refine only if it scores higher on the run's validation cases (decided
    once, RUN/refinement.json)."""
    run_dir, out = Path(run_dir), Path(out)
    config = read_config(run_dir)
    dataset = open_dataset(data)
    case_ids = dataset.split(split or "val")
    if not case_ids:
        raise DataError(f"split {split or 'val'} of {data} is empty")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunError(f"{out} is not empty; choose another --out or pass --overwrite")
    if refine_with_sam and refine_if_better:
        raise RunError("choose one: --refine-with-sam (always) or --refine-if-better (decided on validation)")
    if refine_with_sam or refine_if_better:
        from fewsam.methods.sam_refine import check_refinable

        check_refinable(run_dir, config)
    _check_class_map(config, dataset.class_map.to_json(), data)
    if refine_if_better:
        refine_with_sam = _refinement_chosen(run_dir, config, cache_root, device, show_progress)
    student = config.get("method") in STUDENT_METHODS and not refine_with_sam  # pixels in, no SAM needed
    model = None if student else load_run_model(config, device)
    predictor = build_predictor(run_dir, config, model, device, [0] + dataset.class_map.labels, refine_with_sam)
    cache = None if student else EmbeddingCache(cache_root, model)
    written = []
    for case_id in tracked(case_ids, "predict", show_progress):
        case = dataset.load(case_id)
        pred = predictor.predict_case(case, [] if cache is None else embed_case(case, cache, device))
        written.append(write_prediction(case, pred, out))
    return written


def _refinement_chosen(run_dir: Path, config: dict, cache_root: str | Path, device: str, show_progress: bool) -> bool:
    """Whether SAM refinement beat the student on the run's validation cases (decided once)."""
    from fewsam.methods.sam_refine import SamRefinedPredictor, choose_refinement

    model = load_run_model(config, device)
    predictor = SamRefinedPredictor(run_dir, model, device)
    return bool(choose_refinement(run_dir, predictor, EmbeddingCache(cache_root, model), device, show_progress)["refine"])


def _check_class_map(config: dict, class_map: dict[str, str], data: str | Path) -> None:
    if config.get("class_map") and config["class_map"] != class_map:
        raise DataError(f"{data} has classes {class_map} but the run was fitted on {config['class_map']}")
