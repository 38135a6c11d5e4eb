"""Options and files a user gets slightly wrong: list files from other editors, outputs that are
inputs, reports and predictions that fail half-way, values out of range. Each ends in one clear
error (or is read as meant), and nothing of the user's is replaced or left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_LABEL, assert_one_line_error, main_raising, run_fewsam, write_h5, write_tiny_acdc
from fewsam.cli import app
from fewsam.errors import FewsamError, RunError, Stopped

VAL = ["patient010_frame01", "patient011_frame01", "patient012_frame01"]


@pytest.fixture
def acdc(tmp_path) -> Path:
    """ACDC (SSL4MIS) layout: 2 labelled training slices, 3 validation volumes of 2 slices."""
    return write_tiny_acdc(tmp_path / "acdc", VAL)


@pytest.fixture
def pred(acdc, tmp_path) -> Path:
    """Perfect predictions of the validation cases, as `fewsam predict` writes them."""
    from fewsam.data import open_dataset, write_prediction

    dataset = open_dataset(acdc)
    folder = tmp_path / "pred"
    for case_id in VAL:
        case = dataset.load(case_id)
        write_prediction(case, case.label, folder)
    return folder


def cli_error(*args: str) -> str:
    """The FewsamError a command raises (``cli.main`` prints it as one line, exit 2)."""
    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, FewsamError), (result.exception, result.output)
    return str(result.exception)


# --- list files -------------------------------------------------------------------------------

def test_a_list_file_from_a_windows_editor_is_read_as_meant(acdc):
    """A byte-order mark, CRLF line ends, blank lines and trailing spaces name the same cases."""
    from fewsam.data import open_dataset

    (acdc / "win.list").write_bytes(b"\xef\xbb\xbf" + f"{VAL[0]}\r\n\r\n{VAL[1]}  \r\n \r\n".encode())
    assert open_dataset(acdc).split("win.list") == VAL[:2]


def test_nnunet_json_files_with_a_byte_order_mark_are_read(tmp_path):
    """dataset.json and splits_final.json saved by a Windows editor, as classes.json already was."""
    from fewsam.data import open_dataset
    from fewsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "nnunet", n_train=2, n_val=1, slices=2)
    for name in ("dataset.json", "splits_final.json"):
        (data / name).write_bytes(b"\xef\xbb\xbf" + (data / name).read_bytes())
    dataset = open_dataset(data)
    assert dataset.split("val") == ["phantom_002"] and dataset.class_map.names[1] == "RV"


def test_a_fold_whose_val_is_one_case_id_not_a_list_is_named(tmp_path):
    """list("phantom_002") would have made the fold its letters: "names 11 case(s) with no file: p, h, a"."""
    from fewsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "nnunet", n_train=2, n_val=1, slices=2)
    (data / "splits_final.json").write_text(json.dumps([{"train": ["phantom_000"], "val": "phantom_002"}]))
    message = cli_error("info", str(data))
    assert message.startswith(f"cannot read {data / 'splits_final.json'} ('train' and 'val' must be lists of case ids)")


def test_data_given_as_a_folder_inside_the_dataset_names_its_root(acdc, tmp_path):
    """--data DATASET/imagesTr (or ACDC's data/) listed every layout instead of the one-word fix."""
    from fewsam.data.phantom import write_phantom_dataset

    nnunet = write_phantom_dataset(tmp_path / "nnunet", n_train=1, n_val=1, slices=2)
    for root, inner, layout in ((nnunet, "imagesTr", "nifti"), (nnunet, "labelsTr", "nifti"), (acdc, "data", "acdc-h5")):
        message = cli_error("info", str(root / inner))
        assert message == (f"{root / inner} is a folder inside the dataset {root.resolve()} ({layout} layout); "
                           f"give the dataset's root: --data {root.resolve()}")
    (tmp_path / "elsewhere" / "data").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere" / "data"
    assert cli_error("info", str(elsewhere)).startswith(f"data folder {elsewhere} holds no image files")


@pytest.mark.parametrize("lines", [[VAL[0], VAL[1], VAL[0]], [VAL[0], f"{VAL[0]}.h5"]])
def test_a_case_named_twice_in_a_list_is_refused_naming_it(acdc, pred, lines):
    """Scored twice, a case would weigh double in the means and the paired tests."""
    (acdc / "dup.list").write_text("\n".join(lines) + "\n")
    message = cli_error("evaluate", "--pred", str(pred), "--data", str(acdc), "--split", "dup.list", "--quiet")
    assert f"names 1 case(s) more than once: {VAL[0]}; keep one line per case" in message


# --- outputs that fail half-way -----------------------------------------------------------------

def test_a_folder_in_the_way_of_one_prediction_writes_none_of_them(tmp_path):
    from fewsam.atomic import staged_folder

    out = tmp_path / "pred"
    (out / "b.h5").mkdir(parents=True)
    (out / "a.h5").write_text("an old prediction")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match=r"a folder .*b\.h5 is in the way.*nothing was written"):
        with staged_folder(out, overwrite=True) as staging:
            for name in ("a.h5", "b.h5"):
                (staging / name).write_text("new")
    assert (out / "a.h5").read_text() == "an old prediction" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]  # no staging folder left


def test_a_file_where_a_prediction_folder_goes_writes_none_of_them(tmp_path):
    from fewsam.atomic import staged_folder

    out = tmp_path / "pred"
    out.mkdir()
    (out / "site").write_text("mine")
    with pytest.raises(RunError, match=r"a file .*site is in the way"):
        with staged_folder(out, overwrite=True) as staging:
            (staging / "a.png").write_text("new")
            (staging / "site").mkdir()
            (staging / "site" / "b.png").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["site"]


def test_two_writers_overwriting_one_folder_leave_one_complete_set(tmp_path, monkeypatch):
    """Two ``predict --overwrite`` into one folder finishing at once: the second waits for the first
    one's moves, so the folder ends with one writer's files, never some of each."""
    import threading

    from fewsam import atomic

    out = tmp_path / "pred"
    out.mkdir()
    names = ("a.h5", "b.h5", "c.h5")
    first_moving, second_done = threading.Event(), threading.Event()
    real_replace = os.replace

    def slow_first_writer(src, dst):
        real_replace(src, dst)
        if Path(dst).read_text() == "first" and not first_moving.is_set():
            first_moving.set()
            second_done.wait(timeout=1.0)  # without the lock the second writer moves all its files here

    monkeypatch.setattr(atomic.os, "replace", slow_first_writer)

    def write(content: str, started: threading.Event | None) -> None:
        with atomic.staged_folder(out, overwrite=True) as staging:
            for name in names:
                (staging / name).write_text(content)
            if started is not None:
                started.wait(timeout=5.0)
        if content == "second":
            second_done.set()

    first = threading.Thread(target=write, args=("first", None))
    second = threading.Thread(target=write, args=("second", first_moving))
    first.start()
    second.start()
    first.join(timeout=10)
    second.join(timeout=10)
    contents = {(out / name).read_text() for name in names}
    assert contents == {"second"}, contents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]


def test_ctrl_c_while_predictions_move_in_lands_after_the_last_one(tmp_path, monkeypatch):
    """Replacing predictions in an existing folder is file by file: a stop half-way would leave old and
    new predictions mixed, so it is held until every file is in place."""
    from fewsam import atomic
    from fewsam.cli import _stop_on_signals

    out = tmp_path / "pred"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    real_replace = os.replace

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGINT)

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    _stop_on_signals()
    try:
        with pytest.raises(Stopped):
            with atomic.staged_folder(out, overwrite=True) as staging:
                for name in ("a.h5", "b.h5", "c.h5"):
                    (staging / name).write_text("new")
                monkeypatch.setattr(atomic.os, "replace", replace_then_interrupt)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert sorted(p.name for p in out.iterdir()) == ["a.h5", "b.h5", "c.h5", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]


def test_a_link_to_a_missing_folder_is_named_as_such(acdc, tmp_path):
    """A link to a scratch folder not made yet: mkdir and rename both fail on it."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "scratch" / "pred")
    says = f"{link} is a link to {tmp_path / 'scratch' / 'pred'}, which does not exist; create that folder"
    evaluation = _evaluation(tmp_path / "e.json", [0.9, 0.8])
    assert says in cli_error("report", str(evaluation), "--out", str(link))
    assert says in cli_error("fit", "supervised", "--data", str(acdc), "--out", str(link), "--labeled-cases", "1")
    assert says in cli_error("embed", "--data", str(acdc), "--cache", str(link))
    from fewsam.data import open_dataset
    from fewsam.predict import check_output_folder

    with pytest.raises(RunError) as refused:
        check_output_folder(link, open_dataset(acdc), overwrite=True)
    assert says in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acdc", "e.json", "out"]


# --- a distill fit's teacher -----------------------------------------------------------------------

def _distill(acdc: Path, teacher: Path, out: Path, cache: Path) -> str:
    return cli_error("fit", "distill", "--data", str(acdc), "--labeled-cases", "1", "--steps", "2", "--teacher",
                     str(teacher), "--out", str(out), "--cache", str(cache), "--quiet")


def test_a_teacher_whose_fit_never_finished_is_refused(acdc, tmp_path):
    """Its weights are missing, or still changing while a fit into it runs."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"method": "fewmatch"}))
    message = _distill(acdc, teacher, tmp_path / "student", tmp_path / "c")
    assert message.startswith(f"{teacher} has no manifest.json: its fit never finished")
    assert not (tmp_path / "student").exists()


def test_a_fit_cannot_be_its_own_teacher(acdc, tmp_path):
    run = tmp_path / "student"
    message = _distill(acdc, run, run, tmp_path / "c")
    assert message.startswith(f"--teacher {run} is this fit's own --out")
    assert not run.exists()


# --- evaluation JSONs: compare and report -------------------------------------------------------

def _evaluation(path: Path, scores: list[float]) -> Path:
    from fewsam.metrics import summarise

    cases = [{"case": f"c{i}", "group": None, "per_class": {"fg": {"dice": s, "iou": s / (2 - s), "hd95": 1.0,
                                                                   "asd": 1.0}}}
             for i, s in enumerate(scores)]
    path.write_text(json.dumps({**summarise(cases), "distance_unit": "pixel"}))
    return path


@pytest.mark.parametrize("text, says", [
    ('{"cases": [1, 2]}', "record 0 of 'cases' names no case"),
    ('{"cases": [{"case": "c0", "per_class": {"fg": {"dice": "high"}}}]}',
     "the 'per_class' of case 'c0' is not a table of scores"),
    ('{"cases": [{"case": "c0", "per_class": ["fg"]}]}', "the 'per_class' of case 'c0' is not a table of scores"),
    ('{"cases": [{"case": "c0", "per_class": {"fg": {"dice": 0.5}}}, {"case": "c0", "per_class": {"fg": {"dice": 0.7}}}]}',
     "case 'c0' has two records"),
])
def test_compare_and_report_name_an_evaluation_that_is_not_one(tmp_path, text, says):
    good = _evaluation(tmp_path / "a.json", [0.9, 0.8, 0.7])
    (tmp_path / "b.json").write_text(text)
    result = run_fewsam("compare", str(good), str(tmp_path / "b.json"), cwd=tmp_path)
    assert_one_line_error(result, f"b.json is not a fewsam evaluation ({says})")
    message = cli_error("report", str(good), str(tmp_path / "b.json"), "--out", str(tmp_path / "rep"))
    assert f"is not a fewsam evaluation ({says})" in message
    assert not (tmp_path / "rep").exists()


def test_report_needs_the_overall_scores(tmp_path):
    (tmp_path / "cases_only.json").write_text(json.dumps({"cases": [
        {"case": "c0", "per_class": {"fg": {"dice": 0.5}}}]}))
    message = cli_error("report", str(tmp_path / "cases_only.json"), "--out", str(tmp_path / "rep"))
    assert "cases_only.json is not a fewsam evaluation (no 'n_cases')" in message
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("edit, says", [
    (lambda e: e["groups"]["a"].pop("ci95"), "group 'a' lacks its n, mean, per_class or ci95"),
    (lambda e: e["groups"]["a"]["mean"].pop("hd95"), "group 'a' lacks its n, mean, per_class or ci95"),
    (lambda e: e.update(groups=["a"]), "its 'groups' is not a table of groups"),
    (lambda e: e["mean"].pop("asd"), "its 'mean' or 'per_class' is not a table of scores"),
])
def test_report_names_a_hand_edited_group_table(tmp_path, edit, says):
    from fewsam.metrics import group_summary

    cases = [{"case": f"c{i}", "group": "a", "per_class": {"fg": {"dice": s, "iou": s / 2, "hd95": 1.0, "asd": 1.0}}}
             for i, s in enumerate([0.5, 0.7])]
    evaluation = {**group_summary(cases, n_boot=10), "group_by": "site", "distance_unit": "pixel"}
    edit(evaluation)
    (tmp_path / "e.json").write_text(json.dumps(evaluation))
    message = cli_error("report", str(tmp_path / "e.json"), "--out", str(tmp_path / "rep"))
    assert f"e.json is not a fewsam evaluation ({says})" in message
    assert not (tmp_path / "rep").exists()


def test_a_report_that_fails_half_way_leaves_no_folder_and_keeps_an_old_report(tmp_path, monkeypatch):
    from fewsam import report

    evaluation = _evaluation(tmp_path / "e.json", [0.9, 0.8])
    rep = tmp_path / "rep"

    def broken(blocks, title):
        raise OSError("the disk went away")

    monkeypatch.setattr(report, "_html", broken)
    with pytest.raises(OSError):
        report.write_group_report([evaluation], rep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json"]
    rep.mkdir()
    (rep / "report.md").write_text("last week's report")
    with pytest.raises(OSError):
        report.write_group_report([evaluation], rep, overwrite=True)
    assert (rep / "report.md").read_text() == "last week's report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "rep"]


def _hd95_evaluation(path: Path, hd95: list[float | None]) -> Path:
    """An evaluation whose case i has HD95 ``hd95[i]`` (None: the prediction was empty)."""
    cases = [{"case": f"c{i}", "group": None, "per_class": {"fg": {"dice": 0.0 if v is None else 0.8, "iou": 0.5,
                                                                   "hd95": v, "asd": v}}}
             for i, v in enumerate(hd95)]
    path.write_text(json.dumps({"cases": cases}))
    return path


def test_compare_says_which_cases_had_no_value_rather_than_calling_them_missing(tmp_path):
    """A case both runs scored, but whose HD95 one of them could not have (an empty prediction), was
    reported as "only in B", and two runs of the same cases as sharing none."""
    from fewsam.compare import compare_runs, describe

    a = _hd95_evaluation(tmp_path / "a.json", [3.0, 4.0, 5.0, None])
    b = _hd95_evaluation(tmp_path / "b.json", [2.0, 3.0, 4.5, 6.0])
    result = compare_runs(a, b, "hd95")
    assert (result["n"], result["only_in_a"], result["only_in_b"]) == (3, 0, 0)
    assert (result["unscored_a"], result["unscored_b"]) == (1, 0)
    assert "1 case(s) without a hd95 value in A (an empty prediction or label), 0 in B" in describe(result)
    assert "only in" not in describe(result)
    one = _hd95_evaluation(tmp_path / "one.json", [None, None, 2.0])
    message = cli_error("compare", str(one), str(b), "--metric", "hd95")
    assert "share 1 case(s) with hd95 scored" in message and "2 case(s) without it" in message


def test_compare_refuses_to_write_its_result_over_an_input(tmp_path):
    a = _evaluation(tmp_path / "a.json", [0.9, 0.8, 0.7])
    b = _evaluation(tmp_path / "b.json", [0.8, 0.7, 0.75])
    kept = b.read_text()
    result = run_fewsam("compare", "a.json", "b.json", "--json", "./b.json", cwd=tmp_path)
    assert_one_line_error(result, "--json b.json is the input b.json; writing there would replace it")
    assert b.read_text() == kept and a.exists()
    forced = run_fewsam("compare", "a.json", "b.json", "--json", "./b.json", "--overwrite", cwd=tmp_path)
    assert_one_line_error(forced, "--json b.json is the input b.json; writing there would replace it")
    assert b.read_text() == kept
    again = CliRunner().invoke(app, ["compare", str(a), str(b), "--json", str(tmp_path / "t.json")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "t.json").read_text())["n"] == 3


@pytest.mark.parametrize("command", ["evaluate", "info"])
def test_evaluate_and_info_never_write_their_json_over_a_file_of_the_dataset(acdc, pred, tmp_path, command):
    """--overwrite replaces an older result; a --json naming the dataset's own list file (or any file in
    DATA, or the --attributes table) would replace data the command reads, so it is refused."""
    (tmp_path / "groups.csv").write_text("case,site\n" + "".join(f"{c},A\n" for c in VAL))
    args = {"evaluate": ["evaluate", "--pred", str(pred), "--data", str(acdc), "--quiet"],
            "info": ["info", str(acdc)]}[command]
    kept = {path: path.read_bytes() for path in (acdc / "val.list", tmp_path / "groups.csv")}
    for target in kept:
        message = cli_error(*args, "--attributes", str(tmp_path / "groups.csv"), "--json", str(target), "--overwrite")
        assert f"--json {target}" in message and "would replace it" in message
    assert all(path.read_bytes() == data for path, data in kept.items())
    assert f"--json {acdc} is the dataset folder" in cli_error(*args, "--json", str(acdc))
    result = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "result.json")])
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "result.json"), "--overwrite"])
    assert again.exit_code == 0, again.output


def test_compare_and_bench_keep_an_existing_json_unless_told_to_overwrite(tmp_path):
    a = _evaluation(tmp_path / "a.json", [0.9, 0.8, 0.7])
    b = _evaluation(tmp_path / "b.json", [0.8, 0.7, 0.75])
    mine = tmp_path / "t.json"
    mine.write_text("my notes")
    result = run_fewsam("compare", str(a), str(b), "--json", str(mine), cwd=tmp_path)
    assert_one_line_error(result, f"--json {mine} exists; choose another --json or pass --overwrite to replace it")
    assert mine.read_text() == "my notes"
    assert "exists" in cli_error("bench", "--data", str(tmp_path / "data"), "--json", str(mine),
                                 "--cache", str(tmp_path / "scratch"))
    assert mine.read_text() == "my notes" and not (tmp_path / "scratch").exists()
    replaced = CliRunner().invoke(app, ["compare", str(a), str(b), "--json", str(mine), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(mine.read_text())["n"] == 3


# --- values out of range ------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", ["-1", "nan", "inf"])
def test_evaluate_refuses_an_alpha_that_breaks_es_dice(acdc, pred, tmp_path, alpha):
    message = cli_error("evaluate", "--pred", str(pred), "--data", str(acdc), "--alpha", alpha, "--quiet",
                        "--json", str(tmp_path / "e.json"))
    assert message.startswith("--alpha must be a finite number of at least 0")
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("extra, says", [
    (["--bins", "bmi:25,30"], "--bins shapes fair scaling on the --fair-attribute column, which is not given"),
    (["--fair-gamma", "2"], "--fair-gamma shapes fair scaling on the --fair-attribute column"),
    (["--bins", "bmi:25", "--fair-gamma", "0"], "--bins and --fair-gamma shape fair scaling"),
    (["--fair-attribute", " "], "--fair-attribute names no column"),
])
def test_fair_options_without_a_group_column_are_refused_not_ignored(acdc, tmp_path, extra, says):
    """Ignored, they would record an unscaled run the user took for a fair one."""
    message = cli_error("fit", "supervised", "--data", str(acdc), "--out", str(tmp_path / "run"), "--labeled-cases",
                        "1", "--steps", "1", *extra)
    assert message.startswith(says)
    assert not (tmp_path / "run").exists()


def test_fair_options_with_a_group_column_or_at_their_defaults_are_taken():
    from fewsam.config import FitOptions

    FitOptions(run=Path("r"), fair_gamma=1.0)
    FitOptions(run=Path("r"), fair_attribute="bmi", fair_gamma=2.0, fair_bins="bmi:25,30")


@pytest.mark.parametrize("extra, says", [(["--bins", "bmi:25,30"], "--bins bins the --group-by column, which is not "
                                                                   "given"),
                                         (["--group-by", ""], "--group-by names no column")])
def test_evaluate_refuses_grouping_options_that_would_group_nothing(acdc, pred, extra, says):
    message = cli_error("evaluate", "--pred", str(pred), "--data", str(acdc), "--quiet", *extra)
    assert message.startswith(says)


def test_bench_refuses_no_slices_before_making_its_cache(acdc, tmp_path):
    assert cli_error("bench", "--data", str(acdc), "-n", "0", "--cache", str(tmp_path / "scratch")) == \
        "-n must be at least 1, not 0"
    assert not (tmp_path / "scratch").exists()


def test_a_bench_that_fails_removes_its_scratch_cache(tmp_path, monkeypatch):
    """Left behind, the folder would refuse the next bench ("not empty")."""
    from fewsam import bench

    def fails(data, n, cache_dir, device, started, show_progress):
        (cache_dir / "model").mkdir(parents=True)
        raise FewsamError("the data went away")

    monkeypatch.setattr(bench, "_measure", fails)
    with pytest.raises(FewsamError, match="went away"):
        bench.run_bench(tmp_path / "data", 2, tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()


def test_demo_checks_its_steps_before_writing_the_phantom(tmp_path):
    message = cli_error("demo", "--steps", "0", "--out", str(tmp_path / "demo"), "--cache", str(tmp_path / "c"))
    assert message == "--steps must be at least 1, not 0"
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_to_write_among_the_users_files(tmp_path):
    """`fewsam demo --out .` in a project with its own data/ would put the phantom beside the user's data."""
    project = tmp_path / "project"
    (project / "data" / "acdc").mkdir(parents=True)
    (project / "data" / "acdc" / "notes.txt").write_text("mine")
    (project / "pred").mkdir()
    message = cli_error("demo", "--out", str(project), "--steps", "1", "--cache", str(tmp_path / "c"))
    assert message.startswith(f"--out {project} holds files the demo did not write (data, pred)")
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == [
        "data", "data/acdc", "data/acdc/notes.txt", "pred"]


def test_demo_resumes_in_a_folder_a_demo_made(tmp_path):
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.demo import check_demo_folder

    cut_off = tmp_path / "cut_off"
    (cut_off / "data" / "imagesTr").mkdir(parents=True)  # stopped while the phantom was written
    check_demo_folder(cut_off)
    interrupted = tmp_path / "interrupted"
    write_phantom_dataset(interrupted / "data", n_train=1, n_val=1, slices=2)
    for name in ("run", "pred"):
        (interrupted / name).mkdir()
    check_demo_folder(interrupted)
    (interrupted / "thesis.tex").write_text("mine")
    with pytest.raises(RunError, match=r"holds files the demo did not write \(thesis.tex\)"):
        check_demo_folder(interrupted)


@pytest.mark.parametrize("where", ["labelsTr", "imagesTr", "."])
def test_evaluate_refuses_the_datasets_own_folders_as_predictions(tmp_path, where):
    """--pred DATA/labelsTr scored the labels against themselves: Dice 1.0 without a word."""
    from fewsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "nnunet", n_train=1, n_val=1, slices=2)
    message = cli_error("evaluate", "--pred", str(data / where), "--data", str(data), "--quiet")
    assert f"lies in the dataset's own folder {(data / where).resolve()}" in message
    assert "give the folder `fewsam predict --out` wrote" in message


# --- predictions of another dataset ----------------------------------------------------------------

def test_a_prediction_with_a_class_the_data_lacks_says_what_to_do(acdc, pred):
    with h5py.File(pred / f"{VAL[1]}.h5", "r+") as f:
        values = f["pred"][()]
        values[0, :2, :2] = 7
        f["pred"][...] = values
    message = cli_error("evaluate", "--pred", str(pred), "--data", str(acdc), "--quiet")
    assert f"prediction values [7] in {pred / (VAL[1] + '.h5')}" in message
    assert "predicted by a run fitted on other classes" in message


# --- the compiled encoder under --cache ----------------------------------------------------------

def test_damaged_compiled_encoder_is_converted_again(tmp_path, caplog):
    """A truncated OpenVINO IR (a full disk, a partial copy of the cache) is rebuilt, not a traceback."""
    import logging

    import torch

    pytest.importorskip("openvino")
    from fewsam import progress
    from fewsam.models.precision import EncoderPrecision, OpenVinoEncoder

    torch.manual_seed(0)
    encoder, images = torch.nn.Conv2d(3, 4, 3, padding=1), torch.rand(1, 3, 8, 8)
    ir = tmp_path / "cache" / "tiny-openvino-ir"
    ir.mkdir(parents=True)
    (ir / "encoder.xml").write_text("<?xml version='1.0'?>\n<net name='Model0' ver")  # cut off mid-write
    (ir / "encoder.bin").write_bytes(b"\0" * 10)
    progress._said.clear()
    with caplog.at_level(logging.INFO, logger="fewsam"):
        embedded = OpenVinoEncoder(encoder, 8, EncoderPrecision("fp32", "openvino"), ir)(images)
    with torch.no_grad():
        torch.testing.assert_close(embedded, encoder(images), rtol=1e-4, atol=1e-5)
    assert any(f"the compiled encoder in {ir} is damaged" in r.getMessage() for r in caplog.records)
    assert (ir / "encoder.bin").stat().st_size > 10
    assert sorted(p.name for p in ir.parent.iterdir()) == [ir.name]


def test_the_compiled_encoder_is_readable_by_the_group_of_a_shared_cache(tmp_path):
    """The IR folder was made by mkdtemp (always 0o700): in a cache shared by a group, every other
    user's OpenVINO run failed with "Permission denied" on it. It follows the umask, as cache
    entries and run files do."""
    import torch

    pytest.importorskip("openvino")
    from fewsam.models.precision import EncoderPrecision, OpenVinoEncoder

    ir = tmp_path / "cache" / "tiny-openvino-ir"
    previous = os.umask(0o002)
    try:
        OpenVinoEncoder(torch.nn.Conv2d(3, 4, 3, padding=1), 8, EncoderPrecision("fp32", "openvino"), ir)(
            torch.rand(1, 3, 8, 8))
    finally:
        os.umask(previous)
    assert ir.stat().st_mode & 0o777 == 0o775
    assert all(path.stat().st_mode & 0o777 == 0o664 for path in ir.iterdir())


# --- a file fewsam may not read or write ----------------------------------------------------------

@pytest.mark.parametrize("code", ["EACCES", "EROFS"])
def test_a_refused_write_the_checks_could_not_see_is_one_error_line(monkeypatch, capsys, code):
    """A network share that squashes root, an ACL: os.access said yes, the write said no."""
    import errno

    refused = OSError(getattr(errno, code), os.strerror(getattr(errno, code)), "/share/pred/.a.h5.1a2b3c4d.tmp")
    exit_code, lines = main_raising(monkeypatch, capsys, refused)
    assert exit_code == 2
    assert lines == [
        f"error: {os.strerror(getattr(errno, code))}: /share/pred/.a.h5.1a2b3c4d.tmp; give fewsam access to it (or "
        "use another --out / --cache / --json), then run the same command again"]


@pytest.mark.parametrize("args, says", [
    (["fit", "fewshot", "--steps", "abc"], "fewsam fit fewshot: Invalid value for '--steps'"),
    (["fit", "fewshot", "--no-such-option"], "fewsam fit fewshot: No such option: --no-such-option"),
    (["fit", "nosuch"], "fewsam fit: No such command 'nosuch'"),
    (["evaluate", "--alpha", "x"], "fewsam evaluate: Invalid value for '--alpha'"),
    (["predict"], "fewsam predict: Missing argument 'run'"),
])
def test_a_usage_mistake_is_one_error_line_with_where_help_is(args, says, capsys):
    from fewsam.cli import run_app

    with pytest.raises(SystemExit) as stop:
        run_app(args)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), lines
    assert lines[0].endswith("--help')"), lines


def test_usage_mistakes_and_the_version_through_the_real_command_line(tmp_path):
    from fewsam import __version__

    assert_one_line_error(run_fewsam("fit", "fewshot", "--steps", "abc", cwd=tmp_path), "Invalid value for '--steps'")
    version = run_fewsam("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"fewsam {__version__}"
    bare = subprocess.run([sys.executable, "-m", "fewsam"], capture_output=True, cwd=tmp_path,
                          env=dict(os.environ, FEWSAM_NO_REEXEC="1"), timeout=300)
    assert bare.returncode == 2 and b"Usage: fewsam" in bare.stdout and b"error" not in bare.stderr


def test_a_quoted_home_folder_is_the_users_home_as_unquoted(tmp_path, monkeypatch, capsys):
    """``--json "~/x"`` and ``--json=~/x`` write under the home folder, not into a folder named ``~``
    below the working directory (``--data "~/..."`` was already read from home)."""
    from fewsam.cli import expand_home, run_app
    from fewsam.data.phantom import write_phantom_dataset

    home = tmp_path / "home"
    write_phantom_dataset(home / "data", n_train=1, n_val=1, slices=2)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    run_app(["info", "~/data", "--json", "~/info.json"])
    run_app(["info", "~/data", "--json=~/again.json"])
    assert (home / "info.json").is_file() and (home / "again.json").is_file()
    assert not (tmp_path / "~").exists()
    assert expand_home(["--labels", "a~b", "x=~"]) == ["--labels", "a~b", "x=~"]


def test_a_bench_given_an_existing_empty_folder_keeps_it(tmp_path, monkeypatch):
    """``--cache .`` in an empty working folder: the bench removed the user's working folder."""
    from fewsam import bench

    used = []

    def measures(data, n, cache_dir, device, started, show_progress):
        (cache_dir / "model").mkdir(parents=True)
        used.append(cache_dir)
        return {}

    monkeypatch.setattr(bench, "_measure", measures)
    (tmp_path / "work").mkdir()
    bench.run_bench(tmp_path / "data", 2, tmp_path / "work")
    assert (tmp_path / "work").is_dir() and not any((tmp_path / "work").iterdir())
    assert used[0].parent == tmp_path / "work"


@pytest.mark.parametrize("command", [["embed"], ["fit", "fewshot", "--labeled-slices", "1"]])
def test_a_cache_inside_the_data_folder_is_refused_before_anything_is_written(acdc, tmp_path, command):
    """fewsam writes nothing into a user's data; cache entries (.npz) there could be read as cases."""
    cache = acdc / "emb_cache"
    extra = ["--out", str(tmp_path / "run")] if command[0] == "fit" else []
    message = cli_error(*command, "--data", str(acdc), "--cache", str(cache), *extra)
    assert message.startswith(f"--cache {cache} is inside the data folder {acdc}")
    assert not cache.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("given_existing", [False, True])
def test_the_scratch_cache_a_killed_bench_left_is_removed_by_the_next_bench(tmp_path, monkeypatch, given_existing):
    """kill -9 left the scratch cache behind, and every later bench there was refused ("not empty") until
    the user deleted it; a folder the user gave that holds anything else is still refused."""
    from fewsam import bench
    from fewsam.cli import _check_scratch_cache

    cache = tmp_path / "cache"
    if given_existing:
        cache.mkdir()  # --cache . in an empty folder: the bench works in a folder inside it
    killed = cache / bench.BENCH_SCRATCH if given_existing else cache
    started = []

    def killed_half_way(data, n, cache_dir, device, started_at, show_progress):
        (cache_dir / "model").mkdir()  # fails where the killed bench's entries were left in place
        (cache_dir / "model" / "entry.npz").write_bytes(b"an embedding")
        started.append(cache_dir)
        if len(started) == 1:
            raise SystemExit("killed")  # what kill -9 leaves: nothing removed
        return {}

    monkeypatch.setattr(bench, "_measure", killed_half_way)
    monkeypatch.setattr(bench.shutil, "rmtree", lambda *args, **kwargs: None)  # the kill: no clean-up ran
    with pytest.raises(SystemExit):
        bench.run_bench(tmp_path / "data", 2, cache)
    monkeypatch.undo()
    monkeypatch.setattr(bench, "_measure", killed_half_way)
    assert (killed / bench.BENCH_MARK).is_file() and (killed / "model" / "entry.npz").is_file()
    _check_scratch_cache(cache, tmp_path / "data")  # not refused
    bench.run_bench(tmp_path / "data", 2, cache)
    assert not killed.exists() and cache.exists() == given_existing
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(FewsamError, match="is not empty"):
        _check_scratch_cache(tmp_path / "mine", tmp_path / "data")
