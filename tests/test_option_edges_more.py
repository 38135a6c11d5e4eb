"""Options of `fewsam fit` that are judged by the wrong rule, named wrongly, or silently ignored: each is
accepted where it acts, refused with one `error:` line (exit 2) where it cannot, and a run recorded by
an earlier fewsam still resumes with the command that made it."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_fewsam
from fewsam.config import ConfigError


# --- --patience of plain FixMatch (samatch --no-sam) -------------------------------------------------

def test_fixmatch_patience_counts_from_the_first_validation() -> None:
    """--no-sam has no SAM pseudo-labels to ramp up: its plateaus count from the first validation. A
    --patience 1 that stops FixMatch at step 200 of 400 was refused, counting from step 400 (the warm-up and
    ramp of SAM's pseudo-labels), and plateaus were only judged after it."""
    from fewsam.methods.samatch.config import SamMatchConfig

    fixmatch = SamMatchConfig(use_sam=False, steps=400, val_every=100, patience=1)
    assert fixmatch.train_config(0).patience_after == 0
    with pytest.raises(ConfigError, match=r"^--patience 1 can never stop this fit early: .* after step 400 "
                                          r"\(--warmup-steps \+ --ramp-steps\) .* --steps 400 and --val-every 100"):
        SamMatchConfig(steps=400, val_every=100, patience=1)  # SAM-Match itself still waits for its pseudo-labels


def test_fixmatch_patience_that_cannot_stop_is_refused_with_the_numbers(tmp_path: Path) -> None:
    """Two validations (steps 100 and 200) leave no room for a plateau before the last step."""
    result = run_fewsam("fit", "samatch", "--no-sam", "--patience", "1", "--steps", "200", "--val-every", "100",
                        "--out", str(tmp_path / "run"), "--data", str(tmp_path), "--labeled-cases", "1", cwd=tmp_path)
    assert_one_line_error(result, "--patience 1 can never stop this fit early: it stops once 1 validation in a row "
                                  "score no better than the best, and with --steps 200 and --val-every 100 the fit "
                                  "reaches its last step first; lower --val-every to 99 or less, or leave "
                                  "--patience out")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("patience, resumes", [(0, True), (2, False)])
def test_a_fixmatch_run_without_patience_resumes_whatever_step_its_plateaus_counted_from(tmp_path, patience, resumes):
    """Where no --patience is set the step plateaus count from decides nothing: a FixMatch run that recorded
    another one (the ramp of SAM's pseudo-labels) is the same fit and resumes; with --patience it is another."""
    from fewsam.errors import RunError
    from fewsam.runs import prepare_run_dir

    def record(patience_after: int) -> dict:
        return {"method": "samatch", "samatch": {"use_sam": False, "patience": patience},
                "train": {"steps": 400, "patience": patience, "patience_after": patience_after}}

    prepare_run_dir(tmp_path / "run", record(400))
    if resumes:
        assert prepare_run_dir(tmp_path / "run", record(0)) == (tmp_path / "run", True)
    else:
        with pytest.raises(RunError, match=r"train\.patience_after: 400 -> 0"):
            prepare_run_dir(tmp_path / "run", record(0))


# --- a run recorded when the fair options were taken without --fair-attribute ---------------------------

def test_an_unscaled_run_fitted_with_attributes_alone_resumes_with_the_same_command(tmp_path: Path, caplog,
                                                                                   monkeypatch) -> None:
    """A fewsam that took `--attributes TABLE` without --fair-attribute recorded an unscaled fit (config.json
    holds "fair": null, and no table); the same command was then refused before it could resume the run.
    The options are said to be unused and the fit resumes; a new run is refused as before."""
    import json
    import logging

    from typer.testing import CliRunner

    from fewsam import progress
    from fewsam.cli import app
    from fewsam.config import FitOptions
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.runs import MANIFEST

    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    table = tmp_path / "sex.csv"
    table.write_text("case,sex\nphantom_000,F\nphantom_001,M\nphantom_002,F\n")
    run = tmp_path / "run"
    fit = ["fit", "supervised", "--data", str(data), "--labeled-cases", "2", "--steps", "1", "--val-every", "1",
           "--batch-size", "2", "--image-size", "32", "--precision", "fp32", "--quiet", "--out", str(run)]
    assert CliRunner().invoke(app, fit).exit_code == 0  # config.json as the earlier fewsam wrote it
    assert json.loads((run / "config.json").read_text())["fair"] is None
    (run / MANIFEST).unlink()  # as a fit stopped before its end leaves it: resumable
    monkeypatch.setattr(progress, "_said", {})
    with caplog.at_level(logging.INFO, logger="fewsam"):
        resumed = CliRunner().invoke(app, [*fit, "--attributes", str(table)])
    assert resumed.exit_code == 0, resumed.output
    assert "best validation Dice" in resumed.output and (run / MANIFEST).exists()
    assert f"--attributes is not used: {run} holds a fit without --fair-attribute (its loss unscaled), which " \
           "resumes as it was recorded" in caplog.text
    with pytest.raises(ConfigError, match="^--attributes shapes fair scaling on the --fair-attribute column"):
        FitOptions(run=tmp_path / "new", attributes=table)



# --- a loss made non-finite by a loss weight ------------------------------------------------------------

def test_a_loss_weight_that_makes_the_loss_non_finite_is_named(tmp_path: Path) -> None:
    """`fit samatch --no-sam --lambda-u 1e30`: the loss went to NaN and the error told the user to lower --lr or
    check the data, neither of which was at fault."""
    from typer.testing import CliRunner

    from fewsam.cli import app
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.errors import RunError

    data = write_phantom_dataset(tmp_path / "data", n_train=3, n_val=1, slices=2, seed=1)
    fit = ["fit", "samatch", "--no-sam", "--data", str(data), "--labeled-cases", "1", "--steps", "4", "--val-every",
           "4", "--batch-size", "2", "--unlabeled-batch", "2", "--image-size", "32", "--precision", "fp32",
           "--optimizer", "sgd", "--threshold", "0", "--quiet", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*fit, "--lambda-u", "1e30"])
    assert isinstance(result.exception, RunError), result.output
    assert str(result.exception).endswith("nothing of this step was applied. --lambda-u 1e+30 weighs a term of the "
                                          "loss above the default: lower it; else check the data for extreme "
                                          "intensities, or lower --lr")


def test_the_loss_weights_named_are_those_above_their_default() -> None:
    from fewsam.config import raised_loss_weights
    from fewsam.methods.samatch.config import SamMatchConfig

    names = ("lambda_u", "sam_weight")
    assert raised_loss_weights(SamMatchConfig(), names) == []
    assert raised_loss_weights(SamMatchConfig(lambda_u=0.5, sam_weight=20.0), names) == ["--sam-weight 20"]
    assert raised_loss_weights(None, names) == []


# --- fit options a method does not read ------------------------------------------------------------------

def fit_error_lines(args: list[str], capsys) -> list[str]:
    """The stderr lines of `fewsam ARGS` run in this process, which must end in exit code 2."""
    from fewsam.cli import run_app

    with pytest.raises(SystemExit) as stop:
        run_app(args)
    assert stop.value.code == 2
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_supervised_refuses_the_cache_it_never_reads(tmp_path: Path, capsys) -> None:
    """`fit supervised --cache DIR` fitted the U-Net and never opened DIR, with no word said."""
    lines = fit_error_lines(["fit", "supervised", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")],
                            capsys)
    assert lines == ["error: fewsam fit supervised: supervised takes no --cache (it loads no SAM model: its network "
                     "learns from pixels alone, so it has no SAM embeddings to cache); leave it out (see 'fewsam fit "
                     "supervised --help')"]
    assert not (tmp_path / "run").exists()


def method_names() -> list[str]:
    from fewsam.methods import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("name", method_names())
def test_a_fit_option_the_method_does_not_read_is_refused_by_name(name: str, tmp_path: Path, capsys) -> None:
    """The rule for every method: `fit NAME` offers the shared options its fit reads, and one it would ignore
    is refused in one line naming the method and the option; a method that never loads SAM takes none of
    SAM's options (--model, --checkpoint, --cache)."""
    from fewsam.config import FitOptions, cli_fields, cli_flag
    from fewsam.methods import SAM_FIT_OPTIONS, get_method

    method = get_method(name)
    if method.fit is not None and not method.needs_sam(method.config()):
        assert not set(SAM_FIT_OPTIONS) & set(method.fit_options), method.fit_options
    for unread in (f for f in cli_fields(FitOptions) if f.name not in method.fit_options):
        lines = fit_error_lines(["fit", name, cli_flag(unread), "1", "--out", str(tmp_path / "run")], capsys)
        assert len(lines) == 1 and lines[0].startswith(f"error: fewsam fit {name}: {name} takes no "
                                                       f"{cli_flag(unread)} ("), lines
    assert not (tmp_path / "run").exists()


def test_fixmatch_says_the_sam_options_it_was_given_are_not_used(tmp_path: Path, caplog, monkeypatch) -> None:
    """samatch --no-sam keeps SAM's fit options on offer, so that the FixMatch and SAM-Match arms of a study
    share a command line: the fit says which it ignores, --cache included (ignored with no word said)."""
    import logging

    from fewsam import progress
    from fewsam.config import FitOptions
    from fewsam.fitting import say_unused_model
    from fewsam.methods import SAM_FIT_OPTIONS, get_method
    from fewsam.methods.samatch.config import SamMatchConfig

    samatch = get_method("samatch")
    assert not samatch.needs_sam(SamMatchConfig(use_sam=False)) and set(SAM_FIT_OPTIONS) <= set(samatch.fit_options)
    monkeypatch.setattr(progress, "_said", {})
    with caplog.at_level(logging.INFO, logger="fewsam"):
        say_unused_model(FitOptions(run=tmp_path / "run", cache=str(tmp_path / "cache")))
        say_unused_model(FitOptions(run=tmp_path / "run", model="sam_vit_b", checkpoint=tmp_path / "w.pth",
                                    cache=str(tmp_path / "cache")))
    assert caplog.messages == [
        f"--cache {tmp_path / 'cache'} is not used: this fit trains a U-Net on pixels alone and loads no SAM",
        f"--model sam_vit_b --checkpoint {tmp_path / 'w.pth'} --cache {tmp_path / 'cache'} is not used: this fit "
        "trains a U-Net on pixels alone and loads no SAM"]


def test_fixmatch_fits_whatever_its_unused_cache_option_names(tmp_path: Path) -> None:
    """`fit samatch --no-sam --cache FILE`: the FixMatch arm of a study reads no cache, yet the command line
    refused the path as SAM-Match would ("--cache ... is a file"); it fits and says the cache is not used,
    while the SAM-Match arm still refuses it."""
    from typer.testing import CliRunner

    from fewsam.cli import app
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.errors import CacheError

    data = write_phantom_dataset(tmp_path / "data", n_train=3, n_val=1, slices=2, seed=1)
    (tmp_path / "a_file").write_text("not a folder", encoding="utf-8")
    fit = ["fit", "samatch", "--data", str(data), "--labeled-cases", "1", "--steps", "2", "--val-every", "2",
           "--batch-size", "2", "--unlabeled-batch", "2", "--image-size", "32", "--precision", "fp32",
           "--cache", str(tmp_path / "a_file"), "--quiet"]
    result = CliRunner().invoke(app, [*fit, "--no-sam", "--out", str(tmp_path / "fixmatch")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fixmatch" / "checkpoint_best.pt").is_file()
    assert "is not used: this fit trains a U-Net on pixels alone" in (tmp_path / "fixmatch" / "fit.log").read_text(
        encoding="utf-8")
    result = CliRunner().invoke(app, [*fit, "--out", str(tmp_path / "samatch")])
    assert isinstance(result.exception, CacheError) and "is a file; give a folder path" in str(result.exception)
    assert not (tmp_path / "samatch").exists()


# --- method options another option turns off -------------------------------------------------------------

def test_fixmatch_says_the_sam_schedule_it_takes_is_not_used(tmp_path: Path, monkeypatch) -> None:
    """`fit samatch --no-sam --warmup-steps 50 --ramp-steps 50` takes SAM-Match's schedule (one command line for
    both arms of a study), which plain FixMatch has no pseudo-labels for: it was ignored with no word said."""
    from fewsam import api, progress
    from fewsam.config import FitOptions
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.methods.samatch.config import SamMatchConfig

    monkeypatch.setattr(progress, "_said", {})
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    options = FitOptions(data=data, run=tmp_path / "run", labeled_cases=1, precision="fp32", show_progress=False)
    config = SamMatchConfig(use_sam=False, steps=2, val_every=2, batch_size=2, unlabeled_batch=2, image_size=32,
                            warmup_steps=50, ramp_steps=50, lambda_u=0.0, threshold=0.5)
    api.fit("samatch", options, config)
    told = ["--warmup-steps and --ramp-steps are not used: --no-sam (plain FixMatch) has no SAM pseudo-labels to "
            "schedule", "--threshold is not used: --lambda-u 0 turns off the consistency loss it gates, and --no-sam "
            "leaves no SAM prompts for it to pick"]
    assert [line for line in told if line in progress.said()] == told
    log = (tmp_path / "run" / "fit.log").read_text()
    assert all(line in log for line in told)


def test_fewmatch_without_its_consistency_loss_says_which_options_it_leaves_unused(tiny_sam_phantom,
                                                                                   tmp_path: Path) -> None:
    """`fit fewmatch --lambda-u 0 --threshold 0.5 --cutmix 0`: few-shot SAM, which reads neither; and its
    --patience no longer waits for the ramp of a loss that never comes."""
    from fewsam import api, progress
    from fewsam.config import FitOptions
    from fewsam.methods.fewmatch import FewMatchConfig

    options = FitOptions(data=tiny_sam_phantom, run=tmp_path / "run", labeled_cases=1, cache=str(tmp_path / "c"),
                         precision="fp32", show_progress=False)
    config = FewMatchConfig(steps=2, val_every=2, batch_size=2, views=1, test_mirroring=False, sam_refinement=False,
                            lambda_u=0.0, threshold=0.5, cutmix=0.0)
    api.fit("fewmatch", options, config)
    assert ("--threshold and --cutmix are not used: --lambda-u 0 turns the consistency loss off, so this fit is "
            "few-shot SAM on the labelled slices alone") in progress.said()
    assert FewMatchConfig(lambda_u=0.0, patience=2).train_config(0).patience_after == 0
    assert FewMatchConfig(patience=2).train_config(0).patience_after == 150


@pytest.mark.parametrize("name", method_names())
def test_a_python_fit_given_options_its_method_does_not_read_says_so_and_records_none(name: str, tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """`api.fit("supervised", FitOptions(cache=...))` (one FitOptions shared by every arm of a study) ignored
    the cache with no word said; the command line refuses these options by name, the API says them."""
    from fewsam import progress
    from fewsam.api import without_unread_options
    from fewsam.config import FitOptions, cli_fields, field_default, option_name
    from fewsam.methods import get_method

    monkeypatch.setattr(progress, "_said", {})
    given = {"data": tmp_path, "labeled_cases": 1, "val_split": "test", "seed": 3, "model": "sam_vit_b",
             "checkpoint": tmp_path / "w.pth", "cache": str(tmp_path / "c"), "device": "cuda", "precision": "fp32",
             "fair_attribute": "sex", "fair_gamma": 2.0, "fair_bins": "bmi:25", "attributes": tmp_path / "a.csv"}
    options = FitOptions(run=tmp_path / "run", **given)
    method = get_method(name)
    kept = without_unread_options(method, options)
    unread = [f for f in cli_fields(FitOptions) if f.name not in method.fit_options]
    assert all(getattr(kept, f.name) == field_default(f) for f in unread)
    assert all(getattr(kept, option) == getattr(options, option) for option in method.fit_options)
    flags = [option_name(f) for f in unread if f.name in given]
    if not flags:
        assert kept == options and progress.said() == []
        return
    takes = "takes none of them" if len(flags) > 1 else "does not take it"  # not "takes no it"
    assert len(progress.said()) == 1 and progress.said()[0].startswith(flags[0]), progress.said()
    assert all(flag in progress.said()[0] for flag in flags)
    assert progress.said()[0].endswith(f"not used: {name} {takes} (`fewsam fit {name} --help` lists what "
                                       "it reads)")
