"""Pure-Python entry points behind the CLI (nnU-Net's *_api idea): usable from notebooks and tests.

    from fewsam.api import FitOptions, fit, predict
    from fewsam.methods.fewshot import FewShotConfig

    fit("fewshot", FitOptions(data="data/acdc", run="runs/fs3", labeled_cases=3), FewShotConfig())
    predict("runs/fs3", "data/acdc", "pred/fs3", split="test.list")
    evaluate("pred/fs3", "data/acdc", split="test.list")["mean"]["dice"]
"""

from __future__ import annotations

import math
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from fewsam.cache import EMBED_LOG, EmbeddingCache
from fewsam.compare import compare_runs
from fewsam.config import (DEFAULT_CACHE, DEFAULT_PRECISION, Config, FitOptions, checked_arguments, field_default,
                           listed, option_name)
from fewsam.data import open_dataset
from fewsam.devices import check_device
from fewsam.distributed import ddp
from fewsam.distributed.ray_jobs import check_workers_have_a_cluster
from fewsam.embedded import fill_cache
from fewsam.errors import DataError, FewsamError
from fewsam.evaluate import evaluate
from fewsam.fitting import open_fit, recorded_path, run_record
from fewsam.inference import kept_line
from fewsam.methods import Method, get_method
from fewsam.models.precision import resolve_precision
from fewsam.models.registry import load_model
from fewsam.predict import check_cache_folder, check_run_outside_data, predict
from fewsam.progress import command_log, record, say_once, tell, with_own_notices
from fewsam.report import write_group_report
from fewsam.runs import TEXT_LOG
from fewsam.train import TrainResult, finished_result

# every command's function: evaluate, compare and report are imported here for a notebook's one import line
__all__ = ["FitOptions", "TrainResult", "compare_runs", "embed_dataset", "evaluate", "fit", "predict",
           "write_group_report"]


@checked_arguments
@with_own_notices
def embed_dataset(data: str | Path, split: str | None = None, model_name: str = "litemedsam",
                  checkpoint: str | Path | None = None, cache_root: str | Path = DEFAULT_CACHE, device: str = "cpu",
                  show_progress: bool = True, precision: str = DEFAULT_PRECISION, ray: str | None = None,
                  ray_workers: int | None = None) -> dict[str, Any]:
    """Fill the cache for every case of ``split`` (all splits when None). Returns hit/miss counts.
    ``ray``: on the Ray cluster at that address, ``ray_workers`` workers (default: one per CPU), into
    the same cache (``fewsam.distributed.ray_jobs``)."""
    check_device(device)
    check_workers_have_a_cluster(ray, ray_workers)
    check_cache_folder(cache_root, data)
    dataset = open_dataset(data)
    ids = dataset.split(split) if split else _all_case_ids(dataset)  # a split that is not there: before the model
    model = load_model(model_name, checkpoint, device=device)
    cache = EmbeddingCache(cache_root, model, resolve_precision(precision, device))
    cache.filling = True
    if ray is not None and cache.read_only:  # each worker would encode what none can keep
        cache._say_read_only()
    # a read-only cache keeps no log: nothing is written into it
    with nullcontext() if cache.read_only else command_log(cache.dir / EMBED_LOG, "embed"):
        if ray is not None:
            from fewsam.distributed.ray_jobs import embed_cases_on_ray

            stats = embed_cases_on_ray(ray, data, ids, cache, checkpoint, device, ray_workers, show_progress)
        else:
            fill_cache(dataset, ids, cache, device, show_progress)
            stats = {"cases": len(ids), "encoded": cache.misses, "cache_hits": cache.hits, "cache": str(cache.dir),
                     "precision": cache.precision.name}
        record(f"done: {stats['cases']} cases, {stats['encoded']} slices encoded, {stats['cache_hits']} found in "
               "the cache")
    return stats


def _all_case_ids(dataset) -> list[str]:
    seen: dict[str, None] = {}
    for name in ("train", "val", "test"):
        try:
            seen.update(dict.fromkeys(dataset.split(name)))
        except DataError:
            continue
    return list(seen)


@checked_arguments
@with_own_notices
def fit(method: str, options: FitOptions, config: Config | None = None) -> TrainResult:
    """Fit ``method`` into ``options.run`` (resumed when it holds the same run; a run that finished is
    left as it is and its outcome read back, ``already_finished``); ``config`` None takes the
    method's defaults, the same as ``fewsam fit METHOD`` with no method options."""
    spec = get_method(method)
    cfg = spec.config() if config is None else config
    check_fit_arguments(spec, options, cfg)
    options = without_unread_options(spec, options)
    check_device(options.device)
    if spec.fit is not None and spec.needs_sam(cfg):  # the same checks as ``fewsam fit``: nothing in the data
        check_cache_folder(options.cache, options.data)
    check_run_outside_data(options.run, options.data)
    # under torchrun: this rank's device; the fit seeds torch's generators, the caller's are given back
    with one_fit_at_a_time(options.run), ddp.distributed_fit(options) as options, \
            callers_torch_generators(options.device):
        if spec.fit is None:
            return _record_only(spec, options, cfg)
        # Locked before the data is opened: a second fit is refused at once (under torchrun rank 0
        # owns the folder and the other ranks use it once prepared).
        with ddp.run_folder(options.run) as folder:
            ctx = open_fit(options, spec.needs_sam(cfg))
            run_dir = folder.prepare({"method": spec.name, **run_record(options, ctx),
                                      **method_sections(spec, cfg, options.seed)},
                                     defaults=method_sections(spec, spec.config(), options.seed))
            if folder.finished:  # the same fit, finished before: said so, and the run is left as it is
                return finished_result(run_dir)
            if ctx.fair is not None:  # rank 0 writes it; a refusal stops every rank
                ddp.from_main(lambda: ctx.fair.save(run_dir))
            with fit_log(run_dir, spec.name):
                result = spec.fit(ctx, cfg, run_dir)
                # named by method: distill's log also holds its own teacher's fit (fewshot finished: ...)
                record(f"{spec.name} finished: best validation score {result.best_score:.4f} at step "
                       f"{result.best_step}, {result.seconds / 60:.1f} min in the training loop")
                kept = kept_line(run_dir) if ddp.is_main() else None
                if kept:
                    record(f"{spec.name} {kept}")
            return result


# Held by the fit at work in this process; re-entered by the fit a fit runs itself (distill's teacher)
_FIT_AT_WORK = threading.RLock()


@contextmanager
def one_fit_at_a_time(run: str | Path) -> Iterator[None]:
    """The fits of one process run one after another: torch's generators are the process's, so two fits on
    two threads (a notebook's, a server's) would draw from one stream, and neither's weights would follow
    from its seed. A fit started while another is at work waits for it, and says so, naming its ``run``: the
    line also reaches the log of the fit at work, which the waiting thread's work shares until it opens its own."""
    if not _FIT_AT_WORK.acquire(blocking=False):
        tell(f"another fit is at work in this process; the fit into {run} waits for it to end (torch's random "
             "numbers are the process's, and each fit's follow from its own seed)")
        _FIT_AT_WORK.acquire()
    try:
        yield
    finally:
        _FIT_AT_WORK.release()


@contextmanager
def callers_torch_generators(device: str) -> Iterator[None]:
    """torch's global generators (the CPU's, and the fit's GPU's) given back as the caller left them when
    the fit returns or fails: the fit seeds them with its own ``seed``, which left a notebook's next
    ``torch.randn`` drawing the same numbers after every fit of that seed (Python's and numpy's global
    generators fewsam never touches)."""
    place = torch.device(device)
    gpus = [torch.cuda.current_device() if place.index is None else place.index] if place.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        yield


def check_fit_arguments(spec: Method, options: Any, cfg: Any) -> None:
    """``fit``'s arguments are of the kinds it reads: a dict of options, a config class rather than one
    of its instances, or the two swapped would otherwise end in an AttributeError from inside the fit."""
    if not isinstance(options, FitOptions):
        raise FewsamError(f"fit takes its data, run and budget as a FitOptions, not a {type(options).__name__}: "
                          f"fit({spec.name!r}, FitOptions(data=..., run=..., labeled_cases=...))")
    if isinstance(cfg, type):
        raise FewsamError(f"{spec.name} takes a {spec.config.__name__} instance, not the class {cfg.__name__}: "
                          f"{spec.config.__name__}() for its defaults")
    if type(cfg) is not spec.config:
        raise FewsamError(f"{spec.name} takes a {spec.config.__name__}, not a {type(cfg).__name__}")


def without_unread_options(spec: Method, options: FitOptions) -> FitOptions:
    """``options`` with those that ``spec``'s fit does not read (``fewsam fit`` offers it none of them) back at
    their defaults, so the run records none, and those given said by name: the command line refuses them, but
    a Python caller may share one FitOptions among methods (one --cache for every arm of a study)."""
    unread = [f for f in fields(FitOptions) if f.metadata.get("cli") and f.name not in spec.fit_options
              and getattr(options, f.name) != field_default(f)]
    if not unread:
        return options
    names = [option_name(f) for f in unread]
    takes = "takes none of them" if len(names) > 1 else "does not take it"
    say_once(f"{listed(names)} {'are' if len(names) > 1 else 'is'} not used: {spec.name} {takes} "
             f"(`fewsam fit {spec.name} --help` lists what it reads)")
    return replace(options, **{f.name: field_default(f) for f in unread})


def method_sections(spec: Method, cfg: Config, seed: int) -> dict[str, Any]:
    """The sections of RUN/config.json that ``cfg`` gives: the method's own and those derived from it."""
    return {spec.name: asdict(cfg), **cfg.derived_record(seed)}


RESUMES_FROM_CHECKPOINT = "the same command resumes from the last checkpoint"


def fit_log(run_dir: Path, method: str) -> AbstractContextManager[Any]:
    """RUN/fit.log (rank 0; the other ranks' lines would repeat its own): ``command_log`` with the fit's
    command, progress, notices and validation scores, and how it ended, so a long fit can be followed and
    read back from its folder; its path goes unsaid, as the folder is the one the user named."""
    if not ddp.is_main():
        return nullcontext()
    return command_log(run_dir / TEXT_LOG, f"fit {method}", say_where=False, after_a_stop=RESUMES_FROM_CHECKPOINT)


def _record_only(spec: Method, options: FitOptions, cfg: Config) -> TrainResult:
    """A method with nothing to train (zero-shot SAM): the run folder records model and config."""
    with ddp.run_folder(options.run) as folder:
        model = load_model(options.model, options.checkpoint)
        folder.prepare({
            "method": spec.name,
            "model": options.model,
            "checkpoint": recorded_path(options.checkpoint),
            "weights_sha256": model.weights_sha256,
            "preprocess": model.preprocess_signature(),
            spec.name: asdict(cfg),
        })
    return TrainResult(best_score=math.nan, best_step=0, steps_run=0, seconds=0.0)
