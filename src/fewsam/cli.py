"""The ``fewsam`` command line: thin wrappers over the API; user mistakes end in one line, exit 2."""

from __future__ import annotations

import json
import os
import time
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console

from fewsam.errors import FewsamError

if TYPE_CHECKING:
    from fewsam.api import FitOptions

_STARTED = time.perf_counter()
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Label-efficient and fair Segment Anything for medical images.")
fit_app = typer.Typer(no_args_is_help=True, help="Fit a method; writes a run folder.")
app.add_typer(fit_app, name="fit")
out = Console()
err = Console(stderr=True)

DEFAULT_CACHE = "~/.cache/fewsam"

ModelOpt = typer.Option("litemedsam", "--model", help="litemedsam | sam_vit_b | sam_vit_l | sam_vit_h | medsam")
CheckpointOpt = typer.Option(None, "--checkpoint", help="Weights file (required for SAM/MedSAM).")
CacheOpt = typer.Option(DEFAULT_CACHE, "--cache", help="Embedding cache folder.")
DeviceOpt = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N")
QuietOpt = typer.Option(False, "--quiet", help="No progress bars.")
DataOpt = typer.Option(..., "--data", help="Dataset folder.")
RunOutOpt = typer.Option(..., "--out", help="Run folder to write (resumed if it holds the same run).")
LabeledCasesOpt = typer.Option(None, "--labeled-cases", help="First N subjects of the budget order.")
LabeledSlicesOpt = typer.Option(None, "--labeled-slices", help="First K slices of the budget order.")
ValSplitOpt = typer.Option("val", "--val-split", help="Split used for model selection.")
SeedOpt = typer.Option(0, "--seed", help="Seed: same seed, same data -> same weights.")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("fewsam_demo"), "--out", help="Folder for data, run, predictions, overlays."),
    device: str = DeviceOpt,
    cache: str = CacheOpt,
    steps: int = typer.Option(80, help="Decoder fine-tuning steps."),
    quiet: bool = QuietOpt,
) -> None:
    """Few-shot SAM on a generated cardiac-like phantom: fit from 2 labelled slices, predict, score."""
    from fewsam.demo import run_demo

    result = run_demo(out_dir, device=device, cache_root=cache, steps=steps, show_progress=not quiet)
    out.print(f"[bold]few-shot LiteMedSAM on the phantom[/] ({result['n_val']} validation volumes)")
    for name, metrics in result["per_class"].items():
        out.print(f"  {name:>6}: Dice {metrics['dice']:.3f}")
    out.print(f"  mean  : Dice {result['mean']['dice']:.3f}")
    out.print(f"overlays: {result['overlays']}")


@app.command()
def embed(
    data: Path = DataOpt,
    split: Optional[str] = typer.Option(None, "--split", help="train | val | test | a list file; default all."),
    model: str = ModelOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    cache: str = CacheOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Fill the embedding cache for a dataset (resumable: finished slices are never re-encoded)."""
    from fewsam.api import embed_dataset

    stats = embed_dataset(data, split, model, checkpoint, cache, device, show_progress=not quiet)
    out.print(json.dumps(stats))


def _report_fit(result, run: Path) -> None:
    """The fit's outcome, with the command's wall time and peak memory (the figures a user plans by)."""
    import resource

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    minutes = (time.perf_counter() - _STARTED) / 60
    out.print(f"best validation Dice {result.best_score:.4f} at step {result.best_step}; run in {run}")
    out.print(f"wall time {minutes:.1f} min, peak memory {peak_gib:.2f} GiB")


@fit_app.command("fewshot")
def fit_fewshot(
    data: Path = DataOpt,
    run: Path = RunOutOpt,
    labeled_cases: Optional[int] = LabeledCasesOpt,
    labeled_slices: Optional[int] = LabeledSlicesOpt,
    steps: int = typer.Option(400, help="Training steps (batches)."),
    lr: float = typer.Option(3e-4, help="AdamW learning rate."),
    batch_size: int = typer.Option(8, "--batch-size"),
    tokens_per_class: int = typer.Option(2, "--tokens-per-class", help="Prototype tokens per class."),
    shot_dropout: float = typer.Option(0.5, "--shot-dropout", help="Fraction of shots left out per step."),
    views: int = typer.Option(8, "--views", min=1, max=8, help="Dihedral views encoded per labelled slice."),
    ema: float = typer.Option(0.99, "--ema", min=0.0, max=0.9999,
                              help="Decay of a moving average of the weights, validated and kept (0: off)."),
    val_split: str = ValSplitOpt,
    val_every: int = typer.Option(50, "--val-every"),
    fair_attribute: Optional[str] = typer.Option(None, "--fair-attribute", help="Group column for fair scaling."),
    fair_gamma: float = typer.Option(1.0, "--fair-gamma"),
    fair_bins: Optional[str] = typer.Option(None, "--bins", help="Bins of a continuous fair attribute, e.g. bmi:25,30."),
    attributes: Optional[Path] = typer.Option(None, "--attributes", help="CSV of group attributes by case/patient id."),
    seed: int = SeedOpt,
    model: str = ModelOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    cache: str = CacheOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Few-shot SAM: prototype prompts from the labelled slices; only the mask decoder is trained."""
    from fewsam.api import fit_fewshot_run
    from fewsam.methods.fewshot import FewShotConfig
    from fewsam.train import TrainConfig

    opts = _fit_options(locals())
    result = fit_fewshot_run(opts, TrainConfig(steps=steps, lr=lr, val_every=val_every, ema=ema),
                             FewShotConfig(tokens_per_class=tokens_per_class, shot_dropout=shot_dropout,
                                           batch_size=batch_size, views=views))
    _report_fit(result, run)


@fit_app.command("prompted")
def fit_prompted(
    run: Path = typer.Option(..., "--out", help="Run folder to write."),
    prompt: str = typer.Option("box", "--prompt", help="points | box (taken from the labels at predict time)."),
    box_margin: float = typer.Option(0.0, "--box-margin", help="Pixels added around the tight box."),
    model: str = ModelOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
) -> None:
    """Zero-shot SAM with oracle point or box prompts (the papers' comparison baselines)."""
    from fewsam.api import fit_prompted_run

    fit_prompted_run(run, prompt, box_margin, model, checkpoint)
    out.print(f"recorded zero-shot SAM ({prompt} prompts) in {run}")


def _fit_options(params: dict[str, Any]) -> "FitOptions":
    """FitOptions from a fit command's parameters: the data, budget, model and fairness options all share."""
    from fewsam.api import FitOptions

    shared = {f.name: params[f.name] for f in fields(FitOptions) if f.name in params}
    shared["labeled_cases"] = _labelled_budget(params["labeled_cases"], params.get("labeled_images"))
    return FitOptions(**shared, show_progress=not params["quiet"])


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    """A clear one-line error (no traceback) for a rule option outside its choices."""
    if value not in choices:
        raise FewsamError(f"{option} must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")


def _labelled_budget(labeled_cases: Optional[int], labeled_images: Optional[int]) -> Optional[int]:
    """--labeled-images (2D datasets: one image is one case) is an alias of --labeled-cases."""
    if labeled_cases is not None and labeled_images is not None:
        raise FewsamError("give --labeled-cases or --labeled-images, not both")
    return labeled_cases if labeled_images is None else labeled_images


LabeledImagesOpt = typer.Option(None, "--labeled-images", help="Alias of --labeled-cases for 2D image datasets.")
ImageSizeOpt = typer.Option(256, "--image-size", help="Student U-Net input (slices resized to SxS).")
FairAttributeOpt = typer.Option(None, "--fair-attribute", help="Group column for fair error-bound scaling.")
FairGammaOpt = typer.Option(1.0, "--fair-gamma", help="Fair scaling gamma (0 = unscaled loss).")
FairBinsOpt = typer.Option(None, "--bins", help="Bins of a continuous fair attribute, e.g. bmi:25,30.")
AttributesOpt = typer.Option(None, "--attributes", help="CSV of group attributes by case/patient id.")
StudentOptimizerOpt = typer.Option("adamw", "--optimizer",
                                   help="Student optimiser: adamw (lr 1e-3, weight average 0.99; converges in CPU-"
                                        "length runs) or sgd (the paper's: lr 0.01, no average; ~30k-step runs).")
StudentLrOpt = typer.Option(None, "--lr", help="Student learning rate, poly decay (default: the optimiser's).")
StudentEmaOpt = typer.Option(None, "--ema", min=0.0, max=0.9999,
                             help="Decay of a moving average of the student's weights, 0: off (default: the "
                                  "optimiser's).")


@fit_app.command("supervised")
def fit_supervised(
    data: Path = DataOpt,
    run: Path = RunOutOpt,
    labeled_cases: Optional[int] = LabeledCasesOpt,
    labeled_slices: Optional[int] = LabeledSlicesOpt,
    labeled_images: Optional[int] = LabeledImagesOpt,
    steps: int = typer.Option(2000, help="Training steps (batches)."),
    lr: Optional[float] = StudentLrOpt,
    optimizer: str = StudentOptimizerOpt,
    ema: Optional[float] = StudentEmaOpt,
    batch_size: int = typer.Option(8, "--batch-size"),
    image_size: int = ImageSizeOpt,
    val_split: str = ValSplitOpt,
    val_every: int = typer.Option(200, "--val-every"),
    fair_attribute: Optional[str] = FairAttributeOpt,
    fair_gamma: float = FairGammaOpt,
    fair_bins: Optional[str] = FairBinsOpt,
    attributes: Optional[Path] = AttributesOpt,
    seed: int = SeedOpt,
    cache: str = CacheOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """A 2D U-Net on the labelled slices only: the lower bound for SAM-Match."""
    from fewsam.api import fit_supervised_run

    opts = _fit_options(locals())
    result = fit_supervised_run(opts, steps=steps, lr=lr, val_every=val_every, optimizer=optimizer, ema=ema,
                                student={"image_size": image_size, "batch_size": batch_size})
    _report_fit(result, run)


@fit_app.command("samatch")
def fit_samatch(
    data: Path = DataOpt,
    run: Path = RunOutOpt,
    labeled_cases: Optional[int] = LabeledCasesOpt,
    labeled_slices: Optional[int] = LabeledSlicesOpt,
    labeled_images: Optional[int] = LabeledImagesOpt,
    no_sam: bool = typer.Option(False, "--no-sam", help="Plain FixMatch: no SAM pseudo-labels (the Match baseline)."),
    unlabeled_limit: Optional[int] = typer.Option(None, "--unlabeled-limit",
                                                  help="Seeded subset of the unlabelled pool (SAM encodes each once)."),
    steps: int = typer.Option(2000, help="Student training steps."),
    lr: Optional[float] = StudentLrOpt,
    optimizer: str = StudentOptimizerOpt,
    ema: Optional[float] = StudentEmaOpt,
    batch_size: int = typer.Option(8, "--batch-size", help="Labelled slices per step."),
    unlabeled_batch: int = typer.Option(8, "--unlabeled-batch", help="Unlabelled slices per step."),
    image_size: int = ImageSizeOpt,
    threshold: float = typer.Option(0.95, "--threshold", help="FixMatch / prompt confidence threshold."),
    warmup_steps: int = typer.Option(200, "--warmup-steps", help="Student steps before the first SAM refresh."),
    refresh_every: int = typer.Option(200, "--refresh-every", help="Steps between SAM pseudo-label refreshes."),
    ramp_steps: int = typer.Option(200, "--ramp-steps", help="Ramp-up of the SAM pseudo-label loss weight."),
    sam_weight: float = typer.Option(1.0, "--sam-weight", help="Final weight of the SAM pseudo-label loss."),
    box_margin: float = typer.Option(10.0, "--box-margin", help="Pixels around prompt boxes (10 ACDC, 30 BUSI)."),
    sam_steps: int = typer.Option(200, "--sam-steps", help="SAM decoder fine-tuning steps on ground-truth boxes."),
    sam_lr: float = typer.Option(1e-4, "--sam-lr"),
    sam_round_steps: int = typer.Option(50, "--sam-round-steps",
                                        help="SAM steps per refresh learning from the student (0: SAM fixed)."),
    sam_unlabeled_weight: float = typer.Option(0.25, "--sam-unlabeled-weight",
                                               help="Weight of the student-labelled slices in SAM's rounds."),
    background: str = typer.Option("mean", "--background",
                                   help="With --overlap argmax: background = 1 - mean or 1 - max class probability."),
    prompt_region: str = typer.Option("argmax", "--prompt-region",
                                      help="Prompt box around the largest 'confident' or 'argmax' component."),
    overlap: str = typer.Option("smaller", "--overlap",
                                help="Overlapping SAM masks: 'argmax' of probabilities or 'smaller' mask wins."),
    unprompted: str = typer.Option("ignore", "--unprompted",
                                   help="Pixels of classes SAM was not prompted for: 'ignore' or 'background'."),
    prompt_clicks: str = typer.Option("positive", "--prompt-clicks",
                                      help="Clicks besides each box: positive (the region's deepest pixel; "
                                           "tells nested anatomy apart), none (box only) or contrast "
                                           "(+ negatives on the other structures)."),
    val_split: str = ValSplitOpt,
    val_every: int = typer.Option(200, "--val-every"),
    fair_attribute: Optional[str] = FairAttributeOpt,
    fair_gamma: float = FairGammaOpt,
    fair_bins: Optional[str] = FairBinsOpt,
    attributes: Optional[Path] = AttributesOpt,
    seed: int = SeedOpt,
    model: str = ModelOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    cache: str = CacheOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """SAM-Match: FixMatch student + SAM-refined pseudo-labels from its confident predictions."""
    from fewsam.api import fit_samatch_run

    if refresh_every < 1:
        raise FewsamError("--refresh-every must be at least 1")
    _check_choice("--background", background, ("mean", "max"))
    _check_choice("--prompt-region", prompt_region, ("confident", "argmax"))
    _check_choice("--overlap", overlap, ("argmax", "smaller"))
    _check_choice("--prompt-clicks", prompt_clicks, ("none", "positive", "contrast"))
    _check_choice("--unprompted", unprompted, ("ignore", "background"))
    opts = _fit_options(locals())
    samatch = {"use_sam": not no_sam, "threshold": threshold, "unlabeled_batch": unlabeled_batch,
               "unlabeled_limit": unlabeled_limit, "sam_weight": sam_weight, "warmup_steps": warmup_steps,
               "refresh_every": refresh_every, "ramp_steps": ramp_steps, "box_margin": box_margin,
               "sam_steps": sam_steps, "sam_lr": sam_lr, "background": background,
               "prompt_region": prompt_region, "overlap": overlap, "unprompted": unprompted,
               "prompt_clicks": prompt_clicks, "sam_round_steps": sam_round_steps,
               "sam_unlabeled_weight": sam_unlabeled_weight}
    result = fit_samatch_run(opts, steps=steps, lr=lr, val_every=val_every, optimizer=optimizer, ema=ema,
                             student={"image_size": image_size, "batch_size": batch_size}, samatch=samatch)
    _report_fit(result, run)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run folder written by `fewsam fit`."),
    data: Path = DataOpt,
    split: Optional[str] = typer.Option(None, "--split", help="List file relative to DATA, or train|val|test."),
    pred: Path = typer.Option(..., "--out", help="Prediction folder to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow writing into a non-empty folder."),
    refine_with_sam: bool = typer.Option(False, "--refine-with-sam",
                                         help="SAM-Match runs: the student's confident regions prompt the run's "
                                              "SAM, as for its pseudo-labels (encodes the slices, cached)."),
    refine_if_better: bool = typer.Option(False, "--refine-if-better",
                                          help="SAM-Match runs: refine only if it beats the student on the run's "
                                               "validation cases (decided once, RUN/refinement.json)."),
    cache: str = CacheOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Write one prediction per case, in the case's own format, mirroring its relative path."""
    from fewsam.predict import predict as run_predict

    written = run_predict(run, data, pred, split, cache, device, overwrite, not quiet, refine_with_sam,
                          refine_if_better)
    if refine_if_better:
        _print_refinement_choice(run)
    out.print(f"wrote {len(written)} predictions to {pred}")


def _print_refinement_choice(run: Path) -> None:
    from fewsam.methods.sam_refine import REFINEMENT

    choice = json.loads((run / REFINEMENT).read_text())
    verdict = "refined by SAM" if choice["refine"] else "student alone"
    out.print(f"{verdict}: validation Dice student {choice['val_dice_student']:.4f}, "
              f"refined {choice['val_dice_refined']:.4f} ({choice['cases']} cases; {run / REFINEMENT})")


@app.command()
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Prediction folder."),
    data: Path = DataOpt,
    split: Optional[str] = typer.Option(None, "--split"),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="Attribute column for group metrics."),
    alpha: float = typer.Option(1.0, "--alpha", help="Equity-scaling alpha."),
    bins: Optional[str] = typer.Option(None, "--bins", help="Bin a continuous --group-by column, e.g. bmi:25,30."),
    attributes: Optional[Path] = typer.Option(None, "--attributes", help="CSV of group attributes by case/patient id."),
    es_mode: str = typer.Option("sum", "--es-mode", help="Equity spread: sum (paper) | std."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result JSON here."),
    quiet: bool = QuietOpt,
) -> None:
    """Dice, IoU, HD95, ASD per class and case (and ES-Dice / ES-IoU per group)."""
    from fewsam.evaluate import evaluate as run_evaluate
    from fewsam.runs import write_json

    result = run_evaluate(pred, data, split, group_by, alpha, not quiet, bins=bins, attributes=attributes,
                          es_mode=es_mode)
    if json_out:
        write_json(json_out, result)
    _print_summary(result)


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="Evaluation JSON of run A."),
    run_b: Path = typer.Argument(..., help="Evaluation JSON of run B (same cases)."),
    metric: str = typer.Option("dice", "--metric", help="dice | iou | hd95 | asd (per-case mean over classes)."),
    n_comparisons: int = typer.Option(1, "--n-comparisons", help="Bonferroni factor: comparisons made in all."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the test result JSON here."),
) -> None:
    """Paired Wilcoxon signed-rank test between two runs' per-case scores."""
    from fewsam.compare import compare_runs, describe
    from fewsam.runs import write_json

    result = compare_runs(run_a, run_b, metric, n_comparisons)
    if json_out:
        write_json(json_out, result)
    out.print(describe(result), highlight=False)


@app.command()
def report(
    evaluations: list[Path] = typer.Argument(..., help="Evaluation JSON(s); two = before/after fair scaling."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for report.md, report.html and plots."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated run names (default: file names)."),
    title: str = typer.Option("fewsam group report", "--title"),
) -> None:
    """Markdown + HTML report: per-group Dice with 95% CIs, ES-Dice, worst-group gap, per-class tables."""
    from fewsam.report import write_group_report

    names = [x.strip() for x in labels.split(",")] if labels else None
    paths = write_group_report(evaluations, out_dir, names, title)
    out.print(f"wrote {paths['markdown']} and {paths['html']}")


@app.command()
def bench(
    data: Path = typer.Option(..., "--data", help="Dataset folder (e.g. ../shared/data/acdc)."),
    n: int = typer.Option(8, "-n", help="Slices to encode."),
    cache: Path = typer.Option(Path("bench_cache"), "--cache", help="A scratch cache folder (emptied)."),
    device: str = DeviceOpt,
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Measure encoder s/slice, cache-hit s/slice and decoder step/inference times on this machine."""
    from fewsam.bench import run_bench
    from fewsam.runs import write_json

    result = run_bench(data, n, cache, device)
    if json_out:
        write_json(json_out, result)
    out.print(json.dumps(result, indent=2))


def _print_summary(result: dict) -> None:
    mean = result["mean"]
    out.print(f"{result['n_cases']} cases  mean Dice {mean['dice']:.4f}  IoU {mean['iou']:.4f}  "
              f"HD95 {_fmt(mean.get('hd95'))}  ASD {_fmt(mean.get('asd'))} ({result['distance_unit']})")
    for name, m in result["per_class"].items():
        out.print(f"  {name:>10}: Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  HD95 {_fmt(m.get('hd95'))}")
    if "es_dice" in result:
        _print_groups(result)


def _print_groups(result: dict) -> None:
    for name, g in result["groups"].items():
        lo, hi = g["ci95"]["dice"] or (None, None)
        out.print(f"  {result['group_by']}={name}: n {g['n']}  Dice {_fmt4(g['mean']['dice'])} "
                  f"[{_fmt4(lo)}, {_fmt4(hi)}]  IoU {_fmt4(g['mean']['iou'])}", highlight=False)
    out.print(f"ES-Dice {_fmt4(result['es_dice'])}  ES-IoU {_fmt4(result['es_iou'])}  "
              f"worst-group gap {_fmt4(result['worst_group_gap'])} (alpha {result['alpha']}, {result['es_mode']})")
    if result["missing_group"]:
        out.print(f"{result['missing_group']} case(s) have no {result['group_by']!r} value: counted in the "
                  "overall scores, in no group (listed in the JSON as missing_group_cases)")


def _fmt4(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


ALLOCATOR_TUNING = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


def _tune_allocator() -> None:
    """Re-exec once with glibc's allocator tuned: 2-3x faster on SAM's large activations (PLATFORM.md).

    It must be set before the process starts, hence the re-exec; FEWSAM_NO_REEXEC=1 opts out.
    """
    if os.environ.get("GLIBC_TUNABLES") or os.environ.get("FEWSAM_NO_REEXEC") or os.name != "posix":
        return
    env = dict(os.environ, GLIBC_TUNABLES=ALLOCATOR_TUNING)
    os.execve(sys.executable, [sys.executable, "-m", "fewsam", *sys.argv[1:]], env)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    _tune_allocator()
    try:
        app(prog_name="fewsam")  # standalone: click reports usage errors itself (exit 2)
    except FewsamError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        err.print("interrupted; run the same command again to resume")
        raise SystemExit(130)
