"""``fewsam evaluate --group-by`` and ``fewsam compare`` on tiny generated datasets with known answers."""

import json

import numpy as np
import pytest
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from conftest import write_png_cases

from fewsam.cli import app
from fewsam.data import open_dataset, write_prediction
from fewsam.errors import FewsamError
from fewsam.evaluate import evaluate

# Every label is rows 0-1 of a 10x10 image (20 pixels). A "half" prediction covers 10 of them:
# Dice 2*10/(10+20) = 2/3, IoU 10/20 = 1/2. A "full" prediction is perfect: Dice = IoU = 1.
LABEL = np.zeros((10, 10), np.uint8)
LABEL[:2] = 1
HALF = np.zeros((10, 10), np.uint8)
HALF[0] = 1
# case -> (site, bmi, prediction)
CASES = {"a1": ("A", 22.0, LABEL), "a2": ("A", 28.0, HALF), "b1": ("B", 33.0, HALF), "u1": ("", None, LABEL)}


@pytest.fixture
def png_data(tmp_path):
    """A PNG folder (index.csv with site and bmi columns) and a prediction folder for it."""
    return write_png_cases(tmp_path, LABEL, {cid: ({"site": site, "bmi": "" if bmi is None else str(bmi)}, pred)
                                             for cid, (site, bmi, pred) in CASES.items()})


def test_groups_es_dice_and_missing_by_hand(png_data):
    root, pred = png_data
    result = evaluate(pred, root, "test", "site", show_progress=False, n_boot=200)
    # A: (1 + 2/3)/2 = 5/6, B: 2/3; overall (1 + 2/3 + 2/3 + 1)/4 = 5/6 (u1 counts overall only).
    assert list(result["groups"]) == ["A", "B"]
    assert result["groups"]["A"]["n"] == 2 and result["groups"]["B"]["n"] == 1
    assert result["groups"]["A"]["mean"]["dice"] == pytest.approx(5 / 6)
    assert result["groups"]["B"]["mean"]["dice"] == pytest.approx(2 / 3)
    assert result["mean"]["dice"] == pytest.approx(5 / 6)
    # ES-Dice is taken over the cases with a group (u1 has none): their Dice (1 + 2/3 + 2/3)/3 = 7/9,
    # ES-Dice = (7/9) / (1 + |5/6 - 7/9| + |2/3 - 7/9|) = 2/3; IoU: A 3/4, B 1/2, grouped 2/3,
    # ES-IoU = (2/3) / (1 + 1/12 + 1/6) = 8/15.
    assert result["grouped"]["n"] == 3 and result["grouped"]["mean"]["dice"] == pytest.approx(7 / 9)
    assert result["es_dice"] == pytest.approx(2 / 3)
    assert result["es_iou"] == pytest.approx(8 / 15)
    assert result["worst_group_gap"] == pytest.approx(1 / 6)
    assert result["missing_group"] == 1 and result["missing_group_cases"] == ["img/u1"]
    assert result["per_class_equity"]["foreground"]["es_dice"] == pytest.approx(2 / 3)
    lo, hi = result["groups"]["A"]["ci95"]["dice"]
    assert 2 / 3 <= lo <= hi <= 1
    # std mode and alpha: spread = stdev(5/6, 2/3) = (1/6)/sqrt(2)
    std = evaluate(pred, root, "test", "site", alpha=2.0, show_progress=False, es_mode="std", n_boot=10)
    assert std["es_dice"] == pytest.approx((7 / 9) / (1 + 2 * (1 / 6) / np.sqrt(2)))


def test_bins_order_and_explicit_attribute_csv(png_data, tmp_path):
    root, pred = png_data
    binned = evaluate(pred, root, "test", "bmi", show_progress=False, bins="bmi:25,30", n_boot=10)
    assert list(binned["groups"]) == ["<25", "25-30", ">=30"]
    assert binned["bins"] == ["<25", "25-30", ">=30"]
    assert binned["groups"]["<25"]["mean"]["dice"] == pytest.approx(1.0)
    csv = tmp_path / "scanner.csv"
    csv.write_text("case,scanner\na1,X\na2,Y\nb1,Y\nu1,X\n")
    by_scanner = evaluate(pred, root, "test", "scanner", show_progress=False, attributes=csv, n_boot=10)
    assert by_scanner["groups"]["Y"]["mean"]["dice"] == pytest.approx(2 / 3)
    assert by_scanner["missing_group"] == 0


def test_unknown_group_column_lists_available_attributes(png_data, monkeypatch):
    """Refused before any case is scored: a mistyped column was told only after every case was read."""
    import fewsam.evaluate

    def not_before_the_column_is_checked(*args, **kwargs):
        raise AssertionError("a prediction was read before the group column was checked")

    monkeypatch.setattr(fewsam.evaluate, "read_prediction", not_before_the_column_is_checked)
    root, pred = png_data
    with pytest.raises(FewsamError, match=r"no case has a value for attribute 'race'; available attributes: bmi, site"):
        evaluate(pred, root, "test", "race", show_progress=False)


@pytest.mark.parametrize("table, hint", [
    (None, "available attributes: none (add --attributes CSV)"),
    ("case,site\nphantom_000,\nphantom_001,\n", "available attributes: none: no case has a value in any column of "),
], ids=["no-table", "a-table-without-values"])
def test_a_group_column_without_values_says_whether_a_table_was_given(tmp_path, table, hint):
    """With an --attributes table that has the column but no value for these cases, the hint still asked
    the user to add the table they had given."""
    from fewsam.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "phantom", n_train=2, n_val=1, slices=2, seed=1)  # no attributes
    csv = None
    if table is not None:
        csv = tmp_path / "sites.csv"
        csv.write_text(table)
    (tmp_path / "pred").mkdir()
    with pytest.raises(FewsamError) as refused:
        evaluate(tmp_path / "pred", root, "train", "site", show_progress=False, attributes=csv)
    assert str(refused.value) == f"no case has a value for attribute 'site'; {hint}{csv or ''}"


def test_info_says_a_table_given_holds_no_value_rather_than_asking_for_one(tmp_path):
    """`fewsam info --attributes T`, T's rows without values: info asked the user to add the table they gave."""
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.info import dataset_info, describe

    root = write_phantom_dataset(tmp_path / "phantom", n_train=2, n_val=1, slices=2, seed=1)
    csv = tmp_path / "sites.csv"
    csv.write_text("case,site\nphantom_000,\nphantom_001,\n")
    without, given = describe(dataset_info(root)), describe(dataset_info(root, attributes=csv))
    assert "group attributes for --group-by: none (add --attributes CSV)" in without
    assert f"group attributes for --group-by: none: no case has a value in any column of {csv}" in given


def test_cli_prints_groups_and_missing_line(png_data, tmp_path):
    root, pred = png_data
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--data", str(root), "--split", "test",
                                   "--group-by", "site", "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "ES-Dice 0.6667" in res.output
    assert "1 case(s) have no 'site' value" in res.output
    saved = json.loads(out.read_text())
    assert {"groups", "es_dice", "es_iou", "worst_group_gap", "overall_ci95"} <= set(saved)


def _fairseg(root, pred_root):
    """Six generated Harvard-FairSeg npz files (current key names), two per race, and predictions.

    Mask codes: 0 background, -1 rim, -2 cup. Label: rim rows 0-3, cup rows 4-5 (16x16).
    Asian: perfect; Black: cup predicted as rim (cup Dice 0, rim Dice 2*64/(64+96) = 0.8);
    White: perfect on one case, cup missed (as background) on the other (cup Dice 0, rim 1).
    """
    root.mkdir()
    mask = np.zeros((16, 16), np.int8)
    mask[:4] = -1
    mask[4:6] = -2
    classes = np.where(mask == -1, 1, np.where(mask == -2, 2, 0)).astype(np.uint8)
    wrong_cup = np.where(classes == 2, 1, classes).astype(np.uint8)
    no_cup = np.where(classes == 2, 0, classes).astype(np.uint8)
    preds = {"Asian": [classes, classes], "Black": [wrong_cup, wrong_cup], "White": [classes, no_cup]}
    rng = np.random.default_rng(0)
    for race_code, race in enumerate(("Asian", "Black", "White")):
        for k in range(2):
            name = f"data_{race_code * 2 + k:05d}.npz"
            np.savez(root / name, slo_fundus=rng.integers(0, 255, (16, 16), dtype=np.uint8), disc_cup_mask=mask,
                     race=race_code, gender=k, age=70.0 - 20 * k, ethnicity=-1, language=0, maritalstatus=0)
    dataset = open_dataset(root)
    for cid in dataset.split("all"):
        case = dataset.load(cid)
        write_prediction(case, preds[case.attributes["race"]][int(cid[-1]) % 2][None], pred_root)


def test_fairseg_npz_end_to_end_by_race(tmp_path):
    data, pred, out = tmp_path / "fairseg", tmp_path / "pred", tmp_path / "race.json"
    _fairseg(data, pred)
    res = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--data", str(data), "--split", "all",
                                   "--group-by", "race", "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    groups = result["groups"]
    assert groups["Asian"]["per_class"]["cup"]["dice"] == pytest.approx(1.0)
    assert groups["Black"]["per_class"]["rim"]["dice"] == pytest.approx(0.8)
    assert groups["Black"]["per_class"]["cup"]["dice"] == pytest.approx(0.0)
    assert groups["White"]["per_class"]["cup"]["dice"] == pytest.approx(0.5)
    # Group mean Dice = mean over (rim, cup): Asian 1, Black 0.4, White (1 + 0.5)/2 = 0.75.
    overall = (1 + 0.4 + 0.75) / 3
    assert result["mean"]["dice"] == pytest.approx(overall)
    spread = abs(1 - overall) + abs(0.4 - overall) + abs(0.75 - overall)
    assert result["es_dice"] == pytest.approx(overall / (1 + spread))
    assert result["worst_group_gap"] == pytest.approx(0.6)
    # Cup reported on its own: cup Dice 1, 0, 0.5 -> overall 0.5, spread 0.5 + 0.5 + 0 = 1.
    assert result["per_class_equity"]["cup"]["es_dice"] == pytest.approx(0.25)
    # age is binned at 60 by default; ethnicity is unknown (-1) everywhere.
    by_age = evaluate(pred, data, "all", "age", show_progress=False, n_boot=10)
    assert list(by_age["groups"]) == ["<60", ">=60"]
    with pytest.raises(FewsamError, match="available attributes: age, gender, language, maritalstatus, race$"):
        evaluate(pred, data, "all", "ethnicity", show_progress=False)


def test_compare_cli_matches_scipy(tmp_path):
    a = [0.9, 0.8, 0.75, 0.6, 0.95, 0.7]
    b = [0.85, 0.7, 0.76, 0.5, 0.9, 0.6]

    def write(path, scores):
        cases = [{"case": f"c{i}", "per_class": {"x": {"dice": s}, "y": {"dice": s}}} for i, s in enumerate(scores)]
        path.write_text(json.dumps({"cases": cases}))

    write(tmp_path / "a.json", a)
    write(tmp_path / "b.json", b)
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                   "--n-comparisons", "3", "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "t.json").read_text())
    expected = wilcoxon(a, b)
    assert got["n"] == 6 and got["p"] == pytest.approx(expected.pvalue)
    assert got["p_bonferroni"] == pytest.approx(min(1.0, 3 * expected.pvalue))
    assert "Wilcoxon signed-rank" in res.output


def _set_bmi(root, case, text):
    index = root / "index.csv"
    rows = index.read_text().splitlines()
    rows = [f'img/{case}.png,msk/{case}.png,{r.split(",")[2]},"{text}",test' if r.startswith(f"img/{case}.png")
            else r for r in rows]
    index.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("bins", ["bmi:25,30", None])
def test_text_in_a_binned_column_names_the_case_and_value(png_data, bins):
    """A decimal comma must not become a group of its own beside the bins (it would change ES-Dice)."""
    root, pred = png_data
    _set_bmi(root, "a2", "27,5")
    with pytest.raises(FewsamError, match=r"case img/a2 has bmi = '27,5', not a number, so --bins bmi:25,30"):
        evaluate(pred, root, "test", "bmi", show_progress=False, bins=bins, n_boot=10)


def test_an_all_text_column_under_default_bins_is_grouped_by_value(png_data, tmp_path):
    root, pred = png_data
    csv = tmp_path / "age.csv"
    csv.write_text("case,age\na1,young\na2,old\nb1,old\nu1,\n")
    result = evaluate(pred, root, "test", "age", show_progress=False, attributes=csv, n_boot=10)
    assert sorted(result["groups"]) == ["old", "young"]
    with pytest.raises(FewsamError, match=r"case img/a1 has age = 'young'"):
        evaluate(pred, root, "test", "age", show_progress=False, attributes=csv, bins="age:60", n_boot=10)


def test_fit_groups_refuse_text_in_a_binned_column(png_data):
    from fewsam.fairness import case_groups

    root, _ = png_data
    _set_bmi(root, "b1", "thirty")
    dataset = open_dataset(root)
    with pytest.raises(FewsamError, match=r"case img/b1 has bmi = 'thirty'"):
        case_groups(dataset, dataset.split("test"), "bmi", "bmi:25,30")


def test_evaluate_json_is_not_overwritten_without_overwrite(png_data, tmp_path):
    root, pred = png_data
    out = tmp_path / "eval.json"
    out.write_text("mine")
    args = ["evaluate", "--pred", str(pred), "--data", str(root), "--split", "test", "--json", str(out), "--quiet"]
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, FewsamError) and "--overwrite" in str(res.exception)
    assert out.read_text() == "mine"
    res = CliRunner().invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["n_cases"] == 4
    res = CliRunner().invoke(app, [*args[:-3], "--json", str(tmp_path), "--quiet"])
    assert isinstance(res.exception, FewsamError) and "is a folder" in str(res.exception)
