"""Pure-Python entry points behind the CLI (nnU-Net's *_api idea): usable from notebooks and tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset, select_labelled
from fewsam.data.types import SliceRef
from fewsam.embedded import embed_cases
from fewsam.errors import DataError
from fewsam.fairness import fair_loss_for
from fewsam.inference import FitContext
from fewsam.models.registry import load_model
from fewsam.runs import prepare_run_dir, run_folder
from fewsam.train import TrainConfig, TrainResult

if TYPE_CHECKING:
    from fewsam.methods.fewshot import FewShotConfig


@dataclass
class FitOptions:
    """Data, model and run options every method's fit takes."""

    data: Path
    run: Path
    labeled_cases: int | None = None
    labeled_slices: int | None = None
    model: str = "litemedsam"
    checkpoint: Path | None = None
    cache: str = "~/.cache/fewsam"
    device: str = "cpu"
    seed: int = 0
    val_split: str = "val"
    show_progress: bool = True
    fair_attribute: str | None = None
    fair_gamma: float = 1.0
    fair_bins: str | None = None
    attributes: Path | None = None  # CSV of group attributes joined to the cases (--attributes)


def embed_dataset(data: str | Path, split: str | None, model_name: str, checkpoint: str | Path | None,
                  cache_root: str, device: str = "cpu", show_progress: bool = True) -> dict[str, Any]:
    """Fill the cache for every case of ``split`` (all splits when None). Returns hit/miss counts."""
    dataset = open_dataset(data)
    model = load_model(model_name, checkpoint, device=device)
    cache = EmbeddingCache(cache_root, model)
    ids = dataset.split(split) if split else _all_case_ids(dataset)
    embed_cases(dataset, ids, cache, device, show_progress)
    return {"cases": len(ids), "encoded": cache.misses, "cache_hits": cache.hits, "cache": str(cache.dir)}


def _all_case_ids(dataset) -> list[str]:
    seen: dict[str, None] = {}
    for name in ("train", "val", "test"):
        try:
            seen.update(dict.fromkeys(dataset.split(name)))
        except DataError:
            continue
    return list(seen)


def fit_context(opts: FitOptions, needs_sam: bool = True) -> tuple[FitContext, list[SliceRef], list[str]]:
    """Open data, load the model and cache, pick the labelled slices and the validation cases.

    ``needs_sam`` False (the U-Net students without SAM): no SAM weights are loaded, so a user
    without them, or on a machine that lacks them, can still train the baselines."""
    if opts.labeled_cases is None and opts.labeled_slices is None:
        raise DataError("say how many labels to use: --labeled-cases N or --labeled-slices K")
    dataset = open_dataset(opts.data, opts.attributes)
    labelled = select_labelled(dataset, n_cases=opts.labeled_cases, n_slices=opts.labeled_slices)
    if not labelled:
        raise DataError("the labelled set is empty; use a positive --labeled-cases or --labeled-slices")
    val_ids = dataset.split(opts.val_split)
    model = load_model(opts.model, opts.checkpoint, device=opts.device) if needs_sam else None
    cache = EmbeddingCache(opts.cache, model) if model is not None else None
    ctx = FitContext(dataset, model, cache, opts.device, opts.show_progress)
    return ctx, labelled, val_ids


def run_config(method: str, opts: FitOptions, ctx: FitContext, labelled: list[SliceRef],
               **method_cfg: Any) -> dict[str, Any]:
    """What config.json records: enough to predict again and to refuse a mismatched resume."""
    return {
        "method": method,
        "model": opts.model if ctx.model is not None else None,
        "checkpoint": str(opts.checkpoint) if opts.checkpoint and ctx.model is not None else None,
        "weights_sha256": ctx.model.weights_sha256 if ctx.model is not None else None,
        "preprocess": ctx.model.preprocess_signature() if ctx.model is not None else None,
        "data": str(Path(opts.data).resolve()),
        "class_map": ctx.class_map.to_json(),
        "values": ctx.values,
        "labelled": {"cases": opts.labeled_cases, "slices": opts.labeled_slices,
                     "refs": [f"{r.case_id}:{r.z}" for r in labelled]},
        "val_split": opts.val_split,
        "fair": ({"attribute": opts.fair_attribute, "gamma": opts.fair_gamma, "bins": opts.fair_bins,
                  "attributes": str(opts.attributes) if opts.attributes else None}
                 if opts.fair_attribute else None),
        "device": opts.device,
        "cache": opts.cache,
        **method_cfg,
    }


def _fit_in_run_folder(run: Path, config: dict[str, Any], loss_fn: Any,
                       fit: Callable[[Path], TrainResult]) -> TrainResult:
    """Create (or resume) RUN and fit in it; a fit that fails before its first checkpoint leaves nothing."""
    with run_folder(run, config) as run_dir:
        if loss_fn is not None:
            loss_fn.save(run_dir)
        return fit(run_dir)


def fit_fewshot_run(opts: FitOptions, train_cfg: TrainConfig, fs_cfg: "FewShotConfig") -> TrainResult:
    """``fewsam fit fewshot`` (train_cfg.seed is taken from opts.seed)."""
    from fewsam.methods import fewshot

    ctx, labelled, val_ids = fit_context(opts)
    train_cfg = replace(train_cfg, seed=opts.seed)
    config = run_config("fewshot", opts, ctx, labelled, train=asdict(train_cfg), fewshot=asdict(fs_cfg))
    loss_fn = fair_loss_for(opts, ctx.dataset, labelled)
    return _fit_in_run_folder(opts.run, config, loss_fn, lambda run_dir: fewshot.fit(
        ctx, labelled, val_ids, run_dir, train_cfg, fs_cfg, loss_fn=loss_fn))


def fit_prompted_run(run: Path, prompt: str, box_margin: float, model_name: str,
                     checkpoint: Path | None) -> Path:
    """``fewsam fit prompted``: records a zero-shot run (nothing to train)."""
    from fewsam.methods.prompted import PROMPTS

    if prompt not in PROMPTS:
        raise DataError(f"--prompt must be one of {', '.join(PROMPTS)}, not {prompt!r}")
    model = load_model(model_name, checkpoint)
    config = {
        "method": "prompted",
        "model": model_name,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "weights_sha256": model.weights_sha256,
        "preprocess": model.preprocess_signature(),
        "prompted": {"prompt": prompt, "box_margin": box_margin},
    }
    run_dir, _ = prepare_run_dir(run, config)
    return run_dir


def fit_supervised_run(opts: FitOptions, steps: int = 2000, lr: float | None = None, val_every: int = 200,
                       student: dict[str, Any] | None = None, optimizer: str = "adamw",
                       ema: float | None = None) -> TrainResult:
    """``fewsam fit supervised``: the U-Net on the labelled slices only (the lower bound)."""
    from fewsam.methods import student as st, supervised

    ctx, labelled, val_ids = fit_context(opts, needs_sam=False)
    train_cfg = supervised.default_train_config(steps, lr, val_every, opts.seed, optimizer, ema)
    student_cfg = st.StudentConfig(**(student or {}))
    config = run_config("supervised", opts, ctx, labelled, train=asdict(train_cfg), student=asdict(student_cfg))
    loss_fn = fair_loss_for(opts, ctx.dataset, labelled, ignore_index=None)
    return _fit_in_run_folder(opts.run, config, loss_fn, lambda run_dir: supervised.fit(
        ctx, labelled, val_ids, run_dir, train_cfg, student_cfg, loss_fn=loss_fn))


def fit_samatch_run(opts: FitOptions, steps: int = 2000, lr: float | None = None, val_every: int = 200,
                    student: dict[str, Any] | None = None, samatch: dict[str, Any] | None = None,
                    optimizer: str = "adamw", ema: float | None = None) -> TrainResult:
    """``fewsam fit samatch`` (``use_sam=False``: the plain FixMatch baseline)."""
    from fewsam.methods import samatch as sm, student as st, supervised

    sm_cfg = sm.SamMatchConfig(**(samatch or {}))
    ctx, labelled, val_ids = fit_context(opts, needs_sam=sm_cfg.use_sam)
    train_cfg = supervised.default_train_config(steps, lr, val_every, opts.seed, optimizer, ema)
    student_cfg = st.StudentConfig(**(student or {}))
    config = run_config("samatch", opts, ctx, labelled, train=asdict(train_cfg), student=asdict(student_cfg),
                        samatch=asdict(sm_cfg))
    loss_fn = fair_loss_for(opts, ctx.dataset, labelled, ignore_index=None)
    return _fit_in_run_folder(opts.run, config, loss_fn, lambda run_dir: sm.fit(
        ctx, labelled, val_ids, run_dir, train_cfg, student_cfg, sm_cfg, loss_fn=loss_fn))
