"""`evaluate --both-empty`: a class absent from both a prediction and its label counts as Dice 1 (BraTS,
MONAI with ignore_empty=False) or is left out of the means (nnU-Net), and `compare`
refuses to pair evaluations that counted it differently."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import run_fewsam
from fewsam.compare import compare_runs, describe
from fewsam.errors import DataError
from fewsam.evaluate import evaluate
from fewsam.metrics import binary_metrics


def test_both_empty_masks_score_perfect_or_nothing():
    empty = np.zeros((4, 4), bool)
    assert binary_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}
    assert binary_metrics(empty, empty, both_empty="skip") == {"dice": None, "iou": None, "hd95": None, "asd": None}
    one = empty.copy()
    one[1, 1] = True
    assert binary_metrics(one, empty, both_empty="skip")["dice"] == 0.0  # only both-empty is left out


@pytest.fixture
def two_cases(tmp_path):
    """Case a holds classes 1 and 2 and its prediction finds half of class 2 (Dice 2/3); case b has no
    class 2 and its prediction none either."""
    root, pred = tmp_path / "data", tmp_path / "pred"
    for folder in (root / "images", root / "labels", pred):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_a = np.zeros((8, 8, 2), np.uint8)
    label_a[1:4, 1:4] = 1
    label_a[5:7, 4:8] = 2
    label_b = np.zeros((8, 8, 2), np.uint8)
    label_b[2:5, 2:5] = 1
    pred_a = label_a.copy()
    pred_a[5:7, 6:8] = 0
    for case, label, predicted in (("a", label_a, pred_a), ("b", label_b, label_b)):
        nib.save(nib.Nifti1Image(rng.random((8, 8, 2)).astype(np.float32), np.eye(4)), root / "images" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labels" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(predicted, np.eye(4)), pred / f"{case}.nii.gz")
    (tmp_path / "cases.txt").write_text("a\nb\n", encoding="utf-8")
    return root, pred, tmp_path / "cases.txt"


def test_skip_leaves_the_absent_class_out_of_the_means(two_cases):
    root, pred, split = two_cases
    perfect = evaluate(pred, root, split=str(split), show_progress=False)
    skipped = evaluate(pred, root, split=str(split), show_progress=False, both_empty="skip")
    class_2 = [name for name in perfect["per_class"] if name not in ("1", "class1")][-1]
    assert perfect["per_class"][class_2]["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert skipped["per_class"][class_2]["dice"] == pytest.approx(2 / 3)
    assert skipped["per_class"][class_2]["dice_missing"] == 1
    assert (perfect["both_empty"], skipped["both_empty"]) == ("perfect", "skip")
    with pytest.raises(DataError, match="--both-empty must be perfect or skip"):
        evaluate(pred, root, split=str(split), show_progress=False, both_empty="nan")


def test_compare_refuses_evaluations_that_count_an_absent_class_differently(two_cases, tmp_path):
    root, pred, split = two_cases
    files = {}
    for rule in ("perfect", "skip"):
        files[rule] = tmp_path / f"{rule}.json"
        files[rule].write_text(json.dumps(evaluate(pred, root, split=str(split), show_progress=False,
                                                   both_empty=rule)), encoding="utf-8")
    with pytest.raises(DataError, match="--both-empty perfect but .* with --both-empty skip"):
        compare_runs(files["perfect"], files["skip"])


def test_cli_prints_a_class_no_case_holds_as_no_value(two_cases):
    """Under skip, a split in which no case holds a class (case b alone has no class 2) gives that class no
    Dice at all: the summary prints n/a and why, where it ended in a TypeError traceback."""
    from typer.testing import CliRunner

    from fewsam.cli import app

    root, pred, split = two_cases
    split.write_text("b\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--data", str(root), "--split", str(split),
                                      "--both-empty", "skip", "--quiet"])
    assert result.exit_code == 0, result.output
    line = [text for text in result.output.splitlines() if "Dice n/a" in text]
    assert len(line) == 1 and "IoU n/a  HD95 n/a (1 with the class in neither prediction nor label" in line[0]


def test_compare_under_skip_counts_a_structure_drawn_where_the_label_has_none(two_cases, tmp_path):
    """Under skip, run A leaves class 2 out of case b (neither its prediction nor the label holds it) and run B
    draws it there (Dice 0): B's case b scores (1 + 0) / 2, as its evaluation's means count it. Paired over
    the classes both runs scored, B's false positive was left out of both and the runs tested as equal."""
    root, pred, split = two_cases
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    for case in ("a", "b"):
        image = nib.load(pred / f"{case}.nii.gz")
        predicted = np.asarray(image.dataobj).copy()
        if case == "b":
            predicted[6:8, 6:8] = 2
        nib.save(nib.Nifti1Image(predicted, image.affine), drawn / f"{case}.nii.gz")
    files = {}
    for name, folder in (("a", pred), ("b", drawn)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(evaluate(folder, root, split=str(split), show_progress=False,
                                                   both_empty="skip")), encoding="utf-8")
    result = compare_runs(files["a"], files["b"])
    case_a = (1 + 2 / 3) / 2
    assert result["mean_a"] == pytest.approx((case_a + 1) / 2)
    assert result["mean_b"] == pytest.approx((case_a + 0.5) / 2)
    assert result["n_no_difference"] == 1 and result["median_diff"] == pytest.approx(0.25)
    assert f"mean of the cases' dice: A {result['mean_a']:.4f}" in describe(result)  # not evaluate's mean over classes
    assert result["one_sided_values"] == 0


def test_compare_ties_equal_scores_listed_in_another_class_order(tmp_path):
    """0.1 + 0.2 + 0.3 and 0.3 + 0.2 + 0.1 differ in the last bit: two evaluations of equal scores whose
    records list the classes in another order must tie (no pair ranked), not differ by rounding."""
    scores = {"a": 0.1, "b": 0.2, "c": 0.3}
    for name, order in (("x", "abc"), ("y", "cba")):
        cases = [{"case": f"c{i}", "per_class": {k: {"dice": scores[k] + i / 8, "iou": 0.5, "hd95": 1.0, "asd": 1.0}
                                                 for k in order}} for i in range(3)]
        (tmp_path / f"{name}.json").write_text(json.dumps({"cases": cases}), encoding="utf-8")
    result = compare_runs(tmp_path / "x.json", tmp_path / "y.json")
    assert result["n_no_difference"] == 3 and result["p"] == 1.0


def test_compare_of_cases_holding_no_class_says_why_they_have_no_dice(two_cases, tmp_path):
    """Every class of case c is absent from its label and prediction: skipped, it has no Dice, and compare
    advised to "compare them on dice or iou", the metric it was comparing."""
    root, pred, _ = two_cases
    empty = np.zeros((8, 8, 2), np.uint8)
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((8, 8, 2)).astype(np.float32), np.eye(4)),
             root / "images" / "c.nii.gz")
    for path in (root / "labels" / "c.nii.gz", pred / "c.nii.gz"):
        nib.save(nib.Nifti1Image(empty, np.eye(4)), path)
    (tmp_path / "c.txt").write_text("c\n", encoding="utf-8")
    for run in ("a", "b"):
        (tmp_path / f"{run}.json").write_text(json.dumps(evaluate(
            pred, root, split=str(tmp_path / "c.txt"), show_progress=False, both_empty="skip")), encoding="utf-8")
    with pytest.raises(DataError, match="without it \\(every class absent from both its label and its prediction, "
                                        "left out by --both-empty skip\\); .* evaluate both runs with --both-empty perfect"):
        compare_runs(tmp_path / "a.json", tmp_path / "b.json")
