"""``fewsam report``: Markdown + HTML with plots, holding the key numbers of the evaluation JSONs."""

import json

import pytest
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.errors import FewsamError
from fewsam.metrics import group_summary
from fewsam.report import write_group_report


def _evaluation(path, scores):
    """An evaluation JSON from per-case (group, rim Dice, cup Dice) via the real group_summary."""
    cases = [{"case": f"c{i}", "group": g,
              "per_class": {"rim": {"dice": r, "iou": r / (2 - r), "hd95": 2.0, "asd": 1.0},
                            "cup": {"dice": c, "iou": c / (2 - c), "hd95": 3.0, "asd": 1.5}}}
             for i, (g, r, c) in enumerate(scores)]
    result = group_summary(cases, n_boot=100)
    result.update(group_by="race", alpha=1.0, es_mode="sum", distance_unit="pixel",
                  per_class_equity={"rim": {"es_dice": 0.5, "worst_group_gap": 0.1},
                                    "cup": {"es_dice": 0.25, "worst_group_gap": 0.2}})
    path.write_text(json.dumps(result))
    return result


BEFORE = [("Asian", 0.9, 0.8), ("Asian", 0.85, 0.7), ("Black", 0.7, 0.5), ("Black", 0.6, 0.4), ("White", 0.8, 0.7),
          (None, 0.9, 0.9)]
AFTER = [("Asian", 0.88, 0.79), ("Asian", 0.84, 0.71), ("Black", 0.75, 0.6), ("Black", 0.7, 0.5), ("White", 0.8, 0.7),
         (None, 0.9, 0.85)]


def test_report_two_runs_has_plots_and_key_numbers(tmp_path):
    before = _evaluation(tmp_path / "before.json", BEFORE)
    after = _evaluation(tmp_path / "after.json", AFTER)
    res = CliRunner().invoke(app, ["report", str(tmp_path / "before.json"), str(tmp_path / "after.json"),
                                   "--out", str(tmp_path / "rep"), "--labels", "unscaled,fair gamma=1"])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert (tmp_path / "rep" / "group_dice.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "group_dice_cup.png").is_file()
    assert html.count("data:image/png;base64,") == 3  # groups, rim, cup
    for text in (md, html):
        for r in (before, after):
            assert f"{r['es_dice']:.4f}" in text
            assert f"{r['worst_group_gap']:.4f}" in text
            assert f"{r['groups']['Black']['mean']['dice']:.4f}" in text
            lo, hi = r["groups"]["Black"]["ci95"]["dice"]
            assert f"[{lo:.4f}, {hi:.4f}]" in text
        diff = after["groups"]["Black"]["mean"]["dice"] - before["groups"]["Black"]["mean"]["dice"]
        assert f"{diff:+.4f}" in text
        assert "fair gamma=1 vs unscaled" in text and "Wilcoxon" in text
        assert "ES-Dice (equity-scaled Dice" in text  # the plain-language explanation


def test_report_single_run_without_groups(tmp_path):
    cases = [{"case": "a", "per_class": {"fg": {"dice": 0.5, "iou": 1 / 3, "hd95": 1.0, "asd": 1.0}}, "group": None}]
    from fewsam.metrics import summarise

    (tmp_path / "e.json").write_text(json.dumps({**summarise(cases), "distance_unit": "pixel"}))
    paths = write_group_report([tmp_path / "e.json"], tmp_path / "rep")
    md = paths["markdown"].read_text()
    assert "0.5000" in md and "--group-by" in md
    with pytest.raises(FewsamError, match="^labels gives 2 names"):
        write_group_report([tmp_path / "e.json"], tmp_path / "rep", ["a", "b"])


@pytest.mark.parametrize("labels, says", [("a,a", "names two runs 'a'"), (",b", "leaves a run without a name")])
def test_report_labels_must_tell_the_runs_apart(tmp_path, labels, says):
    _evaluation(tmp_path / "before.json", BEFORE)
    _evaluation(tmp_path / "after.json", AFTER)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "before.json"), str(tmp_path / "after.json"),
                                      "--out", str(tmp_path / "rep"), "--labels", labels])
    assert isinstance(result.exception, FewsamError) and says in str(result.exception)
    assert not (tmp_path / "rep").exists()


def test_names_with_dollar_signs_are_plotted_as_written(tmp_path):
    """Group and class names are the user's text, not TeX: "$\\frac$" ended the report in a traceback."""
    _evaluation(tmp_path / "e.json", [("$\\frac$", 0.9, 0.8), ("$\\frac$", 0.8, 0.7), ("$50k-$100k", 0.7, 0.5)])
    paths = write_group_report([tmp_path / "e.json"], tmp_path / "rep")
    assert "$\\frac$" in paths["markdown"].read_text()
    assert (tmp_path / "rep" / "group_dice.png").stat().st_size > 0


def test_report_out_follows_predicts_rule(tmp_path):
    _evaluation(tmp_path / "e.json", BEFORE)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FewsamError, match="is a file"):
        write_group_report([tmp_path / "e.json"], tmp_path / "file")
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "notes.md").write_text("mine")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "e.json"), "--out", str(rep)])
    assert isinstance(res.exception, FewsamError) and "--overwrite" in str(res.exception)
    assert [p.name for p in rep.iterdir()] == ["notes.md"]
    res = CliRunner().invoke(app, ["report", str(tmp_path / "e.json"), "--out", str(rep), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (rep / "report.md").is_file() and (rep / "notes.md").read_text() == "mine"


def test_classes_whose_names_read_alike_get_a_plot_each(tmp_path):
    """"left ventricle" and "left_ventricle" map to one file name; neither plot may overwrite the other."""
    cases = [{"case": f"c{i}", "group": g,
              "per_class": {name: {"dice": d, "iou": d / (2 - d), "hd95": 1.0, "asd": 1.0}
                            for name, d in (("left ventricle", 0.9 - i / 10), ("left_ventricle", 0.2 + i / 10))}}
             for i, g in enumerate(["A", "A", "B", "B"])]
    (tmp_path / "e.json").write_text(json.dumps({**group_summary(cases, n_boot=50), "group_by": "site",
                                                 "distance_unit": "pixel"}))
    paths = write_group_report([tmp_path / "e.json"], tmp_path / "rep")
    plots = sorted(p.name for p in (tmp_path / "rep").glob("group_dice_*.png"))
    assert plots == ["group_dice_left_ventricle_1.png", "group_dice_left_ventricle_2.png"]
    assert (tmp_path / "rep" / plots[0]).read_bytes() != (tmp_path / "rep" / plots[1]).read_bytes()
    md = paths["markdown"].read_text()
    assert all(name in md for name in plots)


@pytest.mark.parametrize("field, value, says", [
    ("label_sha256", "0" * 64, "against different labels"),
    ("both_empty", "skip", "--both-empty skip but"),
    ("annotated_slices_only", True, "--annotated-slices-only"),
])
def test_report_tests_no_runs_that_compare_refuses_to_pair(tmp_path, field, value, says):
    """The runs' cases scored against other labels, under another --both-empty rule or on other slices are no
    pairs (``fewsam compare`` refuses them): the report's test names why instead of printing a p value."""
    _evaluation(tmp_path / "before.json", BEFORE)
    after = _evaluation(tmp_path / "after.json", AFTER)
    if field == "label_sha256":
        for case in after["cases"]:
            case[field] = value
        before = json.loads((tmp_path / "before.json").read_text())
        for case in before["cases"]:
            case[field] = "1" * 64
        (tmp_path / "before.json").write_text(json.dumps(before))
    else:
        after[field] = value
    (tmp_path / "after.json").write_text(json.dumps(after))
    write_group_report([tmp_path / "before.json", tmp_path / "after.json"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| after vs before"))
    assert says in row and "| - | - | - |" in row
