"""Group attributes and group metrics as a fairness study meets them.

Covers: an empty cell of a joined attribute table keeps the value the index gives; a case whose
index and joined table put it in different groups is refused, naming both; group values that
differ only in case ("Female", "female") are refused in evaluate and in fair fit, not scored as
two groups; "Unknown", "missing", "?" and "-" in a group column are no value (no group, counted
as missing), as FairSeg's own -1 is; bootstrap CIs resample patients (a patient's frames or slices
are drawn together), so a group of one patient has no interval; ES-Dice measures the groups
around the Dice of the cases they hold, so cases of no group add no disparity; over a single group
(bins the data all falls in one of) ES-Dice and the worst-group gap are n/a, not Dice and 0;
compare and report pair a patient's frames as one subject, not as independent pairs.
"""

import numpy as np
import pytest

from conftest import assert_one_line_error, run_fewsam, write_png_cases

from fewsam.data import open_dataset
from fewsam.errors import DataError
from fewsam.fairness import case_groups
from fewsam.metrics import bootstrap_ci
from fewsam.evaluate import evaluate

# Every label is rows 0-1 of a 10x10 image; FULL is perfect (Dice 1), HALF covers one row (Dice 2/3).
LABEL = np.zeros((10, 10), np.uint8)
LABEL[:2] = 1
HALF = np.zeros((10, 10), np.uint8)
HALF[0] = 1


def png_study(tmp_path, cases):
    """(data root, prediction folder) of ``cases``: id -> (attribute columns, prediction)."""
    return write_png_cases(tmp_path, LABEL, cases)


def sex_study(tmp_path):
    """Three cases: a (F) predicted perfectly, b and c (M) each half (Dice 2/3)."""
    return png_study(tmp_path, {"a": ({"sex": "F"}, LABEL), "b": ({"sex": "M"}, HALF), "c": ({"sex": "M"}, HALF)})


def evaluate_command(root, pred, group_by, *options, cwd):
    """``fewsam evaluate`` of ``pred`` on the test split, grouped by ``group_by``, run as a user runs it."""
    return run_fewsam("evaluate", "--pred", str(pred), "--data", str(root), "--split", "test",
                      "--group-by", group_by, *options, "--quiet", cwd=cwd)


def group_dice(result):
    return {name: (g["n"], round(g["mean"]["dice"], 4)) for name, g in result["groups"].items()}


def test_empty_cell_of_joined_table_keeps_the_index_value(tmp_path):
    root, pred = sex_study(tmp_path)
    extra = tmp_path / "scanner.csv"
    extra.write_text("case,sex,scanner\na,,X\nb,M,Y\nc,,Y\n")
    result = evaluate(pred, root, "test", "sex", show_progress=False, attributes=extra, n_boot=20)
    assert group_dice(result) == {"F": (1, 1.0), "M": (2, round(2 / 3, 4))}
    assert result["missing_group"] == 0


def test_index_and_joined_table_disagreeing_on_the_group_is_refused(tmp_path):
    root, pred = sex_study(tmp_path)
    extra = tmp_path / "demographics.csv"
    extra.write_text("case,sex\na,F\nb,F\nc,M\n")
    result = evaluate_command(root, pred, "sex", "--attributes", str(extra), cwd=tmp_path)
    assert_one_line_error(result, "case img/b has sex = 'M' in the index but 'F' in")
    dataset = open_dataset(root, extra)  # fair scaling groups its labelled cases the same way
    with pytest.raises(DataError, match="case img/b has sex = 'M'"):
        case_groups(dataset, dataset.split("test"), "sex", cases="labelled case")
    # another column of the same tables may disagree: only the group column decides the numbers
    ok = evaluate(pred, root, "test", "sex", show_progress=False, n_boot=20)
    assert group_dice(ok) == {"F": (1, 1.0), "M": (2, round(2 / 3, 4))}


def test_values_in_one_bin_do_not_disagree(tmp_path):
    root, pred = png_study(tmp_path, {"a": ({"bmi": "26"}, LABEL), "b": ({"bmi": "31"}, HALF)})
    extra = tmp_path / "bmi.csv"
    extra.write_text("case,bmi\na,27.5\nb,33\n")
    result = evaluate(pred, root, "test", "bmi", show_progress=False, attributes=extra, n_boot=20)
    assert group_dice(result) == {"25-30": (1, 1.0), ">=30": (1, round(2 / 3, 4))}
    with pytest.raises(DataError, match="has bmi = 31 in the index but 19"):
        extra.write_text("case,bmi\na,27.5\nb,19\n")
        evaluate(pred, root, "test", "bmi", show_progress=False, attributes=extra, n_boot=20)


def test_group_values_differing_only_in_case_are_refused(tmp_path):
    root, pred = png_study(tmp_path, {"a": ({"sex": "Female"}, LABEL), "b": ({"sex": "female "}, HALF),
                                      "c": ({"sex": "male"}, HALF)})
    result = evaluate_command(root, pred, "sex", cwd=tmp_path)
    assert_one_line_error(result, "sex has the values 'Female' and 'female', which differ only in case")
    dataset = open_dataset(root)
    with pytest.raises(DataError, match="differ only in case"):
        case_groups(dataset, dataset.split("test"), "sex", cases="labelled case")


@pytest.mark.parametrize("marker", ["Unknown", "missing", "?", "-"])
def test_unknown_markers_are_no_group(tmp_path, marker):
    root, pred = png_study(tmp_path, {"a": ({"race": marker}, LABEL), "b": ({"race": "Black"}, HALF),
                                      "c": ({"race": "White"}, LABEL), "d": ({"race": "White"}, HALF)})
    result = evaluate(pred, root, "test", "race", show_progress=False, n_boot=20)
    assert group_dice(result) == {"Black": (1, round(2 / 3, 4)), "White": (2, round(5 / 6, 4))}
    assert result["missing_group"] == 1 and result["missing_group_cases"] == ["img/a"]
    # ES-Dice over the two known groups: their cases' Dice (2/3 + 1 + 2/3)/3 = 7/9;
    # spread |2/3 - 7/9| + |5/6 - 7/9| = 1/6
    assert result["es_dice"] == pytest.approx((7 / 9) / (1 + 1 / 6))


def dice_record(case, dice, subject):
    return {"case": case, "subject": subject, "per_class": {"fg": {"dice": dice, "iou": dice / (2 - dice)}},
            "group": None}


def test_bootstrap_draws_patients_not_their_frames():
    # two frames per patient, equal in number: a replicate's mean over its drawn frames is the mean
    # of its drawn patients' frame means, so the interval is the bootstrap over patient means
    frames = [dice_record(f"p{i}_frame{f}", d, f"p{i}") for i, pair in enumerate([(0.9, 0.7), (0.6, 0.4), (0.95, 0.85),
                                                                                   (0.5, 0.3), (0.8, 0.8)])
              for f, d in enumerate(pair)]
    patients = [dice_record(f"p{i}", m, f"p{i}") for i, m in enumerate([0.8, 0.5, 0.9, 0.4, 0.8])]
    by_frame = bootstrap_ci(frames, np.random.default_rng(3), 500)["dice"]
    by_patient = bootstrap_ci(patients, np.random.default_rng(3), 500)["dice"]
    assert by_frame == pytest.approx(by_patient)


def test_group_of_one_patient_has_no_interval(tmp_path):
    root, pred = png_study(tmp_path, {"a1": ({"patient": "p1", "site": "A"}, LABEL),
                                      "a2": ({"patient": "p1", "site": "A"}, HALF),
                                      "b1": ({"patient": "p2", "site": "B"}, HALF),
                                      "b2": ({"patient": "p3", "site": "B"}, LABEL)})
    result = evaluate(pred, root, "test", "site", show_progress=False, n_boot=50)
    assert result["groups"]["A"]["n"] == 2 and result["groups"]["A"]["ci95"] == {"dice": None, "iou": None}
    lo, hi = result["groups"]["B"]["ci95"]["dice"]
    assert 2 / 3 <= lo < hi <= 1


def test_cases_of_no_group_add_no_disparity(tmp_path):
    # sites A and B score alike (2/3 each); the two cases of no site score 1
    root, pred = png_study(tmp_path, {"a": ({"site": "A"}, HALF), "b": ({"site": "B"}, HALF),
                                      "u": ({"site": ""}, LABEL), "v": ({"site": "unknown"}, LABEL)})
    result = evaluate(pred, root, "test", "site", show_progress=False, n_boot=20)
    assert result["mean"]["dice"] == pytest.approx(5 / 6)  # all four cases
    assert result["es_dice"] == pytest.approx(2 / 3) and result["es_iou"] == pytest.approx(1 / 2)
    assert result["per_class_equity"]["foreground"]["es_dice"] == pytest.approx(2 / 3)
    assert result["worst_group_gap"] == 0


def test_one_group_is_no_evidence_of_fairness(tmp_path):
    # every BMI is below 100: the bins leave one group, whose "disparity" would be 0
    root, pred = png_study(tmp_path, {"a": ({"bmi": "22"}, LABEL), "b": ({"bmi": "31"}, HALF)})
    result = evaluate(pred, root, "test", "bmi", bins="bmi:100,200", show_progress=False, n_boot=20)
    assert list(result["groups"]) == ["<100"]
    assert result["es_dice"] is None and result["es_iou"] is None and result["worst_group_gap"] is None
    assert result["per_class_equity"]["foreground"] == {"es_dice": None, "es_iou": None, "worst_group_gap": None}
    shown = evaluate_command(root, pred, "bmi", "--bins", "bmi:100,200", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "ES-Dice n/a  ES-IoU n/a  worst-group gap n/a" in shown.stdout
    assert "every case with a 'bmi' value is in group '<100'" in shown.stdout


def _evaluation(path, scores):
    """An evaluation JSON of per-case Dice ``scores``: case -> (subject, dice)."""
    import json

    cases = [{"case": c, "subject": subj, "per_class": {"fg": {"dice": d, "iou": d, "hd95": 1.0, "asd": 1.0}}}
             for c, (subj, d) in scores.items()]
    path.write_text(json.dumps({"cases": cases}))
    return path


def test_compare_pairs_a_patients_frames_as_one_subject(tmp_path):
    from scipy.stats import wilcoxon

    from fewsam.compare import compare_runs, describe

    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in range(8)]
    a_scores, b_scores = {}, {}
    for p in patients:
        for frame in ("ed", "es"):
            a_scores[f"{p}_{frame}"] = (p, float(rng.uniform(0.6, 0.9)))
            b_scores[f"{p}_{frame}"] = (p, float(rng.uniform(0.6, 0.9)))
    result = compare_runs(_evaluation(tmp_path / "a.json", a_scores), _evaluation(tmp_path / "b.json", b_scores))
    mean = lambda scores, p: (scores[f"{p}_ed"][1] + scores[f"{p}_es"][1]) / 2  # noqa: E731
    expected = wilcoxon([mean(a_scores, p) for p in patients], [mean(b_scores, p) for p in patients])
    assert result["n"] == 8 and result["n_cases"] == 16
    assert result["p"] == pytest.approx(float(expected.pvalue))
    assert describe(result).startswith("8 paired subjects (16 cases, averaged per subject)")


def test_a_value_holding_the_separator_unquoted_is_refused_naming_its_line(tmp_path):
    """'Paris, France' unquoted split into two cells: case b's site was read as 'Paris' and its sex as
    ' France', the 'F' dropped, and the groups were scored on values the table does not give."""
    root, pred = sex_study(tmp_path)
    extra = tmp_path / "sites.csv"
    extra.write_text("case,site,sex\na,Lyon,F\nb,Paris, France,F\nc,Lyon,M\n")
    result = evaluate_command(root, pred, "site", "--attributes", str(extra), cwd=tmp_path)
    assert_one_line_error(result, "sites.csv: line 3 has 4 cells but the header names 3 columns (beyond them: 'F')")
    extra.write_text('case,site,sex\na,Lyon,F\nb,"Paris, France",M\nc,Lyon,M\n,,,\n')  # quoted; padded row
    assert group_dice(evaluate(pred, root, "test", "site", show_progress=False, attributes=extra, n_boot=20)) == {
        "Lyon": (2, round((1 + 2 / 3) / 2, 4)), "Paris, France": (1, round(2 / 3, 4))}


def test_a_quote_never_closed_is_refused_not_read_as_one_cell(tmp_path):
    """An opened quote swallowed the rest of the table into one cell: one group named 'M\\nc,M', the
    later cases of no group, and no word of it."""
    root, pred = sex_study(tmp_path)
    extra = tmp_path / "demographics.csv"
    extra.write_text('case,age\na,70\nb,"61\nc,30\n')
    result = evaluate_command(root, pred, "age", "--attributes", str(extra), cwd=tmp_path)
    assert_one_line_error(result, "a double quote opened on line 3 is never closed")


def test_an_index_row_of_more_cells_than_its_header_is_refused(tmp_path):
    root, _ = png_study(tmp_path, {"a": ({"site": "Lyon"}, LABEL), "b": ({"site": "Lyon"}, HALF)})
    index = root / "index.csv"
    index.write_text(index.read_text().replace("Lyon,test\n", "Paris, France,test\n", 1))
    assert_one_line_error(run_fewsam("info", str(root), cwd=tmp_path),
                          "index.csv: line 2 has 5 cells but the header names 4 columns")
