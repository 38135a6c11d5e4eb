"""The Python API as a notebook user calls it: a misspelled keyword, an argument of the wrong kind, a single
path where a list is read, or a folder of the wrong kind each end in one FewsamError naming the argument and
what to give, before anything is written; and what the entry points return is plain data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import training_raising_at_step, write_png_cases
from fewsam.api import FitOptions, embed_dataset, fit, predict
from fewsam.compare import compare_runs
from fewsam.errors import FewsamError
from fewsam.evaluate import evaluate
from fewsam.methods.fewshot import FewShotConfig
from fewsam.report import write_group_report

TWO_STEPS = FewShotConfig(augmented_views=0, steps=2, batch_size=1, views=1, test_mirroring=False, sam_refinement=False)
SQUARE = np.zeros((16, 16), np.uint8)
SQUARE[4:12, 4:12] = 1


def fit_options(data: Path, run: Path, **given) -> FitOptions:
    """A 2-step-fit's options on ``data`` in fp32 (no encoder conversion), cache beside the run."""
    return FitOptions(**{"data": data, "run": run, "labeled_slices": 1, "cache": str(run.parent / "cache"),
                         "show_progress": False, "precision": "fp32", **given})


@pytest.fixture
def graded(tmp_path) -> tuple[Path, Path]:
    """A PNG folder of 6 cases in two groups (column "sex") and a prediction folder for its "test" split."""
    smaller = np.zeros_like(SQUARE)
    smaller[4:8, 4:8] = 1
    cases = {f"c{i}": ({"sex": "F" if i % 2 else "M"}, SQUARE if i % 3 else smaller) for i in range(6)}
    (tmp_path / "png").mkdir()
    return write_png_cases(tmp_path / "png", SQUARE, cases)


@pytest.fixture
def two_evaluations(graded, tmp_path) -> tuple[Path, Path]:
    """Two evaluation JSONs of the graded predictions (grouped by sex, and not grouped)."""
    root, pred = graded
    paths = tmp_path / "grouped.json", tmp_path / "plain.json"
    paths[0].write_text(json.dumps(evaluate(pred, root, "test", "sex", show_progress=False, n_boot=20)))
    paths[1].write_text(json.dumps(evaluate(pred, root, "test", show_progress=False)))
    return paths


# --- a misspelled or missing argument -----------------------------------------------------------

@pytest.mark.parametrize("call, named", [
    (lambda p: FitOptions(data=p, run=p / "run", labelled_cases=1), "'labelled_cases' (did you mean 'labeled_cases'"),
    (lambda p: FitOptions(data=p, labeled_cases=1), "'run'"),
    (lambda p: FewShotConfig(step=2), "'step' (did you mean 'steps'"),
    (lambda p: predict(p / "run", p, p / "pred", cache=p / "cache"), "'cache' (did you mean 'cache_root'"),
    (lambda p: evaluate(p / "pred", p, groupby="sex"), "'groupby' (did you mean 'group_by'"),
    (lambda p: compare_runs(p / "a.json", p / "b.json", n_comparison=3), "(did you mean 'n_comparisons'"),
    (lambda p: write_group_report([p / "a.json"], p / "report", label=["a"]), "(did you mean 'labels'"),
    (lambda p: fit("fewshot", FitOptions(data=p, run=p / "run", labeled_cases=1), steps=2), "'steps'"),
])
def test_a_misspelled_or_missing_argument_is_named_with_the_nearest_one(tmp_path, call, named):
    """Python's own TypeError ("unexpected keyword argument") names neither the function's spelling (American
    ``labeled``, ``cache_root`` beside FitOptions' ``cache``) nor what the function does take."""
    with pytest.raises(FewsamError, match="takes") as raised:
        call(tmp_path)
    assert named in str(raised.value)
    assert list(tmp_path.iterdir()) == []


# --- an argument of the wrong kind ---------------------------------------------------------------

@pytest.mark.parametrize("call, named", [
    (lambda root, pred, evals, out: evaluate(None, root, "test"), "pred must be a path, not None"),
    (lambda root, pred, evals, out: evaluate([pred], root, "test"), "pred must be a path"),
    (lambda root, pred, evals, out: evaluate(pred, root, 1), "split must be text or None, not 1"),
    (lambda root, pred, evals, out: evaluate(pred, root, "test", group_by=1), "group_by must be text or None"),
    (lambda root, pred, evals, out: evaluate(pred, root, "test", "sex", alpha="1"), "alpha must be a number"),
    (lambda root, pred, evals, out: evaluate(pred, root, "test", "sex", n_boot="10"), "n_boot must be a whole"),
    (lambda root, pred, evals, out: evaluate(pred, root, "test", "sex", n_boot=10.5), "n_boot must be a whole"),
    (lambda root, pred, evals, out: evaluate(pred, root, "test", "sex", attributes=[root]), "attributes must be"),
    (lambda root, pred, evals, out: compare_runs(None, evals[1]), "a must be a path, not None"),
    (lambda root, pred, evals, out: compare_runs(json.loads(evals[0].read_text(encoding="utf-8")), evals[1]),
     "a must be a path"),
    (lambda root, pred, evals, out: compare_runs(*evals, n_comparisons="3"), "n_comparisons must be a whole"),
    (lambda root, pred, evals, out: compare_runs(*evals, n_comparisons=2.5), "n_comparisons must be a whole"),
    (lambda root, pred, evals, out: write_group_report(list(evals), None), "out_dir must be a path, not None"),
    (lambda root, pred, evals, out: write_group_report(list(evals), out, title=None), "title must be text"),
    (lambda root, pred, evals, out: write_group_report(list(evals), out, overwrite="no"), "overwrite must be True"),
    (lambda root, pred, evals, out: fit(["fewshot"], FitOptions(data=root, run=out, labeled_cases=1)),
     "method must be text"),
    # a value out of range, named as the caller's argument, not as the command line's flag
    (lambda root, pred, evals, out: evaluate(pred, root, "test", "sex", alpha=-1.0), "^alpha must be a finite"),
    (lambda root, pred, evals, out: compare_runs(*evals, metric="hd"), "^metric must be one of"),
    (lambda root, pred, evals, out: write_group_report(list(evals), out, ["a"]), "^labels gives 1 names"),
    (lambda root, pred, evals, out: write_group_report(list(evals), out, ["a", ""]),
     "^labels \\['a', ''\\] leaves a run without a name"),
])
def test_an_argument_of_the_wrong_kind_is_named_before_anything_is_written(graded, two_evaluations, tmp_path,
                                                                            call, named):
    """None for a path, a list for a split, text for a number: a TypeError or AttributeError from pathlib,
    numpy or a string method, raised half-way, named none of the caller's arguments."""
    root, pred = graded
    with pytest.raises(FewsamError, match=named):
        call(root, pred, two_evaluations, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- one path where a list is read, and lists of the wrong things --------------------------------

@pytest.mark.parametrize("call", [
    lambda p: embed_dataset(p, cache_root=p / "cache", ray_workers=4, show_progress=False),
    lambda p: predict(p / "run", p, p / "pred", ray_workers=4, show_progress=False),
])
def test_ray_workers_without_a_cluster_is_refused_in_python_words(tmp_path, call):
    """The command line refused --ray-workers without --ray; a Python caller's ray_workers=4 was dropped
    and the work ran here in one process, as if it had been spread."""
    with pytest.raises(FewsamError, match=r"^ray_workers needs ray \(auto, local"):
        call(tmp_path)
    assert not (tmp_path / "pred").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("given, named", [
    (lambda evals: str(evals[0]), "evaluations must be a list of evaluation JSON paths"),
    (lambda evals: evals[0], "evaluations must be a list of evaluation JSON paths"),
    (lambda evals: [], "evaluations names no evaluation"),
    (lambda evals: [json.loads(p.read_text(encoding="utf-8")) for p in evals],
     "evaluations must be a list of evaluation JSON"),
    (lambda evals: [evals[0], None], "evaluations must be a list of evaluation JSON"),
])
def test_the_report_takes_a_list_of_evaluation_paths_and_says_so(two_evaluations, tmp_path, given, named):
    """One path as a string was read as a list of one-letter paths ("cannot read evaluation /"); a Path was a
    TypeError from unpacking it; an empty list wrote a report of nothing."""
    with pytest.raises(FewsamError, match=named):
        write_group_report(given(two_evaluations), tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_the_report_labels_are_a_list_not_the_command_lines_comma_text(two_evaluations, tmp_path):
    """``labels="A,B"`` (the spelling of ``--labels``) was counted as three names, one per character."""
    with pytest.raises(FewsamError, match=r"labels must be a list of names, one per evaluation \(\['A', 'B'\]"):
        write_group_report(list(two_evaluations), tmp_path / "report", labels="A,B")
    assert not (tmp_path / "report").exists()
    written = write_group_report(list(two_evaluations), tmp_path / "report", labels=("A", "B"))
    assert "| A |" in written["markdown"].read_text(encoding="utf-8")


@pytest.mark.parametrize("n_boot", [0, -1])
def test_evaluate_refuses_a_bootstrap_of_no_draws(graded, n_boot):
    """0 draws gave no confidence interval without a word; -1 a ValueError from numpy."""
    root, pred = graded
    with pytest.raises(FewsamError, match=f"n_boot must be at least 1, not {n_boot}"):
        evaluate(pred, root, "test", "sex", show_progress=False, n_boot=n_boot)


def test_evaluate_names_bins_given_as_a_list(graded):
    """Bins are the text of --bins ("age:60") or a Bins: a list of edges was an AttributeError from the parser."""
    root, pred = graded
    with pytest.raises(FewsamError, match="bins must be text such as 'sex:EDGE"):
        evaluate(pred, root, "test", "sex", show_progress=False, bins=[25, 30])


def test_a_run_whose_method_is_not_a_name_is_refused_naming_it(tmp_path):
    """A hand-edited config.json holding a list as its method was an unhashable-type TypeError."""
    from fewsam.methods import get_method

    with pytest.raises(FewsamError, match=r"unknown method \['fewshot'\]"):
        get_method(["fewshot"])


# --- ~ in paths ------------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """$HOME at tmp_path/home and the working folder elsewhere, so a literal "~" folder would show."""
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "home"


def test_fit_and_predict_read_a_leading_tilde_as_the_home_folder(tiny_sam_phantom, home, tmp_path):
    """As the command line does (``cli.expand_home``): "~/runs/fs" made a folder named "~" in the working
    folder, and config.json recorded the data as <cwd>/~/data, while the data itself was found at home."""
    (home / "data").symlink_to(tiny_sam_phantom)
    fit("fewshot", fit_options(Path("~/data"), Path("~/run"), cache="~/cache"), TWO_STEPS)
    assert (home / "run" / "checkpoint_best.pt").is_file()
    config = json.loads((home / "run" / "config.json").read_text(encoding="utf-8"))
    assert config["data"] == str(tiny_sam_phantom.resolve())
    written = predict("~/run", "~/data", "~/pred", cache_root="~/cache", show_progress=False, precision="fp32")
    assert [p.parent for p in written] == [home / "pred"]
    assert evaluate("~/pred", "~/data", show_progress=False)["n_cases"] == 1
    assert list((tmp_path / "cwd").iterdir()) == []


def test_compare_and_report_read_a_leading_tilde_as_the_home_folder(two_evaluations, home, tmp_path):
    for path in two_evaluations:
        (home / path.name).write_text(path.read_text(encoding="utf-8"))
    assert compare_runs("~/grouped.json", "~/plain.json")["n_cases"] == 6
    written = write_group_report(["~/grouped.json", "~/plain.json"], "~/report")
    assert written["html"] == home / "report" / "report.html" and written["html"].is_file()
    assert list((tmp_path / "cwd").iterdir()) == []


# --- notices: said once per process, written to the log of each piece of work they concern ------------

def test_each_fit_log_names_the_options_its_method_does_not_read(tiny_sam_phantom, tmp_path):
    """One FitOptions shared by the arms of a study: a U-Net fit given --cache says it is unused. The notice
    was said before the fit began collecting its own, so no fit.log held it, the first fit's included."""
    from fewsam.methods.supervised import SupervisedConfig

    for run in ("first", "second"):
        fit("supervised", fit_options(tiny_sam_phantom, tmp_path / run), SupervisedConfig(steps=2, image_size=32))
        log = (tmp_path / run / "fit.log").read_text(encoding="utf-8")
        assert "--cache is not used" in log, log


def test_a_fit_gives_the_caller_back_torch_s_random_numbers(tiny_sam_phantom, tmp_path):
    """The fit seeds torch's global generator with its own seed: a notebook's torch.randn after it drew the
    same numbers after every fit of that seed, whatever the notebook had seeded."""
    from fewsam.methods.supervised import SupervisedConfig

    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    fit("supervised", fit_options(tiny_sam_phantom, tmp_path / "unet"), SupervisedConfig(steps=2, image_size=32))
    assert torch.equal(torch.rand(4), expected)


def test_a_prediction_log_holds_its_own_notices_not_those_of_earlier_fits(tiny_sam_phantom, tmp_path):
    """predict.log listed every notice said in the process so far: after a U-Net fit, a few-shot
    prediction's log said "U-Net student in fp32", which it never ran."""
    from fewsam.methods.supervised import SupervisedConfig

    fit("fewshot", fit_options(tiny_sam_phantom, tmp_path / "fewshot"), TWO_STEPS)
    fit("supervised", fit_options(tiny_sam_phantom, tmp_path / "unet"), SupervisedConfig(steps=2, image_size=32))
    for out in ("pred_a", "pred_b"):
        predict(tmp_path / "fewshot", tiny_sam_phantom, tmp_path / out, cache_root=tmp_path / "cache",
                show_progress=False, precision="fp32")
        log = (tmp_path / out / "predict.log").read_text(encoding="utf-8")
        assert "U-Net student" not in log and "--cache is not used" not in log, log
        assert "prompt decoder in fp32" in log, log  # its own notice, in each log though said once


# --- folders of the wrong kind --------------------------------------------------------------------

def test_predict_given_a_file_of_the_run_names_the_run_folder(tiny_sam_phantom, tmp_path):
    """A run's config.json or checkpoint given as the run was "config.json is not a fewsam run folder (no
    config.json)", which contradicts itself and hides that the folder above it is the run."""
    fit("fewshot", fit_options(tiny_sam_phantom, tmp_path / "run"), TWO_STEPS)
    for name in ("config.json", "checkpoint_best.pt"):
        with pytest.raises(FewsamError, match=f"is a file of the run folder {tmp_path / 'run'}; give that folder"):
            predict(tmp_path / "run" / name, tiny_sam_phantom, tmp_path / "pred")
    with pytest.raises(FewsamError, match="is a file, not a run folder; give the folder `fewsam fit` wrote"):
        predict(tiny_sam_phantom / "dataset.json", tiny_sam_phantom, tmp_path / "pred")
    assert not (tmp_path / "pred").exists()


# --- the README's example, and what the functions return -------------------------------------------

def test_the_readme_python_example_runs_from_one_import(tiny_sam_phantom, tmp_path, monkeypatch):
    """The README's Python block, on a tiny ACDC folder (2 steps, 1 labelled case): evaluate, compare and
    report were not in ``fewsam.api``, the module the README imports every command from."""
    import re

    from conftest import write_tiny_acdc

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    root = write_tiny_acdc(tmp_path / "data" / "acdc", ["patient010_frame01"])
    (root / "test.list").write_text("patient010_frame01\n")
    monkeypatch.setenv("HOME", str(tmp_path))  # the default cache, ~/.cache/fewsam, inside tmp_path
    monkeypatch.chdir(tmp_path)
    block = block.replace("labeled_cases=3", "labeled_cases=1").replace("FewShotConfig()", repr(TWO_STEPS))
    exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "pred" / "fewshot3" / "patient010_frame01.h5").is_file()
    import fewsam.api

    assert {"evaluate", "compare_runs", "write_group_report"} <= set(fewsam.api.__all__)


def test_what_the_entry_points_return_is_plain_data(two_evaluations, tmp_path):
    """An evaluation and a comparison are the JSON the command line writes (strict JSON: no NaN)."""
    from dataclasses import asdict

    from fewsam.train import TrainResult

    comparison = compare_runs(*two_evaluations)
    assert json.loads(json.dumps(comparison, allow_nan=False)) == comparison
    evaluation = json.loads(two_evaluations[0].read_text(encoding="utf-8"))
    assert {"mean", "per_class", "cases", "groups", "es_dice"} <= set(evaluation)
    assert json.dumps(asdict(TrainResult(0.5, 2, 2, 1.0)))


def test_a_list_file_given_as_a_path_object_is_a_split(tiny_sam_phantom, tmp_path):
    """Splits are names or list files, and the type check takes a Path for them: it then ended in
    "'PosixPath' object has no attribute 'endswith'" (fit, predict, embed), and evaluate's result held the
    Path, which json.dumps refuses."""
    from fewsam.api import embed_dataset

    cases = tmp_path / "val_cases.list"
    cases.write_text("phantom_002\n")
    fit("fewshot", fit_options(tiny_sam_phantom, tmp_path / "run", val_split=cases), TWO_STEPS)
    assert json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))["val_split"] == str(cases)
    predict(tmp_path / "run", tiny_sam_phantom, tmp_path / "pred", split=cases, cache_root=tmp_path / "cache",
            show_progress=False, precision="fp32")
    result = evaluate(tmp_path / "pred", tiny_sam_phantom, split=cases, show_progress=False)
    assert json.loads(json.dumps(result))["split"] == str(cases) and result["n_cases"] == 1
    assert embed_dataset(tiny_sam_phantom, split=cases, cache_root=tmp_path / "cache", show_progress=False,
                         precision="fp32")["cases"] == 1
    again = fit("fewshot", fit_options(tiny_sam_phantom, tmp_path / "run", val_split=cases, cache=tmp_path / "cache"),
                TWO_STEPS)
    assert again.already_finished  # config.json compared with the same options: a Path was a json TypeError


# --- Ctrl-C in a notebook, then the same call again ---------------------------------------------------

def test_a_fit_interrupted_in_a_notebook_resumes_in_the_same_process_to_the_same_weights(
        tiny_sam_phantom, tmp_path):
    """KeyboardInterrupt caught by the caller (a notebook cell stopped): the run folder's lock is released, its
    log says so, and the same call resumes from the last checkpoint to the weights of an uninterrupted fit."""
    import torch

    steps = FewShotConfig(augmented_views=0, steps=4, batch_size=1, val_every=2, views=1, test_mirroring=False, sam_refinement=False)
    with pytest.raises(KeyboardInterrupt), training_raising_at_step(3, KeyboardInterrupt()):
        fit("fewshot", fit_options(tiny_sam_phantom, tmp_path / "stopped"), steps)
    resumed = fit("fewshot", fit_options(tiny_sam_phantom, tmp_path / "stopped"), steps)
    fit("fewshot", fit_options(tiny_sam_phantom, tmp_path / "straight"), steps)
    assert resumed.steps_run == 4 and not resumed.already_finished
    log = (tmp_path / "stopped" / "fit.log").read_text(encoding="utf-8")
    assert "interrupted; the same command resumes" in log and "resumed at step 2 of 4" in log
    a, b = (torch.load(tmp_path / run / "checkpoint_best.pt", weights_only=True)["module"]
            for run in ("stopped", "straight"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_report_reads_the_evaluations_of_a_glob(two_evaluations, tmp_path):
    """``Path.glob`` gives a generator: it was used up by the check for one file given twice, and the report
    then held no run at all."""
    written = write_group_report(sorted(tmp_path.glob("*.json")).__iter__(), tmp_path / "report")
    markdown = written["markdown"].read_text(encoding="utf-8")
    assert "| grouped |" in markdown and "| plain |" in markdown
    assert write_group_report(tmp_path.glob("grouped.json"), tmp_path / "one")["html"].is_file()


# --- overlays of arrays read by other tools -----------------------------------------------------------

def test_an_overlay_takes_a_label_map_read_as_floats_and_names_a_shape_mismatch(tmp_path):
    """nibabel's get_fdata() gives label maps as float64: the overlay was an IndexError ("arrays used as
    indices must be of integer type"), and a prediction of another size one about a boolean index."""
    from PIL import Image

    from fewsam.report import save_overlay

    image = np.random.default_rng(0).random((16, 16))
    written = save_overlay(image, SQUARE.astype(np.float64), SQUARE.astype(np.float64), tmp_path / "a.png")
    assert np.array_equal(np.asarray(Image.open(written)), np.asarray(Image.open(
        save_overlay(image, SQUARE, SQUARE, tmp_path / "b.png"))))
    with pytest.raises(FewsamError, match=r"pred has shape \(8, 8\) but the image \(16, 16\)"):
        save_overlay(image, SQUARE[:8, :8], None, tmp_path / "c.png")
    with pytest.raises(FewsamError, match="pred must hold class indices"):
        save_overlay(image, SQUARE * 0.5, None, tmp_path / "d.png")
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "d.png").exists()


# --- evaluate on folders that hold no predictions of the split ------------------------------------------

def _renamed(pred: Path, prefix: str) -> Path:
    """``pred`` with every prediction renamed, as another dataset's cases would be."""
    for path in list(pred.rglob("*.png")):
        path.rename(path.with_name(prefix + path.name))
    return pred


@pytest.mark.parametrize("make_pred, told", [
    (lambda tmp, pred: tmp / "missing", "does not exist; run `fewsam predict` first"),
    (lambda tmp, pred: (tmp / "empty").mkdir() or tmp / "empty", "is empty; predict this split into it first"),
    (lambda tmp, pred: pred / "img" / "c1.png", "is a file; give the prediction folder"),
    (lambda tmp, pred: _renamed(pred, "patient_"), "holds none of this split's predictions"),
])
def test_evaluate_on_a_folder_that_holds_no_predictions_of_the_split_says_what_it_holds(graded, tmp_path, make_pred,
                                                                                        told):
    """Predictions of another dataset or split, or named by another tool, are told apart from a missing
    or empty folder, so the user knows which to fix."""
    root, pred = graded
    with pytest.raises(FewsamError, match=told):
        evaluate(make_pred(tmp_path, pred), root, "test", show_progress=False)


# --- notices reach a Python caller who set up no logging ---------------------------------------------

NOTEBOOK = """
import io, logging, sys
from fewsam.progress import say_once
sys.stderr = first = io.StringIO()  # a notebook swaps the stream after fewsam is imported
say_once("a notice for the notebook")
logging.basicConfig(stream=(configured := io.StringIO()), format="ROOT %(message)s")
sys.stderr = second = io.StringIO()
say_once("a notice for the configured application")
sys.__stdout__.write(repr([first.getvalue(), second.getvalue(), configured.getvalue()]))
"""


def test_notices_reach_a_python_caller_without_logging_and_once_with_it():
    """From Python, fewsam's notices (the encoder chosen, an option left unused) were dropped unless the
    caller had configured logging: a notebook user read none of them. Now they go to the stderr of the
    moment, and once the application has its own logging, only there (not twice)."""
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    out = subprocess.run([sys.executable, "-c", NOTEBOOK], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}).stdout
    first, second, configured = eval(out)  # noqa: S307 (the script's own repr of three strings)
    assert first == "a notice for the notebook\n"
    assert second == "" and configured == "ROOT a notice for the configured application\n"


def test_embed_refuses_a_split_that_is_not_there_before_it_loads_the_model(tiny_sam_phantom, tmp_path, monkeypatch):
    """A mistyped split was refused only after the model was loaded and its encoder compiled (seconds to a
    minute): the data's own mistake is told first."""
    import fewsam.api

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the split was checked")

    monkeypatch.setattr(fewsam.api, "load_model", no_model)
    with pytest.raises(FewsamError, match="nosuch"):
        embed_dataset(tiny_sam_phantom, split="nosuch", cache_root=tmp_path / "cache", show_progress=False)


# --- fits on threads of one process ---------------------------------------------------------------

def test_two_fits_on_two_threads_each_log_only_their_own_lines(tiny_sam_phantom, tmp_path, monkeypatch):
    """A user's thread pool running two small fits: they run one after the other (torch's generators are the
    process's), and each RUN/fit.log holds its own lines alone (progress, events, notices), though the log
    files are open in the whole process."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from fewsam.methods import fewshot
    from fewsam.progress import record

    train = fewshot.train

    def train_beside_the_other(task, config, run_dir, show_progress):
        record(f"training into {run_dir}")
        return train(task, config, run_dir, show_progress)

    monkeypatch.setattr(fewshot, "train", train_beside_the_other)
    steps = {"two": 2, "three": 3}
    with ThreadPoolExecutor(max_workers=2) as pool:
        fits = [pool.submit(fit, "fewshot", fit_options(tiny_sam_phantom, tmp_path / name),
                            replace(TWO_STEPS, steps=n)) for name, n in steps.items()]
        for done in fits:
            done.result()
    for (name, n), other in zip(steps.items(), reversed(steps)):
        lines = [line.split(" ", 2)[2] for line in (tmp_path / name / "fit.log").read_text("utf-8").splitlines()]
        assert f"training into {tmp_path / name}" in lines and f"training into {tmp_path / other}" not in lines
        progress = [line for line in lines if line.startswith("fit ")]  # its own steps, to its own end
        assert progress[-1].startswith(f"fit {n}/{n} (100%)") and all(f"/{n} (" in line for line in progress)
        assert [line for line in lines if line.startswith("validation at step")] == [
            line for line in lines if line.startswith(f"validation at step {n}:")]
        for once in ("host: ", "prompt decoder in fp32", "fewshot finished: "):  # its own header, notice, outcome
            assert sum(line.startswith(once) for line in lines) == 1, (once, lines)
