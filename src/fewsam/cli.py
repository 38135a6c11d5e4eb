"""The ``fewsam`` command line: thin wrappers over the API; user mistakes end in one line, exit 2."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
try:  # typer from 0.2x on carries its own copy of click; earlier ones use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_errors
from typer.core import TyperGroup

from fewsam.allocator import ALLOCATOR_TUNING
from fewsam.config import _CLI_NAMES, FitOptions, cli_fields, cli_names, field_default, flag_name
from fewsam.data.attributes import DEFAULT_BINS
from fewsam.devices import check_device
from fewsam.errors import FewsamError, Stopped, resource_failure_message
from fewsam.errors import raise_stopped_on_signals as _stop_on_signals  # tests running commands in-process skip it
from fewsam.info import DEFAULT_SPLIT
from fewsam.methods import REGISTRY, Method, get_method
from fewsam.progress import PYTHON_CALLER_NOTICES, record

_STARTED = time.perf_counter()


def _flags_without_a_type() -> None:
    """Help lists an on/off flag bare (``--overwrite``), not as ``--overwrite <bool>``: typer 0.29
    shows every option's type, and "<bool>" reads as if the flag took a value (``--overwrite true``),
    which the flag refuses."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "bare_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and self.metavar is None else shown(self, ctx)

    display_type_rich.bare_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_a_type()
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Label-efficient and fair Segment Anything for medical images.")
# Results carry the user's paths, class and group names: printed as they are (no rich markup, so
# "[/b]" in a path is text, not a tag; no emoji codes, so ":ok:" in a path or a --ray address is
# not printed as an emoji) and unwrapped, so a piped line (embed's JSON) stays one line.
out = Console(markup=False, emoji=False, soft_wrap=True)
err = Console(stderr=True, emoji=False)


def print_error(message: str) -> None:
    """The one ``error:`` line on stderr; the message is text (a path may hold "[/b]" or "[bold]")."""
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from fewsam import __version__
        out.print(f"fewsam {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print fewsam's version and exit.")) -> None:
    """Label-efficient and fair Segment Anything for medical images."""
    token = cli_names()  # messages name options by their flags while the command runs
    ctx.call_on_close(lambda: _CLI_NAMES.reset(token))


def default_is(help: str, default: str) -> str:
    """Help that states a default typer cannot show (a None that means something), in typer's own
    "[default: ...]" form (escaped: help is rich markup)."""
    return f"{help} \\[default: {default}]"


def field_help(f: Any) -> str:
    """A config field's help, with what its None default means (``option(none_means=...)``) in typer's
    "[default: ...]" form, as fit and the other commands show it alike."""
    none_means = f.metadata.get("none_means")
    return f.metadata["help"] if none_means is None else default_is(f.metadata["help"], none_means)


def shared_option(name: str) -> Any:
    """The typer option of ``FitOptions.<name>``: commands other than fit share its default and help."""
    f = FitOptions.__dataclass_fields__[name]
    return typer.Option(... if f.metadata.get("required") else field_default(f),
                        f.metadata.get("flag") or flag_name(name), help=field_help(f))


ModelOpt = shared_option("model")
CheckpointOpt = shared_option("checkpoint")
CacheOpt = shared_option("cache")
DeviceOpt = shared_option("device")
DataOpt = shared_option("data")
PrecisionOpt = shared_option("precision")
QuietOpt = typer.Option(False, "--quiet", help="No progress bars (or progress lines, when not on a terminal).")
RayOpt = typer.Option(None, "--ray", help=default_is(
    "Spread the cases over a Ray cluster: auto (the one `ray start` made here), local (a new one on this "
    "machine) or HOST:PORT. The cache, data (and run, --out) must be on a filesystem every node mounts. "
    "Needs pip install 'fewsam\\[ray]'.", "off, this process alone"))
RayWorkersOpt = typer.Option(None, "--ray-workers", min=1, help=default_is(
    "Ray workers (one CPU each, one GPU with --device cuda).", "one per CPU (GPU) of the cluster"))
SplitHelp = default_is("List file relative to DATA, or train|val|test.", DEFAULT_SPLIT)
DEFAULT_BINS_SPEC = " and ".join(f"{b.column}:{','.join(f'{e:g}' for e in b.edges)}" for b in DEFAULT_BINS.values())


def check_cache(cache: str, data: Path | str | None = None) -> None:
    """--cache must be a folder fewsam can write, or an existing one it can read, outside DATA
    (``predict.check_cache_folder``), checked up front."""
    from fewsam.predict import check_cache_folder

    check_cache_folder(cache, data)


def check_folder(path: Path, option: str) -> None:
    """A folder option (fit's and demo's --out) must not name a file and must be writable."""
    from fewsam.atomic import check_folder_path

    check_folder_path(path, option)


def check_output_file(path: Path | None, option: str, overwrite: bool) -> None:
    """A file option (--json) must not name a folder, and replaces an existing file only with --overwrite."""
    from fewsam.atomic import check_path_can_be_made

    if path is None:
        return
    check_path_can_be_made(path, option, FewsamError, "file")
    if path.is_dir():
        raise FewsamError(f"{option} {path} is a folder; give a file path, e.g. {path / 'result.json'}")
    if path.exists() and not overwrite:
        raise FewsamError(f"{option} {path} exists; choose another {option} or pass --overwrite to replace it")
    refuse_a_run_file(path, option)
    existing = next(p for p in path.absolute().parents if p.exists())  # the folder it goes in, or its nearest parent
    if not existing.is_dir():
        raise FewsamError(f"{option} {path}: {existing} is a file, not a folder; give another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FewsamError(f"{option} {path}: {existing} is read-only; give another {option}")


def write_output_json(path: Path, result: Any, overwrite: bool, option: str = "--json") -> None:
    """Write a command's result JSON. Without --overwrite no file is replaced, also one made while the
    command ran (``check_output_file`` looked before it started): two evaluations started at once into one
    --json, or a file the user put there meanwhile, are not silently replaced by the one that ends last."""
    from fewsam.runs import write_json

    try:
        write_json(path, result, replace=overwrite)
    except FileExistsError:
        raise FewsamError(f"{option} {path} was made by something else while this command ran, and it was not "
                          f"replaced; choose another {option} or pass --overwrite to replace it") from None


def refuse_a_run_file(path: Path, option: str) -> None:
    """A fitted run's own files (config.json, checkpoints, logs, manifest) are never an output, even with
    --overwrite: an evaluation written over RUN/config.json would leave a run no command can read."""
    from fewsam.runs import CONFIG, FIT_FILES, holds_a_run

    if path.name in (CONFIG, *FIT_FILES) and holds_a_run(path.parent):
        raise FewsamError(f"{option} {path} is a file of the fewsam run {path.parent}; writing there would break "
                          f"the run: give another {option}")


def check_not_an_input(path: Path | None, option: str, inputs: list[Path], data: Path | None = None) -> None:
    """An output file must not be one of the command's own inputs, even with --overwrite (compare's
    --json naming one of the evaluations it reads, evaluate's naming the dataset's split list): that
    input would be lost. Every file under ``data``, the dataset folder, counts as an input, and a new one
    there is refused too: fewsam writes nothing into a user's data, and a file of a name the dataset's
    reader looks for (``classes.json``, ``index.csv``, ``splits_final.json``) would change the dataset."""
    from fewsam.atomic import check_path_can_be_made, inside_data

    if path is not None:
        check_path_can_be_made(path, option, FewsamError, "file")  # first: a name too long fails every look at it
    if path is not None and not path.exists() and inside_data(path, data):
        raise FewsamError(f"{option} {path} is in the dataset {data}; fewsam writes nothing into your data: give "
                          f"another {option} outside {data}")
    if path is None or not path.exists():
        return
    same = next((p for p in inputs if p is not None and p.exists() and p.samefile(path)), None)
    if same is not None:
        raise FewsamError(f"{option} {path} is the input {same}; writing there would replace it: give another "
                          f"{option}")
    if data is not None and data.is_dir() and path.resolve().is_relative_to(data.resolve()):
        what = "is the dataset folder" if path.resolve() == data.resolve() else f"is in the dataset {data}"
        raise FewsamError(f"{option} {path} {what}; writing there would replace it: give "
                          f"another {option} outside {data}")


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

    check_device(device)
    check_cache(cache)
    check_folder(out_dir, "--out")
    result = run_demo(out_dir, device=device, cache_root=cache, steps=steps, show_progress=not quiet)
    out.print(f"[bold]few-shot LiteMedSAM on the phantom[/] ({result['n_val']} validation volumes)", markup=True)
    for name, metrics in result["per_class"].items():
        out.print(f"  {name:>6}: Dice {metrics['dice']:.3f}")
    out.print(f"  mean  : Dice {result['mean']['dice']:.3f}")
    out.print(f"overlays: {result['overlays']}")


@app.command()
def embed(
    data: Path = DataOpt,
    split: Optional[str] = typer.Option(None, "--split", help=default_is(
        "train | val | test | a list file.", "every case of train, val and test")),
    model: str = ModelOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    cache: str = CacheOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    ray: Optional[str] = RayOpt,
    ray_workers: Optional[int] = RayWorkersOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Fill the embedding cache for a dataset (resumable: finished slices are never re-encoded)."""
    from fewsam.api import embed_dataset

    check_device(device)
    check_cache(cache, data)
    check_ray(ray, ray_workers)
    stats = embed_dataset(data, split, model, checkpoint, cache, device, show_progress=not quiet, precision=precision,
                          ray=ray, ray_workers=ray_workers)
    out.print(json.dumps(stats))


def check_ray(ray: str | None, workers: int | None) -> None:
    """--ray-workers sizes a Ray job: without --ray it would be silently ignored; a --ray address where
    no cluster listens is named before any work starts."""
    from fewsam.distributed.ray_jobs import check_cluster_reachable, check_workers_have_a_cluster

    check_workers_have_a_cluster(ray, workers)
    if ray is not None:  # before the model loads: an address nothing answers at is refused in seconds
        check_cluster_reachable(ray)


def _report_fit(result, run: Path) -> None:
    """The fit's outcome, with the command's wall time and peak memory (the figures a user plans by);
    under torchrun from rank 0 alone."""
    import resource

    from fewsam.distributed import launched_rank
    from fewsam.inference import kept_line

    if launched_rank() != 0:
        return
    if result.already_finished:
        out.print(f"{run} holds this fit, finished already (best validation Dice {result.best_score:.4f} at step "
                  f"{result.best_step}): nothing was changed; to fit again, delete {run} or choose another --out")
        return
    if result.steps_run == 0:
        out.print(f"recorded the run in {run} (nothing to train)")
        return
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    minutes = (time.perf_counter() - _STARTED) / 60
    out.print(f"best validation Dice {result.best_score:.4f} at step {result.best_step}; run in {run}")
    kept = kept_line(Path(run))
    if kept:
        out.print(kept)
    out.print(f"wall time {minutes:.1f} min, peak memory {peak_gib:.2f} GiB")


def _cli_parameter(f: Any, hints: dict[str, Any]) -> inspect.Parameter:
    """A typer option for config field ``f``: its default, help and spelling come from the field."""
    default = ... if f.metadata.get("required") else field_default(f)
    info = typer.Option(default, f.metadata.get("flag") or flag_name(f.name), help=field_help(f))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=hints[f.name])


def fit_parameters(method: Method) -> tuple[list[inspect.Parameter], list[str]]:
    """The options of ``fewsam fit METHOD``: its ``FitOptions`` fields, then its config's fields."""
    shared = [f for f in cli_fields(FitOptions) if f.name in method.fit_options]
    own = cli_fields(method.config)
    clash = {f.name for f in shared} & {f.name for f in own}
    if clash:
        raise TypeError(f"{method.config.__name__} redefines fit options {sorted(clash)}")
    hints = {**typing.get_type_hints(FitOptions), **typing.get_type_hints(method.config)}
    params = [_cli_parameter(f, hints) for f in shared + own]
    quiet = inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=QuietOpt, annotation=bool)
    return params + [quiet], [f.name for f in shared]


def fit_command(name: str) -> Any:
    """``fewsam fit NAME`` as a click command, its options generated from FitOptions and the method's config."""
    method = get_method(name)
    params, shared = fit_parameters(method)

    def command(**values: Any) -> None:
        from fewsam.api import fit

        if "device" in values:
            check_device(values["device"])
        check_folder(values["run"], "--out")
        show_progress = not values.pop("quiet")
        options = FitOptions(**{k: values.pop(k) for k in shared}, show_progress=show_progress)
        config = method.config(**values)
        if "cache" in shared and method.needs_sam(config):  # a U-Net alone (--no-sam) reads no cache
            check_cache(options.cache, options.data)
        _report_fit(fit(name, options, config), options.run)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    single = typer.Typer(add_completion=False)
    single.command(name, help=method.summary)(command)
    return typer.main.get_command(single)


class FitGroup(TyperGroup):
    """``fewsam fit``: one subcommand per registered method, built (and its module imported) on demand."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(REGISTRY)

    def get_command(self, ctx: typer.Context, name: str) -> Any:
        return fit_command(name) if name in REGISTRY else None


fit_app = typer.Typer(cls=FitGroup, no_args_is_help=True, help="Fit a method; writes a run folder.")
app.add_typer(fit_app, name="fit")

@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run folder written by `fewsam fit`."),
    data: Path = DataOpt,
    split: Optional[str] = typer.Option(None, "--split", help=SplitHelp),
    pred: Path = typer.Option(..., "--out", help="Prediction folder to write (not inside the dataset's folders)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow writing into a non-empty folder of earlier "
                                                              "predictions: same-named ones are replaced, other "
                                                              "files kept."),
    refine_with_sam: bool = typer.Option(False, "--refine-with-sam",
                                         help="SAM-Match runs: the student's confident regions prompt the run's "
                                              "SAM, as for its pseudo-labels (encodes the slices, cached)."),
    refine_if_better: bool = typer.Option(False, "--refine-if-better",
                                          help="SAM-Match runs: refine only if it beats the student on the run's "
                                               "validation cases (decided once, RUN/refinement.json)."),
    cache: str = CacheOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    save_probabilities: bool = typer.Option(False, "--save-probabilities",
                                            help="Also write each case's class probabilities beside its prediction: "
                                                 "<name>.probabilities.npz, (C, D, H, W) float16, background first."),
    rtstruct: bool = typer.Option(False, "--rtstruct",
                                  help="DICOM series: also write each prediction as an RT structure set for "
                                       "radiotherapy planning systems, <case>.rtstruct.dcm (an ROI per class)."),
    ray: Optional[str] = RayOpt,
    ray_workers: Optional[int] = RayWorkersOpt,
    no_resume: bool = typer.Option(False, "--no-resume", help="Start afresh: discard the cases a stopped predict "
                                                              "into --out finished (taken up by default)."),
    quiet: bool = QuietOpt,
) -> None:
    """Write one prediction per case, in the case's own format, mirroring its relative path."""
    from fewsam.predict import predict as run_predict

    if refine_with_sam and refine_if_better:
        raise FewsamError("choose one: --refine-with-sam (always) or --refine-if-better (decided on validation)")
    check_device(device)
    check_ray(ray, ray_workers)
    refine = "always" if refine_with_sam else "if-better" if refine_if_better else "never"
    written = run_predict(run, data, pred, split, cache, device, overwrite, show_progress=not quiet, refine=refine,
                          precision=precision, ray=ray, ray_workers=ray_workers, save_probabilities=save_probabilities,
                          resume=not no_resume, rtstruct=rtstruct)
    if refine_if_better:
        _print_refinement_choice(run)
    out.print(f"wrote {len(written)} prediction{'' if len(written) == 1 else 's'} to {pred}")


def _print_refinement_choice(run: Path) -> None:
    from fewsam.methods.samatch.refine import REFINEMENT, recorded_refinement

    choice = recorded_refinement(run)  # predict has just decided (again, if it was damaged) and written it
    verdict = "refined by SAM" if choice["refine"] else "student alone"
    out.print(f"{verdict}: validation Dice student {choice['val_dice_student']:.4f}, "
              f"refined {choice['val_dice_refined']:.4f} ({choice['cases']} cases; {run / REFINEMENT})")


@app.command()
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Prediction folder."),
    data: Path = DataOpt,
    split: Optional[str] = typer.Option(None, "--split", help=SplitHelp),
    group_by: Optional[str] = typer.Option(None, "--group-by", help=default_is(
        "Attribute column for group metrics (`fewsam info DATA` lists them).", "none, no group metrics")),
    alpha: float = typer.Option(1.0, "--alpha", help="Equity-scaling alpha."),
    bins: Optional[str] = typer.Option(None, "--bins", help=default_is(
        "Bin a continuous --group-by column, e.g. bmi:25,30; a value that is not a number is an error.",
        f"{DEFAULT_BINS_SPEC}; other columns grouped by value")),
    attributes: Optional[Path] = typer.Option(None, "--attributes", help=default_is(
        "CSV of group attributes by case/patient id.", "only the attributes found with the data")),
    es_mode: str = typer.Option("sum", "--es-mode", help="Equity spread: sum (paper) | std."),
    both_empty: str = typer.Option("perfect", "--both-empty", help="A class absent from both prediction and label: "
                                   "perfect (Dice 1, HD95 0; BraTS) | skip (left out of the means; nnU-Net)."),
    annotated_slices_only: bool = typer.Option(False, "--annotated-slices-only", help="Score each case on the "
                                               "slices its label annotates (volumes annotated on some slices only)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=default_is("Write the result JSON here.",
                                                                            "not written")),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file (never an input)."),
    quiet: bool = QuietOpt,
) -> None:
    """Dice, IoU, HD95, ASD per class and case (and ES-Dice / ES-IoU per group)."""
    from fewsam.evaluate import check_json_beside_predictions, evaluate as run_evaluate

    check_not_an_input(json_out, "--json", [attributes], data)
    check_json_beside_predictions(json_out, pred)
    check_output_file(json_out, "--json", overwrite)
    result = run_evaluate(pred, data, split, group_by, alpha, not quiet, bins=bins, attributes=attributes,
                          es_mode=es_mode, both_empty=both_empty, annotated_slices_only=annotated_slices_only)
    if json_out:
        write_output_json(json_out, result, overwrite)
    _print_summary(result)


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="Evaluation JSON of run A."),
    run_b: Path = typer.Argument(..., help="Evaluation JSON of run B (same cases)."),
    metric: str = typer.Option("dice", "--metric", help="dice | iou | hd95 | asd (per-case mean over classes)."),
    n_comparisons: int = typer.Option(1, "--n-comparisons", help="Bonferroni factor: comparisons made in all."),
    json_out: Optional[Path] = typer.Option(None, "--json", help=default_is("Write the test result JSON here.",
                                                                            "not written")),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file (never an input)."),
) -> None:
    """Paired Wilcoxon signed-rank test between two runs' per-case scores."""
    from fewsam.compare import compare_runs, describe

    check_not_an_input(json_out, "--json", [run_a, run_b])
    check_output_file(json_out, "--json", overwrite)
    result = compare_runs(run_a, run_b, metric, n_comparisons)
    if json_out:
        write_output_json(json_out, result, overwrite)
    out.print(describe(result), highlight=False)


@app.command()
def report(
    evaluations: list[Path] = typer.Argument(..., help="Evaluation JSON(s); two = before/after fair scaling."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for report.md, report.html and plots."),
    labels: Optional[str] = typer.Option(None, "--labels", help=default_is("Comma-separated run names.",
                                                                            "the JSON file names")),
    title: str = typer.Option("fewsam group report", "--title", help="The report's heading."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow writing into a non-empty --out: the "
                                                              "report's files (an earlier report's plots "
                                                              "included) are replaced, other files kept."),
) -> None:
    """Markdown + HTML report: per-group Dice with 95% CIs, ES-Dice, worst-group gap, per-class tables."""
    from fewsam.report import write_group_report

    names = [x.strip() for x in labels.split(",")] if labels else None
    paths = write_group_report(evaluations, out_dir, names, title, overwrite)
    out.print(f"wrote {paths['markdown']} and {paths['html']}")


@app.command()
def bench(
    data: Path = typer.Option(..., "--data", help="Dataset folder (e.g. data/acdc)."),
    n: int = typer.Option(8, "-n", help="Slices to encode."),
    cache: Path = typer.Option(Path("bench_cache"), "--cache", help="A new or empty scratch cache folder "
                                                                     "(removed at the end)."),
    device: str = DeviceOpt,
    json_out: Optional[Path] = typer.Option(None, "--json", help=default_is("Write the figures as JSON here.",
                                                                            "not written")),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file."),
    quiet: bool = QuietOpt,
) -> None:
    """Measure the default precision against --precision fp32 side by side (encoder s/slice, decoder and
    student training steps, peak memory), and cache-hit, inference and fit times, on this machine; each
    measurement is said on stderr as it begins."""
    from fewsam.bench import run_bench

    check_device(device)
    _check_scratch_cache(cache, data)
    check_not_an_input(json_out, "--json", [], data)
    check_output_file(json_out, "--json", overwrite)
    result = run_bench(data, n, cache, device, show_progress=not quiet)
    if json_out:
        write_output_json(json_out, result, overwrite)
    out.print(json.dumps(result, indent=2))


def _check_scratch_cache(cache: Path, data: Path) -> None:
    """bench deletes its --cache folder: refuse one that holds anything (it may be the user's), or that
    lies in the dataset it reads (``check_cache``)."""
    if cache.exists() and not cache.is_dir():
        raise FewsamError(f"--cache {cache} is a file; bench needs a new or empty scratch folder")
    from fewsam.bench import left_by_a_bench

    if cache.is_dir() and any(cache.iterdir()) and not left_by_a_bench(cache):  # a killed bench's is removed
        raise FewsamError(f"--cache {cache} is not empty and bench deletes its scratch cache; give a new folder")
    check_cache(str(cache), data)


@app.command()
def info(
    data: Optional[Path] = typer.Argument(None, metavar="DATA", help="Dataset folder (or --data DATA, as the other "
                                                                      "commands take it)."),
    data_option: Optional[Path] = typer.Option(None, "--data", help=default_is("Dataset folder, in place of DATA.",
                                                                               "DATA")),
    attributes: Optional[Path] = typer.Option(None, "--attributes", help=default_is(
        "CSV of group attributes by case/patient id.", "only the attributes found with the data")),
    json_out: Optional[Path] = typer.Option(None, "--json", help=default_is("Also write it as JSON here.",
                                                                            "not written")),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file (never an input)."),
) -> None:
    """What fewsam sees in DATA: layout, classes and their coding, splits with case and slice counts,
    group attributes, and the splits fit/predict/evaluate use by default. Loads no model."""
    from fewsam.info import dataset_info, describe

    data = one_data_folder(data, data_option)
    check_not_an_input(json_out, "--json", [attributes], data)
    check_output_file(json_out, "--json", overwrite)
    result = dataset_info(data, attributes)
    if json_out:
        write_output_json(json_out, result, overwrite)
    out.print(describe(result), highlight=False, markup=False, soft_wrap=True)


def one_data_folder(data: Path | None, data_option: Path | None) -> Path:
    """``fewsam info DATA`` or ``fewsam info --data DATA``: every other command, and the hint for a folder
    inside a dataset ("give the dataset's root: --data ROOT"), spell it as an option."""
    if data is not None and data_option is not None:
        raise FewsamError("give the dataset folder once: as DATA or as --data, not both")
    if data is None and data_option is None:
        raise FewsamError("say which dataset to describe: fewsam info DATA (or --data DATA)")
    return data if data is not None else data_option


@app.command()
def studio(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder to label (any layout fewsam reads)."),
    project: Optional[Path] = typer.Option(None, "--project", help=default_is(
        "Folder for the labels, fits, predictions and exports (never inside the dataset).",
        "DATA-studio beside the dataset; with --demo, fewsam_studio_demo")),
    port: int = typer.Option(8765, "--port", help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any non-loopback address (e.g. "
                                                         "0.0.0.0) requires the random token printed at start."),
    demo: bool = typer.Option(False, "--demo", help="Label a generated cardiac phantom (written into the project)."),
    device: str = DeviceOpt,
    cache: str = CacheOpt,
) -> None:
    """Label the few shots in a browser, fit, see predictions, correct, repeat (a local web app)."""
    from fewsam.studio.server import run_studio

    if device != "cpu":  # cpu is always there; checking costs a torch import the server otherwise avoids
        check_device(device)
    run_studio(data, project, host=host, port=port, demo=demo, device=device, cache=cache)


def _print_summary(result: dict) -> None:
    """The scores, with the cases each class's HD95 leaves out: HD95 and ASD have no value where a
    prediction or label is empty, and are averaged over the other cases, so a run that predicted
    nothing in a case printed the HD95 of its other cases alone (0.00 for perfect ones) unremarked.
    The cases whose distances are in another unit than the summary's (pixels beside mm) are counted
    apart: the distances are over the others (``metrics.summarise``)."""
    mean, left_out = result["mean"], result.get("distance_cases_left_out") or 0
    other = f"; {left_out} case(s) in pixels left out" if left_out else ""
    out.print(f"{result['n_cases']} cases  mean Dice {_fmt4(mean['dice'])}  IoU {_fmt4(mean['iou'])}  "
              f"HD95 {_fmt(mean.get('hd95'))}  ASD {_fmt(mean.get('asd'))} ({result['distance_unit']}{other})")
    measured = " in " + result["distance_unit"] if left_out else ""
    for name, m in result["per_class"].items():
        missing, n = m.get("hd95_missing") or 0, result["n_cases"] - left_out
        empty = _why_no_distance(missing, min(missing, m.get("dice_missing") or 0))
        without = ("" if not missing else f" over {n - missing} of {n} cases{measured} ({empty})" if missing < n
                   else f" ({empty})")
        out.print(f"  {name:>10}: Dice {_fmt4(m['dice'])}  IoU {_fmt4(m['iou'])}  HD95 {_fmt(m.get('hd95'))}{without}")
    if "es_dice" in result:
        _print_groups(result)


def _why_no_distance(missing: int, absent: int) -> str:
    """Why ``missing`` cases have no HD95: an empty prediction or label, or (``--both-empty skip``, ``absent``
    of them, which have no Dice either) the class in neither, left out of every mean as nnU-Net does."""
    reasons = [f"{missing - absent} with an empty prediction or label"] if missing > absent else []
    if absent:
        reasons.append(f"{absent} with the class in neither prediction nor label, left out by --both-empty skip")
    return "; ".join(reasons)


def _print_groups(result: dict) -> None:
    for name, g in result["groups"].items():
        lo, hi = g["ci95"]["dice"] or (None, None)
        out.print(f"  {result['group_by']}={name}: n {g['n']}  Dice {_fmt4(g['mean']['dice'])} "
                  f"[{_fmt4(lo)}, {_fmt4(hi)}]  IoU {_fmt4(g['mean']['iou'])}", highlight=False)
    out.print(f"ES-Dice {_fmt4(result['es_dice'])}{_interval(result.get('es_dice_ci95'))}  "
              f"ES-IoU {_fmt4(result['es_iou'])}  worst-group gap {_fmt4(result['worst_group_gap'])}"
              f"{_interval(result.get('worst_group_gap_ci95'))} (alpha {result['alpha']}, {result['es_mode']})")
    if len(result["groups"]) == 1:
        out.print(f"every case with a {result['group_by']!r} value is in group {next(iter(result['groups']))!r}: "
                  "ES-Dice, ES-IoU and the worst-group gap compare two groups or more")
    if result["missing_group"]:
        out.print(f"{result['missing_group']} case(s) have no {result['group_by']!r} value: counted in the "
                  "overall scores, in no group and not in ES-Dice / ES-IoU (listed in the JSON as "
                  "missing_group_cases)")


def _interval(ci: list[float] | None) -> str:
    """A 95% interval as " [lo, hi]" to follow its estimate, or nothing where there is none (fewer than two
    groups, or a group of one subject). Three decimals: a fourth of a bootstrap percentile is noise, and
    the summary line stays short enough to read at a glance."""
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _fmt4(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _tune_allocator() -> None:
    """Re-exec once with glibc's allocator tuned (``ALLOCATOR_TUNING``, fewsam/allocator.py says why).

    It must be set before the process starts, hence the re-exec; FEWSAM_NO_REEXEC=1 opts out.
    """
    if os.environ.get("GLIBC_TUNABLES") or os.environ.get("FEWSAM_NO_REEXEC") or os.name != "posix":
        return
    env = dict(os.environ, GLIBC_TUNABLES=ALLOCATOR_TUNING)
    os.execve(sys.executable, [sys.executable, "-m", "fewsam", *sys.argv[1:]], env)


def _sleep_idle_threads() -> None:
    """Let idle OpenMP threads sleep instead of spinning (before torch loads: libgomp reads this
    once). fewsam's CPU jobs often share a machine with other jobs; spinning threads then take cores
    from the busy ones (the student's and decoder's steps measured faster under load, docs/results.md,
    section 4.1). OMP_WAIT_POLICY set by the user wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _show_notes() -> None:
    """fewsam's notes (e.g. which encoder precision this host gets) as plain lines on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("fewsam")
    logger.removeHandler(PYTHON_CALLER_NOTICES)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _warnings_to_log() -> None:
    """Python warnings of the libraries fewsam reads with (Pillow's "Corrupt EXIF data" of a damaged TIFF,
    nibabel's and pydicom's) go to the command's log, not to stderr: each printed two lines there (its
    source line too), above the one ``error:`` line a user's mistake ends in and among the lines of a
    command that succeeds. What a warning means for the user's data, fewsam's readers say themselves.
    ``-W error`` and ``PYTHONWARNINGS`` still decide which warnings are raised."""

    def kept(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        record(f"{filename}:{lineno}: {category.__name__}: {message}")

    warnings.showwarning = kept


def usage_error_line(exc: click_errors.UsageError, args: list[str] | None = None) -> str:
    """A usage mistake (unknown option, a value of the wrong kind, a missing argument) as the one
    line every other user mistake gets, with where the command's help is. Click's parser raises an
    option given without its value before any command context exists, so the command is then read
    from ``args``: the user is sent to the help that lists that option."""
    command = exc.ctx.command_path if exc.ctx is not None else command_typed(args or [])
    message = not_for_this_method(exc, command) or " ".join(exc.format_message().split())
    return f"{command}: {message} (see '{command} --help')"


def command_typed(args: list[str]) -> str:
    """The command path the arguments name (``fewsam fit fewshot``), as far as they name one."""
    words = ["fewsam"]
    names = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    if args and args[0] in names:
        words.append(args[0])
        if args[0] == "fit" and len(args) > 1 and args[1] in REGISTRY:
            words.append(args[1])
    return " ".join(words)


def command_options(words: list[str]) -> frozenset[str] | None:
    """The options of the command ``words`` name (``["predict"]``, ``["fit", "fewshot"]``, as
    :func:`command_typed` finds them), so an error line advises only what that command takes; None
    where they name no command that runs (none, or ``fit`` without a method)."""
    found: Any = typer.main.get_command(app)
    for word in words:
        found = found.get_command(typer.Context(found), word)
    if not words or isinstance(found, TyperGroup):
        return None
    return frozenset(option for param in found.params for option in param.opts)


def not_for_this_method(exc: click_errors.UsageError, command: str) -> str | None:
    """A fit option the method does not take (``fit supervised --model``), said as such: click's own
    line guessed at a near spelling ("No such option: --model (Possible options: --help)"), as if the
    user had mistyped an option that other methods take as they wrote it."""
    words = command.split()
    if not isinstance(exc, click_errors.NoSuchOption) or len(words) != 3 or words[1] != "fit" \
            or words[2] not in REGISTRY:
        return None
    method = get_method(words[2])
    offered = {f.metadata.get("flag") or flag_name(f.name): f.name for f in cli_fields(FitOptions)}
    name = offered.get(exc.option_name)
    if name is None or name in method.fit_options:
        return None
    why = ("it fits nothing: it records the model, and SAM is prompted at predict time" if method.fit is None
           else "it loads no SAM model: its network learns from pixels alone" +
           (", so it has no SAM embeddings to cache" if name == "cache" else ""))
    return f"{method.name} takes no {exc.option_name} ({why}); leave it out"


def expand_home(args: list[str]) -> list[str]:
    """Arguments with a leading ``~`` (or ``--option=~``) turned into the home folder, as the shell
    does for unquoted words: a quoted ``--out "~/runs"`` would otherwise make a folder named ``~``
    in the working directory, while ``--data "~/data"`` found the user's data."""
    def expanded(arg: str) -> str:
        option, sep, value = arg.partition("=")
        if arg.startswith("--") and sep and value.startswith("~"):
            return f"{option}={os.path.expanduser(value)}"
        return os.path.expanduser(arg) if arg.startswith("~") else arg
    return [expanded(a) for a in args]


PATH_TEXT_OPTIONS = ("cache", "teacher")  # folders typed as text (a cache "DIR", a run folder), paths all the same
SPLIT_OPTIONS = ("split", "val_split", "unlabeled_split")  # a split's name or a list file's path


def refuse_empty_paths(args: list[str]) -> None:
    """An empty value given to a path option or argument (``--out "$OUT"`` with the variable unset) is
    a usage error naming it: as a path it reads as "." (the working folder), where predictions, a report
    or a run would be written, or data read, that the user never named. So is an empty split (``--split
    "$SPLIT"``), which read as the option left out: the default split was scored, unsaid. The words are
    parsed as the command will parse them; any other mistake in them is left for the command to say."""
    command: Any = typer.main.get_command(app)
    rest = list(args)
    while True:
        ctx = typer.Context(command)
        try:
            opts, rest, _ = command.make_parser(ctx).parse_args(args=rest)
        except click_errors.UsageError:
            return
        if not isinstance(command, TyperGroup):
            break
        command = command.get_command(ctx, rest[0]) if rest else None
        if command is None:
            return
        rest = rest[1:]
    for param in command.params:
        given = opts.get(param.name)
        values = given if isinstance(given, (list, tuple)) else [given]
        empty = [v for v in values if isinstance(v, str) and not v.strip()]
        name = max(param.opts, key=len) if param.param_type_name == "option" else param.name.upper()
        if empty and _takes_a_path(param):
            raise click_errors.UsageError(f"{name} is empty ({empty[0]!r}); give a path (an empty one would "
                                          "mean the working folder)")
        if empty and param.name in SPLIT_OPTIONS:
            raise click_errors.UsageError(f"{name} is empty ({empty[0]!r}); give a split (train, val, test, ...) "
                                          "or a list file, or leave the option out for its default")


def _takes_a_path(param: Any) -> bool:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return param.name in PATH_TEXT_OPTIONS or annotation is Path or typing.get_args(annotation) == (Path,)


def run_app(args: list[str] | None = None) -> None:
    """The CLI with click's usage errors reported as one ``error:`` line (exit 2) instead of
    click's multi-line panel; help with no arguments and ``typer.Exit`` codes pass as click has them."""
    try:
        refuse_empty_paths(sys.argv[1:] if args is None else args)
        code = app(args=expand_home(sys.argv[1:] if args is None else args), prog_name="fewsam",
                   standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # help already printed by the group
        raise SystemExit(exc.exit_code) from None
    except click_errors.UsageError as exc:
        print_error(usage_error_line(exc, sys.argv[1:] if args is None else args))
        raise SystemExit(2) from None
    except click_errors.ClickException as exc:
        print_error(exc.format_message())
        raise SystemExit(exc.exit_code) from None
    except typer.Abort as exc:
        ended = exc.__cause__ or exc.__context__
        if isinstance(ended, EOFError):  # click turns an EOFError of the command into a bare "Aborted!"
            print_error(f"a file ended before its data did ({ended or 'EOFError'}): one of the files this command "
                        "read is truncated or empty; check the files it names (--data, the run, --cache)")
            raise SystemExit(2) from None
        err.print("Aborted!", highlight=False)
        raise SystemExit(1) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


# a checkpoint or the embedding cache keeps their work; demo resumes its phantom and its fit in --out (predict,
# which keeps its finished cases beside --out, says so with what it kept: ``Stopped.kept``)
RESUMABLE_COMMANDS = ("fit", "embed", "demo")


def stopped_message(stop: Stopped, argv: list[str]) -> str:
    """What a command stopped by Ctrl-C or SIGTERM says: fit, embed, demo and predict pick up where
    they stopped, except a fit stopped before its first checkpoint, whose new run folder was removed and
    which can only start again from the cached embeddings, and a predict stopped before its first case
    was written, which kept no prediction, only the embeddings it encoded where its run encodes any (a run
    on SAM, not a U-Net student: ``Stopped.encodes``), which its next run reads back; the studio, which is
    stopped this way, keeps every saved label; the others kept nothing partial and start over."""
    command = next((a for a in argv[1:] if not a.startswith("-")), "")
    if stop.written is not None:  # the stop came as the finished outputs moved in, which completed first
        return (f"{stop.how} as the command ended: {stop.written} holds its whole output, nothing is left to do "
                "(the same command again needs --overwrite)")
    if command == "studio":
        return f"{stop.how}; the studio stopped, its saved labels are kept: run the same command again to go on"
    log = "" if stop.log is None else f"; its log: {stop.log}"
    if stop.kept is not None:  # a predict's finished cases, kept beside --out
        return f"{stop.how}; {stop.kept}{log}"
    if command == "predict" and stop.encodes:  # stopped before its first case; hours of encoding are kept
        return (f"{stop.how}; no prediction was written (the folder is written whole, at the end), but the "
                f"embeddings encoded so far are kept in the cache: the same command again encodes only the rest{log}")
    if command == "predict":  # stopped before its first case of a run that encodes nothing
        return (f"{stop.how}; no prediction was written (the folder is written whole, at the end): run the same "
                f"command again to start over{log}")
    if command in RESUMABLE_COMMANDS and stop.run_removed:
        return (f"{stop.how}; nothing was fitted yet, so the run folder was removed (any embeddings computed so far "
                "are kept in the cache): run the same command again to start the fit")
    if command in RESUMABLE_COMMANDS:
        return f"{stop.how}; run the same command again to resume"
    return f"{stop.how}; nothing partial was kept: run the same command again to start over"


DATA_PARALLEL_COMMANDS = ("fit",)  # the commands that share one job over torchrun's processes (scaling.md)


class NotDataParallel(FewsamError):
    """A command other than fit started by torchrun: said once, by rank 0."""

    def __init__(self, message: str, rank: int) -> None:
        super().__init__(message)
        self.rank = rank


def check_launch(argv: list[str]) -> None:
    """Under torchrun (WORLD_SIZE > 1) only ``fit`` splits its work over the processes. Any other
    command would run whole in each of them: ``predict`` and ``report`` raced N copies into one
    folder (all but one then failed with "filled by something else"), ``embed`` encoded every slice N
    times. Refused before anything runs."""
    from fewsam.distributed.ddp import launch_env

    command = next((a for a in argv[1:] if not a.startswith("-")), "")
    try:
        launch = launch_env()
    except FewsamError:  # not torchrun's values: fit names them, the other commands do not read them
        return
    if launch is None or not command or command in DATA_PARALLEL_COMMANDS:
        return
    spread = ", or with --ray to spread its cases over processes" if command in ("embed", "predict") else ""
    raise NotDataParallel(f"fewsam {command} runs as one process, but was started as one of {launch.world_size} "
                          f"(WORLD_SIZE={launch.world_size}, as torchrun sets it), each of which would do all of "
                          f"it; only fit runs data-parallel under torchrun: run {command} without torchrun{spread}",
                          launch.rank)


def _rank_of(exc: BaseException) -> int:
    """The torchrun rank of this process (0 on its own, or where torchrun's values cannot be read)."""
    if isinstance(exc, NotDataParallel):
        return exc.rank
    from fewsam.distributed.ddp import launch_env

    try:
        launch = launch_env()
    except FewsamError:
        return 0
    return 0 if launch is None else launch.rank


def say_user_error(message: str, exc: BaseException) -> None:
    """The one ``error:`` line (a user's mistake, a full disk, memory run out). Under torchrun every rank
    meets the mistake and exits 2: rank 0 alone prints it, and each rank leaves it in the error file
    torchrun names (TORCHELASTIC_ERROR_FILE), from which ``python -m fewsam.distributed.launch`` says it
    when rank 0 did not stop on it."""
    if _rank_of(exc) == 0:
        print_error(message)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file and os.environ.get("WORLD_SIZE"):
        try:
            from fewsam.atomic import atomic_write_bytes

            atomic_write_bytes(error_file, json.dumps({"message": message, "timestamp": int(time.time())}).encode())
        except OSError:  # the error line was printed; the file only repeats it for the launcher
            pass


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks of its own
    _sleep_idle_threads()
    _tune_allocator()
    _show_notes()
    _warnings_to_log()
    _stop_on_signals()
    try:
        check_launch(sys.argv)
        run_app()
    except FewsamError as exc:
        say_user_error(str(exc), exc)
        raise SystemExit(2)
    except Stopped as stop:
        if _rank_of(stop) == 0:  # torchrun stops every rank (Ctrl-C, or a peer that failed): rank 0 says it
            err.print(stopped_message(stop, sys.argv), highlight=False, soft_wrap=True)  # one line, as error: lines
        raise SystemExit(128 + stop.signum)
    except (OSError, MemoryError, RuntimeError) as exc:
        words = command_typed(sys.argv[1:]).split()[1:]  # ["fit", "fewshot"], ["predict"], or none
        message = resource_failure_message(exc, words[0] if words else None, command_options(words))
        if message is None:
            raise
        say_user_error(message, exc)
        raise SystemExit(2)
