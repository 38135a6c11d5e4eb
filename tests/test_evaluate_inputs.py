"""`fewsam evaluate`, `compare` and `report` on the inputs users give them: groups of one case, site
numbers as groups, names with Markdown's own characters, predictions in another coding."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_png_cases

from fewsam.cli import app
from fewsam.data import open_dataset
from fewsam.evaluate import evaluate
from fewsam.errors import DataError
from fewsam.metrics import group_summary
from fewsam.report import write_group_report


def record(case, group, dice):
    return {"case": case, "group": group,
            "per_class": {"fg": {"dice": dice, "iou": dice / (2 - dice), "hd95": 1.0, "asd": 1.0}}}


def test_a_group_of_one_case_has_no_interval_rather_than_a_certain_one():
    """One case's bootstrap redraws that case every time: its "95% CI" was [x, x], a zero-width
    interval the report read as certainty."""
    cases = [record("a", "A", 0.9), record("b", "A", 0.7), record("c", "B", 0.4)]
    summary = group_summary(cases, n_boot=200)
    assert summary["groups"]["B"]["ci95"] == {"dice": None, "iou": None}
    lo, hi = summary["groups"]["A"]["ci95"]["dice"]
    assert lo < hi
    assert group_summary(cases[2:], n_boot=50)["overall_ci95"] == {"dice": None, "iou": None}


def test_a_group_of_one_case_shows_no_interval_in_the_report(tmp_path):
    cases = [record("a", "A", 0.9), record("b", "A", 0.7), record("c", "B", 0.4)]
    result = group_summary(cases, n_boot=100)
    result.update(group_by="site", distance_unit="pixel")
    (tmp_path / "e.json").write_text(json.dumps(result))
    md = write_group_report([tmp_path / "e.json"], tmp_path / "rep")["markdown"].read_text()
    assert "| B | 1 | 0.4000 | n/a |" in md
    assert "[0.4000, 0.4000]" not in md


def test_site_numbers_as_groups_are_in_numeric_order():
    """Text order put site 10 before site 2 in the JSON, the printed lines and the report."""
    cases = [record(str(i), site, 0.5) for i, site in enumerate(["10", "2", "1", "2", "10", "-1"])]
    assert list(group_summary(cases, n_boot=10)["groups"]) == ["-1", "1", "2", "10"]
    named = [record(str(i), site, 0.5) for i, site in enumerate(["site10", "site2", "Site1"])]
    assert list(group_summary(named, n_boot=10)["groups"]) == ["Site1", "site2", "site10"]


def _tables(markdown):
    """Each Markdown table as its lines' cells, split at the pipes Markdown splits at (not at "\\|")."""
    import re

    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(re.split(r"(?<!\\)\|", line)[1:-1])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_names_holding_a_pipe_keep_the_markdown_tables_in_their_columns(tmp_path):
    """A "|" in a run label, group value or class name split its Markdown cell in two: every number
    after it sat under the wrong column, and a line break in a name ended the table."""
    paths = []
    for k, dice in enumerate((0.9, 0.6)):
        cases = [{"case": f"c{i}", "group": g,
                  "per_class": {"LV|RV": {"dice": dice, "iou": dice / (2 - dice), "hd95": 1.0, "asd": 1.0}}}
                 for i, g in enumerate(["A|B", "A|B", "two\nlines", "two\nlines"])]
        result = group_summary(cases, n_boot=20)
        result.update(group_by="site", distance_unit="pixel")
        paths.append(tmp_path / f"run{k}.json")
        paths[-1].write_text(json.dumps(result))
    md = write_group_report(paths, tmp_path / "rep", labels=["old|new", "b"], title="t\nu")["markdown"].read_text()
    tables = _tables(md)
    assert len(tables) >= 5
    for table in tables:
        assert {len(cells) for cells in table} == {len(table[0])}, table
    assert "| old\\|new | 4 | 0.9000 |" in md
    assert "| A\\|B | 2 | 0.9000 |" in md and "| two lines | 2 | 0.9000 |" in md
    assert md.startswith("# t u\n")


LABEL = np.zeros((10, 10), np.uint8)
LABEL[:2] = 1


@pytest.fixture
def png_data(tmp_path):
    """A binary PNG folder (masks 0/255; a site column of site numbers) and a perfect prediction
    folder for it."""
    sites = {"a1": "2", "a2": "2", "b1": "10", "b2": "10"}
    return write_png_cases(tmp_path, LABEL, {cid: ({"site": site}, LABEL) for cid, site in sites.items()})


def test_a_png_prediction_in_another_coding_gets_advice_about_the_prediction(png_data):
    """A PNG prediction holding 128 was told to "fix the mask or add classes.json": a classes.json
    would change the dataset it is scored against, and the file is no mask of the dataset's."""
    from fewsam.errors import DataError

    root, pred = png_data
    Image.fromarray(LABEL * 128).save(pred / "img" / "b1.png")
    with pytest.raises(DataError) as refused:
        evaluate(pred, root, "test", show_progress=False)
    message = str(refused.value)
    assert f"prediction values [128] in {pred / 'img' / 'b1.png'}" in message
    assert "fewsam predict" in message and "classes.json" not in message


def _three_class_evaluation(path, lv_hd95):
    """Six cases scoring RV and Myo alike in every run; LV's HD95 is ``lv_hd95`` (None: LV left empty)."""
    def scores(hd95):
        return {"dice": 0.0 if hd95 is None else 0.8, "iou": 0.0 if hd95 is None else 0.7, "hd95": hd95,
                "asd": hd95}
    cases = [{"case": f"c{i}", "group": None,
              "per_class": {"RV": scores(2.0 + i / 10), "Myo": scores(3.0), "LV": scores(lv_hd95)}}
             for i in range(6)]
    path.write_text(json.dumps({"cases": cases, "distance_unit": "mm"}))
    return path


def test_a_run_that_leaves_a_class_empty_does_not_win_on_hd95(tmp_path):
    """A run that missed LV in every case had only RV and Myo averaged, so its per-case HD95 beat a
    run that found LV (HD95 10 mm) and was alike on the rest: the test called it better, p = 0.03."""
    from fewsam.compare import compare_runs, describe

    missed = _three_class_evaluation(tmp_path / "missed.json", None)
    found = _three_class_evaluation(tmp_path / "found.json", 10.0)
    result = compare_runs(missed, found, "hd95")
    assert result["n"] == 6 and result["p"] == 1.0 and result["median_diff"] == 0.0
    assert result["mean_a"] == pytest.approx(result["mean_b"])
    assert result["one_sided_values"] == 6
    assert "6 class value(s) of hd95 that only one run had" in describe(result)
    dice = compare_runs(missed, found, "dice")
    assert dice["one_sided_values"] == 0 and dice["median_diff"] == pytest.approx(-0.8 / 3)


def test_the_printed_hd95_says_the_cases_it_leaves_out(png_data):
    """An empty prediction has no HD95: the class's HD95 is the mean of the other cases, and the
    summary printed "HD95 0.00" for a run that predicted nothing in a case, as if it were perfect."""
    root, pred = png_data
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(pred / "img" / "b1.png")
    res = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--data", str(root), "--split", "test",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "foreground: Dice 0.7500  IoU 0.7500  HD95 0.00 over 3 of 4 cases (1 with an empty prediction or label)" \
        in res.output


def test_runs_grouped_by_other_columns_are_not_subtracted_group_by_group(tmp_path):
    """A report of an evaluation by site and one by scanner, both naming their groups 1 and 2, gave
    "Change in Dice" of scanner 1 minus site 1 and of one ES-Dice minus the other; the heading read
    "Dice by group (site, None)" beside a run without groups."""
    paths = []
    for name, column, dice in (("site", "site", 0.9), ("scanner", "scanner", 0.6), ("plain", None, 0.7)):
        cases = [record(f"c{i}", None if column is None else str(1 + i % 2), dice - i / 20) for i in range(4)]
        result = group_summary(cases, n_boot=20)
        result.update(group_by=column, distance_unit="pixel")
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    md = write_group_report(paths, tmp_path / "rep")["markdown"].read_text()
    assert "## Dice by group (site, scanner)" in md
    assert "scanner - site" not in md and "plain - site" not in md
    assert ("Not compared with site, grouped by site: scanner (grouped by scanner), plain (grouped by nothing), "
            "whose groups are not site's.") in md


def test_missing_predictions_are_counted_before_any_case_is_scored(tmp_path, monkeypatch):
    """Two of three validation cases lack a prediction: said at once, with the count, instead of
    after scoring every case up to the first gap."""
    import shutil

    from fewsam import evaluate as evaluate_module
    from fewsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=3, slices=2, seed=1)
    val = evaluate_module.open_dataset(data).split("val")
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(data / "labelsTr" / f"{val[1]}.nii.gz", pred / f"{val[1]}.nii.gz")

    def scored(*args, **kwargs):
        raise AssertionError("a case was scored before the missing predictions were said")

    monkeypatch.setattr(evaluate_module, "case_metrics", scored)
    with pytest.raises(DataError, match=rf"prediction .*{val[0]}.nii.gz for case {val[0]} not found "
                                        r"\(and 1 more of the 3 cases\); predict this split"):
        evaluate_module.evaluate(pred, data, split="val", show_progress=False)


def test_a_prediction_read_back_is_called_a_prediction_in_its_errors(tmp_path):
    """A tool's NIfTI prediction of interpolated values was said to be a "label"."""
    import nibabel as nib

    from fewsam.data import read_prediction
    from fewsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2, seed=1)
    dataset = open_dataset(data)
    case = dataset.load(dataset.split("val")[0])
    label = nib.load(data / "labelsTr" / f"{case.case_id}.nii.gz")
    (tmp_path / "pred").mkdir()
    blurred = np.asarray(label.dataobj).astype(np.float32) * 0.5
    nib.save(nib.Nifti1Image(blurred, label.affine), tmp_path / "pred" / f"{case.case_id}.nii.gz")
    with pytest.raises(DataError, match=r"the prediction holds non-integer values .*predictions must be class"):
        read_prediction(case, tmp_path / "pred")


def test_cases_of_one_name_scored_against_other_labels_are_not_paired(tmp_path):
    """Two datasets naming their cases alike (or labels corrected in between): compare refuses to
    test them as one set of cases, and pairs evaluations of the same labels as before."""
    from fewsam.compare import compare_runs

    label = np.zeros((16, 16), np.uint8)
    label[4:12, 4:12] = 1
    other = label.copy()
    other[4:8] = 0
    evaluations = {}
    for name, mask in (("first", label), ("again", label), ("other", other)):
        cases = {cid: ({"site": "x"}, label) for cid in ("a", "b")}
        root, pred = write_png_cases(tmp_path / name, mask, cases)
        evaluations[name] = tmp_path / f"{name}.json"
        evaluations[name].write_text(json.dumps(evaluate(pred, root, "test", show_progress=False)), encoding="utf-8")
    assert compare_runs(evaluations["first"], evaluations["again"])["n_cases"] == 2
    with pytest.raises(DataError, match="scored case 'img/a' against different labels \\(2 of the 2 cases"):
        compare_runs(evaluations["first"], evaluations["other"])


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_an_evaluation_saved_again_by_a_windows_editor_is_read(tmp_path, encoding):
    """An evaluation JSON opened and saved in Notepad (a byte-order mark, or UTF-16) was "cannot read"."""
    from fewsam.compare import read_evaluation

    evaluation = {"cases": [{"case": "a", "per_class": {"LV": {"dice": 0.5}}}]}
    path = tmp_path / "eval.json"
    path.write_bytes(json.dumps(evaluation).encode(encoding))
    assert read_evaluation(path) == evaluation
