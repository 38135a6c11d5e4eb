"""The Python API as a notebook user calls it: a misspelled keyword, an argument of the wrong kind, a single
path where a list is read, or a folder of the wrong kind each end in one FewsamError naming the argument and
what to give, before anything is written; and what the entry points return is plain data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_png_cases
from fewsam.api import FitOptions, fit, predict
from fewsam.compare import compare_runs
from fewsam.errors import FewsamError
from fewsam.evaluate import evaluate
from fewsam.methods.fewshot import FewShotConfig
from fewsam.report import write_group_report

TWO_STEPS = FewShotConfig(steps=2, batch_size=1)
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
    (lambda root, pred, evals, out: compare_runs(json.loads(evals[0].read_text()), evals[1]), "a must be a path"),
    (lambda root, pred, evals, out: compare_runs(*evals, n_comparisons="3"), "n_comparisons must be a whole"),
    (lambda root, pred, evals, out: compare_runs(*evals, n_comparisons=2.5), "n_comparisons must be a whole"),
    (lambda root, pred, evals, out: write_group_report(list(evals), None), "out_dir must be a path, not None"),
    (lambda root, pred, evals, out: write_group_report(list(evals), out, title=None), "title must be text"),
    (lambda root, pred, evals, out: write_group_report(list(evals), out, overwrite="no"), "overwrite must be True"),
    (lambda root, pred, evals, out: fit(["fewshot"], FitOptions(data=root, run=out, labeled_cases=1)),
     "method must be text"),
])
def test_an_argument_of_the_wrong_kind_is_named_before_anything_is_written(graded, two_evaluations, tmp_path,
                                                                            call, named):
    """None for a path, a list for a split, text for a number: a TypeError or AttributeError from pathlib,
    numpy or a string method, raised half-way, named none of the caller's arguments."""
    root, pred = graded
    with pytest.raises(FewsamError, match=named):
        call(root, pred, two_evaluations, tmp_path / "out")
    assert not (tmp_path / "out").exists()
