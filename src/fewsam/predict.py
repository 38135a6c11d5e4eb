"""``fewsam predict``: a run folder + a data folder -> one prediction file per case, in the case's format.

The run folder says which method, model and weights made it; the method registry rebuilds its
predictor, cases are embedded through the cache (unless the method predicts from pixels), and
predictions are written mirroring the cases' relative paths so that ``fewsam evaluate`` (or any
other tool) can pair them up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fewsam.cache import EmbeddingCache
from fewsam.config import DEFAULT_CACHE
from fewsam.data import open_dataset, write_prediction
from fewsam.embedded import embed_case
from fewsam.errors import DataError, ModelError, RunError
from fewsam.models.precision import EncoderPrecision, resolve_precision
from fewsam.models.registry import load_model
from fewsam.models.sam import SamModel
from fewsam.progress import tracked
from fewsam.runs import read_config

Refine = Literal["never", "always", "if-better"]


def load_run_model(config: dict, device: str) -> SamModel:
    """The SAM backbone a run was fitted with; refuses a checkpoint that changed since."""
    model = load_model(config["model"], config.get("checkpoint"), device=device)
    if config.get("weights_sha256") and model.weights_sha256 != config["weights_sha256"]:
        raise ModelError(f"the checkpoint for {config['model']} differs from the one this run was fitted "
                         "with (sha256 mismatch); give the original --checkpoint")
    return model


def predict(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    split: str | None = None,
    cache_root: str | Path = DEFAULT_CACHE,
    device: str = "cpu",
    overwrite: bool = False,
    show_progress: bool = True,
    refine: Refine = "never",
    precision: str = "auto",
) -> list[Path]:
    """Write one prediction per case of ``split`` (default: the dataset's "val" split) under ``out``.

    ``refine`` (SAM-Match runs): "always" lets the student's confident regions prompt the run's
    SAM (``methods/samatch/refine.py``; the slices are then embedded through the cache);
    "if-better" refines only if that scores higher on the run's validation cases (decided once,
    RUN/refinement.json). ``precision``: the encoder's numerics (``models.precision``)."""
    from fewsam.methods import get_method

    run_dir, out = Path(run_dir), Path(out)
    config = read_config(run_dir)
    method = get_method(config.get("method"))
    dataset = open_dataset(data)
    case_ids = dataset.split(split or "val")
    if not case_ids:
        raise DataError(f"split {split or 'val'} of {data} is empty")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunError(f"{out} is not empty; choose another --out or pass --overwrite")
    if refine not in ("never", "always", "if-better"):
        raise RunError(f"refine must be never, always or if-better, not {refine!r}")
    if refine != "never":
        from fewsam.methods.samatch.refine import check_refinable

        check_refinable(run_dir, config)
    _check_class_map(config, dataset.class_map.to_json(), data)
    encoder = resolve_precision(precision, device)
    refined = refine == "always" or (refine == "if-better" and
                                     _refinement_chosen(run_dir, config, cache_root, encoder, device,
                                                        show_progress))
    pixels_only = method.pixels_only and not refined
    model = None if pixels_only else load_run_model(config, device)
    if refined:
        from fewsam.methods.samatch.refine import SamRefinedPredictor

        predictor = SamRefinedPredictor(run_dir, model, device)
    else:
        predictor = method.predictor(run_dir, config, model, device, [0] + dataset.class_map.labels)
    cache = None if pixels_only else EmbeddingCache(cache_root, model, encoder)
    written = []
    for case_id in tracked(case_ids, "predict", show_progress):
        case = dataset.load(case_id)
        pred = predictor.predict_case(case, [] if cache is None else embed_case(case, cache, device))
        written.append(write_prediction(case, pred, out))
    return written


def _refinement_chosen(run_dir: Path, config: dict, cache_root: str | Path, encoder: EncoderPrecision, device: str,
                       show_progress: bool) -> bool:
    """Whether SAM refinement beat the student on the run's validation cases (decided once)."""
    from fewsam.methods.samatch.refine import SamRefinedPredictor, choose_refinement

    model = load_run_model(config, device)
    predictor = SamRefinedPredictor(run_dir, model, device)
    cache = EmbeddingCache(cache_root, model, encoder)
    return bool(choose_refinement(run_dir, predictor, cache, device, show_progress)["refine"])


def _check_class_map(config: dict, class_map: dict[str, str], data: str | Path) -> None:
    if config.get("class_map") and config["class_map"] != class_map:
        raise DataError(f"{data} has classes {class_map} but the run was fitted on {config['class_map']}")
