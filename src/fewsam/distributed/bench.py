"""The measurements behind docs/scaling.md and docs/results.md section 5, reproducible:

    python -m fewsam.distributed.bench ray --data DIR --workers 1 2 --scratch S --json ray.json
        Ray embedding throughput with 1, 2, ... workers (each into an empty cache under S, on a
        local Ray cluster or --address), against a local ``fewsam embed``; bytes per cache entry.
    python -m fewsam.distributed.bench step --data DIR --cache C --method fewshot --json one.json
    torchrun --nproc-per-node 2 -m fewsam.distributed.bench step ... --json two.json [--wrap ddp]
        Seconds per training step of the one loop, in one process or under torchrun (--wrap ddp:
        torch's DistributedDataParallel around the module instead of the loop's own all_reduce),
        from a warm cache; --save keeps the final weights, ``compare`` tells two saves apart.

--json and --save are written atomically, and replace an existing file only with --overwrite, as ``fewsam``'s own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fewsam.distributed import ddp
from fewsam.errors import FewsamError
from fewsam.runs import write_json


def ray_throughput(data: Path, split: str | None, workers: list[int], scratch: Path, address: str,
                   precision: str) -> dict[str, Any]:
    """Encoded slices per second: locally (this process, torch's default threads), then on Ray with
    each worker count, each into an empty cache; and the bytes of one cache entry."""
    import torch

    from fewsam.api import embed_dataset
    from fewsam.distributed.ray_jobs import ray_cluster

    runs: dict[str, Any] = {}
    start = time.perf_counter()
    local = embed_dataset(data, split, cache_root=str(scratch / "local"), show_progress=False, precision=precision)
    runs["local"] = {"threads": torch.get_num_threads(), "encoded": local["encoded"],
                     "seconds": round(time.perf_counter() - start, 2),
                     "encoded_per_second": round(local["encoded"] / (time.perf_counter() - start), 4)}
    with ray_cluster(address) as ray:
        runs["cluster_cpus"] = ray.cluster_resources().get("CPU")
        for n in workers:
            start = time.perf_counter()
            stats = embed_dataset(data, split, cache_root=str(scratch / f"ray{n}"), show_progress=False,
                                  precision=precision, ray=address, ray_workers=n)
            runs[f"ray_{n}"] = {**{k: stats[k] for k in ("workers", "encoded", "seconds", "encoded_per_second")},
                                "seconds_with_worker_start": round(time.perf_counter() - start, 2)}
    sizes = [p.stat().st_size for p in (scratch / "local").rglob("*.npz")]
    runs["bytes_per_entry"] = round(statistics.mean(sizes)) if sizes else None
    return runs


def step_times(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per step of the method's task in the one loop (validation only after the last step)."""
    import torch

    from fewsam.config import FitOptions
    from fewsam.fitting import open_fit
    from fewsam.train import atomic_torch_save, train

    needs_sam = args.method == "fewshot"  # the U-Net students read no cache: it is left at its default for them
    options = FitOptions(run=Path("unused"), data=args.data, precision=args.precision,
                         labeled_slices=args.labeled_slices, show_progress=False,
                         **({"cache": args.cache} if needs_sam else {}))
    with ddp.distributed_fit(options) as options, tempfile.TemporaryDirectory() as tmp:
        ctx = open_fit(options, needs_sam=needs_sam)
        task, cfg = _task(ctx, args, Path(tmp))
        if args.wrap == "ddp":
            _wrap_in_ddp(task, find_unused=args.method == "fewshot")
        stamps: list[float] = []
        train(task, cfg, Path(tmp) / "run", show_progress=False,
              before_step=lambda step: stamps.append(time.perf_counter()))
        steps = [b - a for a, b in zip(stamps, stamps[1:])][2:]  # the first two: warm-up
        rank, size = ddp.world()
        if args.save and rank == 0:
            module = getattr(task.module, "module", task.module)
            atomic_torch_save(module.state_dict(), args.save)
    return {"method": args.method, "wrap": args.wrap, "world_size": size, "global_batch": args.batch_size,
            "steps_timed": len(steps), "seconds_per_step": round(statistics.median(steps), 4),
            "threads_per_process": torch.get_num_threads()}


def _task(ctx: Any, args: argparse.Namespace, folder: Path) -> tuple[Any, Any]:
    """The task and loop config a fit of ``args.method`` would train, without its run folder."""
    import torch

    if args.method == "fewshot":
        from fewsam.embedded import embed_cases
        from fewsam.labels import IGNORE
        from fewsam.methods.fewshot import FewShotConfig, FewShotTask, PrototypeDecoder, build_prompt_bank

        cfg = FewShotConfig(steps=args.steps, val_every=args.steps, views=1, augmented_views=0,
                            batch_size=args.batch_size, ema=0.0)
        samples, shots, tokens = build_prompt_bank(ctx, cfg, folder)
        val = embed_cases(ctx.dataset, ctx.val_ids, ctx.cache, ctx.device, False)
        torch.manual_seed(ctx.seed)
        decoder = PrototypeDecoder(ctx.model, len(ctx.values)).to(ctx.device)
        task = FewShotTask(decoder, samples, shots, cfg, ctx.labelled_loss(IGNORE), tokens, val, ctx.values,
                           ctx.device)
        return task, cfg.train_config(ctx.seed)
    from fewsam.methods.student import build_unet, load_labelled, load_val_cases
    from fewsam.methods.supervised import SupervisedConfig, SupervisedTask

    cfg = SupervisedConfig(steps=args.steps, val_every=args.steps, batch_size=args.batch_size, image_size=128)
    torch.manual_seed(ctx.seed)
    module = build_unet(cfg, len(ctx.values)).to(ctx.device)
    task = SupervisedTask(module, load_labelled(ctx, cfg), cfg, ctx.labelled_loss(None), load_val_cases(ctx),
                          ctx.values, ctx.device)
    return task, cfg.train_config(ctx.seed)


def _wrap_in_ddp(task: Any, find_unused: bool) -> None:
    """torch's DistributedDataParallel in place of the loop's all_reduce: DDP averages the gradients
    during backward (and broadcasts rank 0's buffers), the loop only averages the loss it logs."""
    from torch.nn.parallel import DistributedDataParallel

    import fewsam.train as loop

    task.module = DistributedDataParallel(task.module, find_unused_parameters=find_unused)
    validate = task.validate

    def through_the_bare_module() -> dict[str, float]:
        # DDP's forward must run on every rank in step; rank 0 validating alone through the
        # wrapper aborts with a collective mismatch (gloo), so validation bypasses it.
        wrapped, task.module = task.module, task.module.module
        try:
            return validate()
        finally:
            task.module = wrapped

    task.validate = through_the_bare_module
    averaged = ddp.average_gradients

    def loss_only(module: Any, params: Any, loss: Any) -> float:
        return averaged(module, [], loss) if ddp.world()[1] > 1 else float(loss.detach())

    loop.ddp.average_gradients = loss_only  # type: ignore[attr-defined]


def compare(a: Path, b: Path) -> dict[str, float]:
    """Largest absolute and relative difference between two saved state dicts."""
    import torch

    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    keys = [k for k in x if x[k].is_floating_point()]
    return {"max_abs": max(float((x[k] - y[k]).abs().max()) for k in keys),
            "max_rel": max(float(((x[k] - y[k]).abs() / (y[k].abs() + 1e-6)).max()) for k in keys),
            "bit_identical": all(bool((x[k] == y[k]).all()) for k in x)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fewsam.distributed.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ray = sub.add_parser("ray")
    ray.add_argument("--data", type=Path, required=True)
    ray.add_argument("--split", default=None)
    ray.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ray.add_argument("--scratch", type=Path, required=True)
    ray.add_argument("--address", default="local")
    ray.add_argument("--precision", default="fp32")
    step = sub.add_parser("step")
    step.add_argument("--data", type=Path, required=True)
    step.add_argument("--cache", required=True)
    step.add_argument("--method", choices=("fewshot", "supervised"), default="fewshot")
    step.add_argument("--steps", type=int, default=12)
    step.add_argument("--batch-size", type=int, default=8)
    step.add_argument("--labeled-slices", type=int, default=8)
    step.add_argument("--precision", default="fp32")
    step.add_argument("--wrap", choices=("none", "ddp"), default="none")
    step.add_argument("--save", type=Path, default=None)
    cmp = sub.add_parser("compare")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    step.add_argument("--overwrite", action="store_true", help="Replace an existing --json or --save file.")
    ray.add_argument("--overwrite", action="store_true", help="Replace an existing --json file.")
    for p in (ray, step):
        p.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        check_outputs(args)
        result = measure(args)
    except FewsamError as exc:
        from fewsam.cli import say_user_error

        say_user_error(str(exc), exc)
        raise SystemExit(2) from None
    if ddp.launched_rank() == 0:
        print(json.dumps(result, indent=2))
        if getattr(args, "json", None):
            write_json(args.json, result)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.what == "ray":
        return ray_throughput(args.data, args.split, args.workers, args.scratch, args.address, args.precision)
    if args.what == "step":
        return step_times(args)
    return compare(args.a, args.b)


def check_outputs(args: argparse.Namespace) -> None:
    """--json and --save follow the main command line's rules for output files, checked before minutes of
    measuring: an existing file is replaced only with --overwrite, a dataset's file never; two outputs
    naming one file would leave one of them."""
    from fewsam.cli import check_not_an_input, check_output_file

    outputs = {option: path for option, path in (("--json", getattr(args, "json", None)),
                                                  ("--save", getattr(args, "save", None))) if path is not None}
    if len(outputs) == 2 and Path(outputs["--json"]).absolute() == Path(outputs["--save"]).absolute():
        raise FewsamError(f"--json and --save both name {outputs['--json']}; give each its own file")
    for option, path in outputs.items():
        check_not_an_input(path, option, [], args.data)
        check_output_file(path, option, args.overwrite)


if __name__ == "__main__":
    main()
