"""Faults of ``fewsam evaluate`` / ``report`` inputs and outputs, each on a tiny hand-made case."""

import json
import unicodedata

import pytest
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.data.attributes import attribute_value, group_of, parse_bins, read_attribute_table
from fewsam.errors import DataError
from fewsam.fairness import check_bin_values, refuse_other_groups
from fewsam.metrics import group_summary
from fewsam.report import write_group_report


def _evaluation(path, classes):
    """An evaluation JSON of four cases in groups A and B scoring ``classes``, via the real group_summary."""
    cases = [{"case": f"c{i}", "group": group,
              "per_class": {name: {"dice": dice, "iou": dice / (2 - dice), "hd95": 1.0, "asd": 0.5}
                            for name in classes}}
             for i, (group, dice) in enumerate([("A", 0.9), ("A", 0.8), ("B", 0.6), ("B", 0.5)])]
    result = group_summary(cases, n_boot=20)
    result.update(group_by="site", alpha=1.0, es_mode="sum", distance_unit="pixel")
    path.write_text(json.dumps(result), encoding="utf-8")
    return path


def _report(*args):
    return CliRunner().invoke(app, ["report", *map(str, args)])


def test_report_overwrite_removes_the_earlier_reports_plots_but_not_a_users_copy(tmp_path):
    rep = tmp_path / "rep"
    first = _report(_evaluation(tmp_path / "two.json", ["rim", "cup"]), "--out", rep)
    assert first.exit_code == 0, first.output
    assert (rep / "group_dice_cup.png").is_file()
    (rep / "group_dice_before.png").write_bytes((rep / "group_dice.png").read_bytes())  # kept to compare by eye
    again = _report(_evaluation(tmp_path / "one.json", ["rim"]), "--out", rep, "--overwrite")
    assert again.exit_code == 0, again.output
    assert not (rep / "group_dice_cup.png").exists()  # the earlier report's plot of a class no longer scored
    assert (rep / "group_dice_before.png").is_file()  # the user's file, only named like a plot


def test_a_column_named_twice_that_disagrees_is_refused_not_read_from_one_side(tmp_path):
    """csv's reader kept the later "grp" cell alone, so c1 was in group B with its first cell saying A."""
    table = tmp_path / "groups.csv"
    table.write_text("case,grp,grp\nc1,A,B\nc2,A,A\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"column 'grp' twice \(columns 2 and 3\).*'c1' gives 'A' in one and 'B'"):
        read_attribute_table(table)
    table.write_text("case,Sex,sex\nc1,F,F\nc2,M,\n", encoding="utf-8")  # agreeing where both are given
    rows = read_attribute_table(table).rows
    assert attribute_value(rows["c1"], "sex") == "F" and attribute_value(rows["c2"], "sex") == "M"


def test_report_md_shows_group_names_with_html_characters_as_written(tmp_path):
    """Rendered (GitHub, an editor's preview), report.md read "<unknown>" as an HTML tag and dropped it."""
    from markdown_it import MarkdownIt

    evaluation = _evaluation(tmp_path / "e.json", ["rim"])
    result = json.loads(evaluation.read_text(encoding="utf-8"))
    result["groups"] = {"<unknown>" if name == "A" else "R&amp;D": group for name, group in result["groups"].items()}
    evaluation.write_text(json.dumps(result), encoding="utf-8")
    assert _report(evaluation, "--out", tmp_path / "rep", "--title", "<i>site</i>").exit_code == 0
    shown = MarkdownIt("commonmark").enable("table").render((tmp_path / "rep" / "report.md").read_text(encoding="utf-8"))
    assert "<td>&lt;unknown&gt;</td>" in shown and "<td>R&amp;amp;D</td>" in shown
    assert "<h1>&lt;i&gt;site&lt;/i&gt;</h1>" in shown


def test_an_accented_group_typed_or_pasted_from_a_mac_is_one_group(tmp_path):
    """"Café" composed (NFC) and decomposed (NFD, as macOS writes names) look and print alike: two groups
    of that name, each with part of the cases, changed ES-Dice and the worst-group gap unseen."""
    composed, decomposed = unicodedata.normalize("NFC", "Café"), unicodedata.normalize("NFD", "Café")
    table = tmp_path / "sites.csv"
    table.write_text(f"case,site\nc1,{composed}\nc2,{decomposed}\nc3,B\n", encoding="utf-8")
    rows = read_attribute_table(table).rows
    groups = {case: group_of(rows[case], "site") for case in rows}
    assert groups == {"c1": composed, "c2": composed, "c3": "B"}


def test_an_infinite_value_in_a_binned_column_is_refused_naming_the_case(tmp_path):
    """pandas writes "inf" for a BMI computed with a height of 0; it was binned ">=30", as if measured obese."""
    table = tmp_path / "bmi.csv"
    table.write_text("case,bmi\nc1,22.5\nc2,inf\nc3,31\n", encoding="utf-8")
    rows = read_attribute_table(table).rows
    with pytest.raises(DataError, match=r"case c2 has bmi = inf, not a finite number, so --bins bmi:25,30"):
        check_bin_values("bmi", None, rows)
    with pytest.raises(DataError, match=r"case c2 has bmi = -inf"):
        check_bin_values("bmi", parse_bins("bmi:20"), {**rows, "c2": {"bmi": float("-inf")}})


def test_a_fit_that_recorded_a_decomposed_group_resumes(tmp_path):
    """Its table is unchanged: the group only reads composed now, which is no case moving to another group."""
    decomposed, composed = unicodedata.normalize("NFD", "Café"), unicodedata.normalize("NFC", "Café")
    record = {"attribute": "site", "bins": None, "case_group": {"c1": composed, "c2": "B"}}
    refuse_other_groups(tmp_path / "fair_groups.json", {"c1": decomposed, "c2": "B"}, record)
    with pytest.raises(DataError, match="case c2: 'B' -> 'C'"):
        refuse_other_groups(tmp_path / "fair_groups.json", {"c1": decomposed, "c2": "B"},
                            {**record, "case_group": {"c1": composed, "c2": "C"}})


@pytest.mark.parametrize("metric, value, says", [
    ("dice", 75.0, "case 'c1' has dice 75.0 for class 'rim', not 0-1"),
    ("iou", float("nan"), "case 'c1' has iou nan for class 'rim', not 0-1"),
    ("hd95", -2.0, "case 'c1' has hd95 -2.0 for class 'rim', not a finite distance of 0 or more"),
], ids=["percent", "nan", "negative-distance"])
def test_a_score_no_evaluation_gives_is_named_by_compare_and_report(tmp_path, metric, value, says):
    """A Dice in percent (another tool's table) or NaN was averaged as it stood: compare tested a mean
    Dice of 19 against 0.7, and the report showed it."""
    from fewsam.compare import compare_runs

    a, b = _evaluation(tmp_path / "a.json", ["rim"]), _evaluation(tmp_path / "b.json", ["rim"])
    edited = json.loads(a.read_text(encoding="utf-8"))
    edited["cases"][1]["per_class"]["rim"][metric] = value
    a.write_text(json.dumps(edited), encoding="utf-8")
    with pytest.raises(DataError, match=rf"a.json is not a fewsam evaluation \({says}\)"):
        compare_runs(a, b)
    with pytest.raises(DataError, match=rf"a.json is not a fewsam evaluation \({says}\)"):
        write_group_report([a], tmp_path / "rep")
    assert not (tmp_path / "rep").exists()
