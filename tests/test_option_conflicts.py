"""Fit, evaluate and launch options that conflict, are silently ignored, or are out of range: each is
refused with one `error:` line (exit 2) before any work, and a run recorded before a check existed
still loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_fewsam
from fewsam.config import ConfigError


def test_patience_that_cannot_stop_the_fit_is_refused_before_any_work(tmp_path: Path) -> None:
    """--patience 3 with --val-every >= --steps: too few validations for a plateau to ever end the fit,
    which ran every step with no word said."""
    result = run_fewsam("fit", "fewshot", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "none"),
                        "--labeled-cases", "1", "--steps", "100", "--val-every", "100", "--patience", "3",
                        cwd=tmp_path)
    assert_one_line_error(result, "--patience 3 can never stop this fit early")
    assert "lower --val-every to 24 or less" in result.stderr
    assert not (tmp_path / "run").exists()


def test_patience_counts_from_the_warm_up_of_semi_supervised_fits() -> None:
    """FewMatch and SAM-Match judge a plateau only after --warmup-steps + --ramp-steps: a patience that
    fits the steps but not after the ramp is as idle; one that can stop is accepted."""
    from fewsam.methods.fewmatch import FewMatchConfig
    from fewsam.methods.fewshot import FewShotConfig
    from fewsam.methods.supervised import SupervisedConfig

    with pytest.raises(ConfigError, match=r"after step 150 \(--warmup-steps \+ --ramp-steps\)"):
        FewMatchConfig(steps=300, val_every=50, patience=3)
    with pytest.raises(ConfigError, match="give more --steps"):
        SupervisedConfig(steps=3, val_every=1, patience=2)
    assert FewMatchConfig(steps=400, val_every=50, patience=3).patience == 3  # can stop at step 350
    assert FewShotConfig(steps=101, val_every=25, patience=3).patience == 3  # can stop at step 100
    # a run recorded before the check still predicts and resumes
    assert FewShotConfig.from_json({"steps": 100, "val_every": 100, "patience": 3}).patience == 3


def test_box_margin_with_point_prompts_is_refused(tmp_path: Path) -> None:
    """`fit prompted --prompt points --box-margin 5` recorded a margin no prompt used."""
    from fewsam.methods.prompted import PromptedConfig

    result = run_fewsam("fit", "prompted", "--out", str(tmp_path / "run"), "--prompt", "points",
                        "--box-margin", "5", cwd=tmp_path)
    assert_one_line_error(result, "--box-margin widens the box prompt, and --prompt points draws no box")
    assert not (tmp_path / "run").exists()
    assert PromptedConfig(prompt="box", box_margin=5).box_margin == 5
    assert PromptedConfig.from_json({"prompt": "points", "box_margin": 5.0}).prompt == "points"  # older runs


def test_a_user_error_under_torchrun_is_said_by_rank_0_and_left_for_the_launcher(monkeypatch, capsys, tmp_path):
    """Every rank meets a missing --data folder: each printed the same error line. Now rank 0 alone says
    it, every rank exits 2, and each leaves it in torchrun's error file for the launcher."""
    import json

    from conftest import main_raising
    from fewsam.errors import DataError

    monkeypatch.setattr("sys.argv", ["fewsam", "fit", "fewshot"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, printed in (("1", []), ("0", ["error: data folder x does not exist"])):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / f"error{rank}.json"))
        code, lines = main_raising(monkeypatch, capsys, DataError("data folder x does not exist"))
        assert (code, lines) == (2, printed)
        assert json.loads((tmp_path / f"error{rank}.json").read_text())["message"] == "data folder x does not exist"


def test_the_launcher_says_a_user_error_once_and_passes_on_crashes(tmp_path) -> None:
    """``python -m fewsam.distributed.launch``: processes that exit 2 stopped on a user error, said by
    rank 0 (or, if rank 0 did not say it, from the error file of the first rank that did); a peer
    torchrun terminated (SIGTERM) once the first exited 2 stopped on the same mistake; a crash or a
    signal of the user's among them is torchrun's own report."""
    from types import SimpleNamespace

    from fewsam.distributed.launch import split_args, user_error
    from fewsam.errors import FewsamError

    def failure(rank: int, exitcode: int, message: str = "") -> SimpleNamespace:
        error_file = tmp_path / f"error{rank}.json"
        error_file.unlink(missing_ok=True)
        if message:
            error_file.write_text(message)
        return SimpleNamespace(exitcode=exitcode, message=message or "To enable traceback see: ...",
                               error_file=str(error_file))

    assert user_error({0: failure(0, 2, "m0"), 1: failure(1, 2, "m1")}) == ""
    assert user_error({1: failure(1, 2, "m1"), 3: failure(3, 2, "m3")}) == "m1"
    assert user_error({0: failure(0, 2, "m0"), 1: failure(1, 1)}) is None
    assert user_error({0: failure(0, -9)}) is None
    assert user_error({0: failure(0, 2, "m0"), 1: failure(1, -15)}) == ""  # terminated while checking
    assert user_error({0: failure(0, 2, "m0"), 1: failure(1, 143, "m1")}) == ""
    assert user_error({1: failure(1, 2, "m1"), 0: failure(0, -15, "m0")}) == ""  # rank 0 had printed it
    assert user_error({1: failure(1, 2, "m1"), 0: failure(0, -15)}) == "m1"  # rank 0 ended before saying it
    assert user_error({1: failure(1, 2)}) == "rank 1 stopped on a user error (exit code 2)"
    assert user_error({0: failure(0, -15), 1: failure(1, -15)}) is None  # the user's SIGTERM
    assert split_args(["--nproc-per-node", "2", "fit", "fewshot", "--data", "d"]) == \
        (["--nproc-per-node", "2"], ["fit", "fewshot", "--data", "d"])
    assert split_args(["--nproc-per-node", "2", "-m", "fewsam", "fit", "x"]) == (["--nproc-per-node", "2"], ["fit", "x"])
    with pytest.raises(FewsamError, match="fit METHOD"):
        split_args(["--nproc-per-node", "2", "predict"])


def test_the_launcher_lists_torchruns_options_on_help(capsys) -> None:
    from fewsam.distributed.launch import main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m fewsam.distributed.launch --nproc-per-node N fit METHOD")
    assert "--nproc-per-node" in shown.splitlines()[1]


@pytest.mark.slow
def test_user_errors_under_the_torchrun_launcher_end_in_one_line(tmp_path: Path) -> None:
    """A missing --data folder (every rank) and a changed option on resume (rank 0 alone reads the run
    folder) each end in one `error:` line and exit 2: no line per rank, no rank dying of rank 0's exit
    ("Connection closed by peer"), no torchrun traceback."""
    import sys

    from test_ddp import launch, torchrun_args

    from fewsam.data.phantom import write_phantom_dataset

    launcher = [sys.executable, "-m", "fewsam.distributed.launch", *torchrun_args()[1:]]
    missing = launch([*launcher, "fit", "supervised", "--data", str(tmp_path / "none"), "--labeled-cases", "1",
                      "--out", str(tmp_path / "run")], tmp_path)
    assert_one_line_error(missing, "does not exist")
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    fit = [*launcher, "fit", "supervised", "--data", str(data), "--labeled-cases", "1", "--out", str(tmp_path / "run"),
           "--val-every", "1", "--batch-size", "2", "--image-size", "32", "--quiet"]
    assert launch([*fit, "--steps", "2"], tmp_path).returncode == 0
    changed = launch([*fit, "--steps", "3"], tmp_path)
    assert_one_line_error(changed, "already holds a run with a different configuration")


def test_a_measurement_column_without_bins_is_refused_with_the_bins_to_give(tmp_path: Path) -> None:
    """`evaluate --group-by weight` over 61.5, 72.3, 80.1, 95 made four groups of one case each; now
    one line suggests --bins at the middle value. Whole-number codes stay groups, --bins groups the
    measurements, and fit's fair grouping of its labelled cases refuses the same column."""
    import numpy as np

    from conftest import write_png_cases
    from fewsam.data import open_dataset
    from fewsam.errors import DataError
    from fewsam.evaluate import evaluate
    from fewsam.fairness import case_groups

    label = np.zeros((10, 10), np.uint8)
    label[:2] = 1
    weights = {"a": "61.5", "b": "72.3", "c": "80.1", "d": "95.0"}
    root, pred = write_png_cases(tmp_path, label, {c: ({"weight": w, "site": str(i % 2)}, label)
                                                   for i, (c, w) in enumerate(weights.items())})
    result = run_fewsam("evaluate", "--pred", str(pred), "--data", str(root), "--split", "test",
                        "--group-by", "weight", "--quiet", cwd=tmp_path)
    assert_one_line_error(result, "'weight' holds measurements (fractions such as 61.5), which would make one "
                                  "group per value; bin it with --bins, e.g. --bins weight:80.1")
    binned = evaluate(pred, root, "test", "weight", show_progress=False, bins="weight:80.1", n_boot=10)
    assert {name: g["n"] for name, g in binned["groups"].items()} == {"<80.1": 2, ">=80.1": 2}
    assert set(evaluate(pred, root, "test", "site", show_progress=False, n_boot=10)["groups"]) == {"0", "1"}
    with pytest.raises(DataError, match="'weight' holds measurements"):
        case_groups(open_dataset(root), open_dataset(root).split("test"), "weight", cases="labelled case")
    from fewsam.fairness import refuse_unbinned_measurements

    with pytest.raises(DataError, match=r"11 different whole numbers \(more than 10 groups\)"):
        refuse_unbinned_measurements("height", list(range(150, 161)))
    refuse_unbinned_measurements("scanner", [1, 2, 3, 1.0, "x", None])  # codes: grouped by value


def test_group_options_without_a_group_column_are_refused(tmp_path: Path) -> None:
    """`evaluate --alpha 2` (or --es-mode std, --attributes CSV) without --group-by printed no group metrics
    and said nothing of the option; `fit --attributes CSV` without --fair-attribute fitted unscaled."""
    import numpy as np

    from conftest import write_png_cases
    from fewsam.config import FitOptions
    from fewsam.errors import DataError
    from fewsam.evaluate import evaluate

    label = np.zeros((10, 10), np.uint8)
    label[:2] = 1
    root, pred = write_png_cases(tmp_path, label, {c: ({"site": "x"}, label) for c in "ab"})
    table = tmp_path / "sites.csv"
    table.write_text("case,site\na,x\nb,y\n")
    result = run_fewsam("evaluate", "--pred", str(pred), "--data", str(root), "--split", "test", "--alpha", "2",
                        "--quiet", cwd=tmp_path)
    assert_one_line_error(result, "--alpha shapes the group metrics of the --group-by column, which is not given; "
                                  "add --group-by COLUMN or leave it out")
    with pytest.raises(DataError, match="^--es-mode and --attributes shape the group metrics"):
        evaluate(pred, root, "test", show_progress=False, es_mode="std", attributes=table)
    assert evaluate(pred, root, "test", show_progress=False, alpha=1.0)["n_cases"] == 2  # defaults: no group asked
    with pytest.raises(ConfigError, match="^--fair-gamma and --attributes shape fair scaling on the --fair-attribute"):
        FitOptions(run=tmp_path / "run", fair_gamma=2.0, attributes=table)
    assert FitOptions(run=tmp_path / "run", fair_attribute="site", attributes=table).attributes == table


def test_sam_options_with_no_sam_are_refused(tmp_path: Path) -> None:
    """`fit samatch --no-sam --sam-steps 50 --box-margin 30` fitted plain FixMatch and recorded SAM settings
    that changed nothing; the shared schedule (--warmup-steps ...) stays accepted."""
    from fewsam.methods.samatch.config import SamMatchConfig

    result = run_fewsam("fit", "samatch", "--no-sam", "--sam-steps", "50", "--box-margin", "30", "--out",
                        str(tmp_path / "run"), "--data", str(tmp_path), "--labeled-cases", "1", cwd=tmp_path)
    assert_one_line_error(result, "--box-margin and --sam-steps tune SAM's pseudo-labels, which --no-sam leaves out")
    assert not (tmp_path / "run").exists()
    assert not SamMatchConfig(use_sam=False, warmup_steps=50, refresh_every=50, ramp_steps=50).use_sam
    assert SamMatchConfig(sam_steps=50).sam_steps == 50
    assert SamMatchConfig.from_json({"use_sam": False, "sam_steps": 50}).sam_steps == 50  # a recorded run loads


def test_a_fair_fit_asked_again_with_its_attribute_table_spelled_otherwise_is_the_same_run(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    """`--attributes sex.csv`, then `--attributes /abs/sex.csv`: "already holds a run with a different
    configuration". The table is recorded as an absolute path, so the same spelling from another folder
    (another file) is the change, and another spelling of the same file is none."""
    import json

    from typer.testing import CliRunner

    from fewsam.cli import app
    from fewsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    (tmp_path / "sex.csv").write_text("case,sex\nphantom_000,F\nphantom_001,M\nphantom_002,F\n")
    monkeypatch.chdir(tmp_path)
    fit = ["fit", "supervised", "--data", str(data), "--labeled-cases", "2", "--steps", "1", "--val-every", "1",
           "--batch-size", "2", "--image-size", "32", "--precision", "fp32", "--quiet", "--fair-attribute", "sex",
           "--out", str(tmp_path / "run")]
    first = CliRunner().invoke(app, [*fit, "--attributes", "sex.csv"])
    assert first.exit_code == 0, first.output
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["fair"]["attributes"]
    assert recorded == str(tmp_path / "sex.csv")
    again = CliRunner().invoke(app, [*fit, "--attributes", str(tmp_path / "sex.csv")])
    assert again.exit_code == 0 and "finished already" in again.output, again.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["fair"]["attributes"] = "sex.csv"  # as an older fewsam recorded it
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    older = CliRunner().invoke(app, [*fit, "--attributes", str(tmp_path / "sex.csv")])
    assert older.exit_code == 0 and "finished already" in older.output, older.output


def test_a_fair_fit_resumed_with_its_labelled_cases_in_other_groups_is_refused(tmp_path: Path) -> None:
    """The attribute table edited between a stop and the resume: fair_groups.json was overwritten and the
    rest of the fit scaled by other groups than its first steps, with no word said."""
    import json

    from typer.testing import CliRunner

    from fewsam.cli import app
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.errors import DataError
    from fewsam.runs import MANIFEST

    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    table = tmp_path / "sex.csv"
    table.write_text("case,sex\nphantom_000,F\nphantom_001,M\nphantom_002,F\n")
    run = tmp_path / "run"
    fit = ["fit", "supervised", "--data", str(data), "--labeled-cases", "2", "--steps", "1", "--val-every", "1",
           "--batch-size", "2", "--image-size", "32", "--precision", "fp32", "--quiet", "--fair-attribute", "sex",
           "--attributes", str(table), "--out", str(run)]
    assert CliRunner().invoke(app, fit).exit_code == 0
    (run / MANIFEST).unlink()  # as a fit stopped before its end leaves it: resumable
    table.write_text("case,sex\nphantom_000,M\nphantom_001,F\nphantom_002,F\n")
    resumed = CliRunner().invoke(app, fit)
    assert isinstance(resumed.exception, DataError), resumed.output
    assert "case phantom_000: 'F' -> 'M'" in str(resumed.exception)
    assert json.loads((run / "fair_groups.json").read_text())["case_group"]["phantom_000"] == "F"


@pytest.mark.parametrize("method", ["fewshot", "supervised", "samatch"])
def test_a_learning_rate_beyond_any_recipe_is_refused(tmp_path: Path, method: str) -> None:
    """`--lr 1e300` passed the config's check (> 0) and ended the fit's first step in a traceback from
    inside AdamW ("value cannot be converted to type float without overflow")."""
    from fewsam.methods import get_method

    with pytest.raises(ConfigError, match="--lr must be at most 10.0, not 1e"):
        get_method(method).config(lr=1e300)
    if method == "samatch":
        with pytest.raises(ConfigError, match="--sam-lr must be at most 10.0"):
            get_method(method).config(sam_lr=1e39)
    assert get_method(method).config(lr=0.5).lr == 0.5


def test_compare_and_report_refuse_one_evaluation_given_twice(tmp_path: Path) -> None:
    """`compare e.json e.json` printed a Wilcoxon test with p = 1 as if two runs had been compared, and
    `report e.json e.json` a before/after report of one run."""
    import numpy as np

    from conftest import write_png_cases

    label = np.zeros((10, 10), np.uint8)
    label[:2] = 1
    root, pred = write_png_cases(tmp_path, label, {c: ({"site": "x"}, label) for c in "abc"})
    assert run_fewsam("evaluate", "--pred", str(pred), "--data", str(root), "--split", "test", "--json", "e.json",
                      "--quiet", cwd=tmp_path).returncode == 0
    result = run_fewsam("compare", "e.json", str(tmp_path / "e.json"), cwd=tmp_path)
    assert_one_line_error(result, "are one evaluation; give each run's own evaluation")
    from fewsam.errors import DataError
    from fewsam.report import write_group_report

    with pytest.raises(DataError, match="are one evaluation"):  # report's before/after rows alike
        write_group_report([tmp_path / "e.json", tmp_path / "e.json"], tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_a_semi_supervised_fit_whose_warm_up_fills_it_says_so(tiny_sam_phantom, tmp_path: Path) -> None:
    """`fit fewmatch --steps 20` (warm-up 50): the consistency loss never started and the run, recorded
    as FewMatch, was few-shot SAM, with no word said."""
    from fewsam import api, progress
    from fewsam.config import FitOptions
    from fewsam.methods.fewmatch import FewMatchConfig

    options = FitOptions(data=tiny_sam_phantom, run=tmp_path / "run", labeled_cases=1, cache=str(tmp_path / "c"),
                         precision="fp32", show_progress=False)
    config = FewMatchConfig(steps=2, val_every=2, batch_size=2, unlabeled_batch=2, views=1, test_mirroring=False,
                            sam_refinement=False)
    api.fit("fewmatch", options, config)
    assert ("--warmup-steps 50 is not less than --steps 2: the consistency loss on the unlabelled pool never "
            "starts, so this fit is few-shot SAM on the labelled slices alone") in progress.said()
    assert "--warmup-steps 50 is not less than --steps 2" in (tmp_path / "run" / "fit.log").read_text()


def test_memory_run_out_under_torchrun_is_said_by_rank_0_alone(monkeypatch, capsys, tmp_path) -> None:
    """Out of memory on every rank printed one line per rank; said once now, as a user error is."""
    from conftest import main_raising

    monkeypatch.setattr("sys.argv", ["fewsam", "fit", "fewshot"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error1.json"))
    assert main_raising(monkeypatch, capsys, MemoryError()) == (2, [])
    assert "out of memory" in (tmp_path / "error1.json").read_text()
