"""HD95 and ASD of a split whose cases are in mm (files with voxel spacing) and in pixels (files without):
each case keeps its own unit, and no summary, group table, report or comparison averages the two."""

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_png_cases

from fewsam import evaluate as evaluate_module, progress
from fewsam.cli import app
from fewsam.compare import compare_runs, describe
from fewsam.errors import DataError
from fewsam.report import write_group_report

LABEL = np.zeros((10, 10), np.uint8)
LABEL[:2] = 1
GROWN = np.zeros((10, 10), np.uint8)  # the label and 3 rows more: HD95 of 3 pixels
GROWN[:5] = 1
SITES = {"a1": "1", "a2": "2", "b1": "1", "b2": "2"}  # a*: files with spacing (mm); b*: without (pixels)
MM_SPACING = (1.0, 0.5, 0.5)


@pytest.fixture
def mixed_split(tmp_path, monkeypatch):
    """Four PNG cases, each predicted 3 rows too tall, in sites 1 and 2; the a* cases' files give a
    0.5 mm pixel spacing (as a NIfTI beside the PNGs would), the b* cases' none: (data root, predictions)."""
    root, pred = write_png_cases(tmp_path, LABEL, {cid: ({"site": site}, GROWN) for cid, site in SITES.items()})
    load = evaluate_module.load_labelled_case

    def with_spacing(dataset, case_id, purpose):
        case = load(dataset, case_id, purpose)
        return replace(case, spacing=MM_SPACING) if case_id.split("/")[-1].startswith("a") else case

    monkeypatch.setattr(evaluate_module, "load_labelled_case", with_spacing)
    monkeypatch.setattr(progress, "_said", {})
    return root, pred


def _evaluate(mixed_split, **options):
    root, pred = mixed_split
    return evaluate_module.evaluate(pred, root, "test", show_progress=False, n_boot=20, **options)


def _by_unit(result, unit, metric="hd95"):
    return [c["per_class"]["foreground"][metric] for c in result["cases"] if c["distance_unit"] == unit]


def test_each_case_keeps_its_distances_in_its_own_unit(mixed_split):
    result = _evaluate(mixed_split)
    units = {c["case"].split("/")[-1]: c["distance_unit"] for c in result["cases"]}
    assert units == {"a1": "mm", "a2": "mm", "b1": "pixel", "b2": "pixel"}
    assert _by_unit(result, "mm") == [1.5, 1.5] and _by_unit(result, "pixel") == [3.0, 3.0]


def test_the_distance_summaries_are_over_the_mm_cases_and_count_the_pixel_ones(mixed_split, caplog):
    """The mean HD95 of 1.5 mm and 3 pixels was 2.25, a number with no unit, called "mixed"."""
    with caplog.at_level(logging.INFO, logger="fewsam"):
        result = _evaluate(mixed_split)
    assert result["distance_unit"] == "mm" and result["distance_cases_left_out"] == 2
    for summary in (result["mean"], result["per_class"]["foreground"]):
        assert summary["hd95"] == pytest.approx(1.5) and summary["asd"] == pytest.approx(np.mean(_by_unit(
            result, "mm", "asd")))
    assert result["per_class"]["foreground"]["hd95_missing"] == 0
    assert result["mean"]["dice"] == pytest.approx(np.mean(_by_unit(result, "mm", "dice") + _by_unit(
        result, "pixel", "dice")))  # Dice and IoU over every case, as before
    said = [r.getMessage() for r in caplog.records if "in pixels" in r.getMessage()]
    assert len(said) == 1 and "2 of the 4 cases have no voxel spacing" in said[0] and "over the 2 cases in mm" in said[0]


def test_each_group_measures_its_distances_in_the_unit_of_the_whole_table(mixed_split):
    result = _evaluate(mixed_split, group_by="site")
    for group in result["groups"].values():
        assert group["n"] == 2 and group["distance_cases_left_out"] == 1
        assert group["mean"]["hd95"] == pytest.approx(1.5)
    assert result["grouped"]["mean"]["hd95"] == pytest.approx(1.5)


def test_a_group_of_pixel_cases_alone_has_no_mm_distance(mixed_split):
    """A group of cases without spacing had its pixel mean shown in a table headed "distances in mm"."""
    root, pred = mixed_split
    index = root / "index.csv"
    index.write_text(index.read_text().replace("b1.png,1", "b1.png,3").replace("b2.png,2", "b2.png,3"))
    result = _evaluate(mixed_split, group_by="site")
    assert result["groups"]["3"]["mean"]["hd95"] is None and result["groups"]["3"]["distance_cases_left_out"] == 2
    assert result["groups"]["3"]["mean"]["dice"] is not None


def test_the_printed_summary_says_the_unit_and_the_cases_left_out(mixed_split):
    root, pred = mixed_split
    res = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--data", str(root), "--split", "test", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "HD95 1.50  ASD" in res.output and "(mm; 2 case(s) in pixels left out)" in res.output


def test_the_report_shows_mm_distances_and_says_what_it_left_out(mixed_split, tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(_evaluate(mixed_split, group_by="site")), encoding="utf-8")
    md = write_group_report([path], tmp_path / "rep")["markdown"].read_text(encoding="utf-8")
    assert "groups (distances in mm)" in md
    group_table = md.split("groups (distances in mm)")[1].split("\n\n")[1].splitlines()
    rows = [line for line in group_table if line.startswith(("| 1 |", "| 2 |", "| all cases |"))]
    assert len(rows) == 3 and all(row.split(" | ")[6] == "1.50" for row in rows)
    assert "2 of the 4 cases, whose files give no voxel spacing, are measured in pixels and left out" in md


def test_the_report_does_not_show_distances_averaged_over_mm_and_pixels(tmp_path):
    from fewsam.metrics import group_summary

    cases = [{"case": f"c{i}", "group": "F" if i % 2 else "M",
              "per_class": {"LV": {"dice": 0.5 + 0.1 * i, "iou": 0.4, "hd95": 2.0, "asd": 1.0}}} for i in range(4)]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({**group_summary(cases, n_boot=20), "group_by": "sex", "distance_unit": "mixed"}))
    md = write_group_report([path], tmp_path / "rep")["markdown"].read_text(encoding="utf-8")
    assert "2.00" not in md and "HD95 and ASD are not shown" in md


def _two_runs(mixed_split, tmp_path):
    """Evaluations of the grown predictions (A) and of perfect ones (B) of the mixed split."""
    root, pred = mixed_split
    a = tmp_path / "a.json"
    a.write_text(json.dumps(_evaluate(mixed_split)), encoding="utf-8")
    for cid in SITES:
        Image.fromarray(LABEL * 255).save(pred / "img" / f"{cid}.png")
    b = tmp_path / "b.json"
    b.write_text(json.dumps(_evaluate(mixed_split)), encoding="utf-8")
    return a, b


def test_compare_pairs_the_distances_of_the_mm_cases_only(mixed_split, tmp_path):
    a, b = _two_runs(mixed_split, tmp_path)
    result = compare_runs(a, b, "hd95")
    assert result["n_cases"] == 2 and result["distance_unit"] == "mm" and result["other_unit_cases"] == 2
    assert result["mean_a"] == pytest.approx(1.5) and result["mean_b"] == 0.0
    assert "left out: 2 case(s) whose hd95 is in pixels" in describe(result)
    assert compare_runs(a, b, "dice")["n_cases"] == 4  # Dice has no unit


def test_compare_refuses_a_case_in_mm_in_one_run_and_in_pixels_in_the_other(mixed_split, tmp_path):
    a, b = _two_runs(mixed_split, tmp_path)
    evaluation = json.loads(b.read_text(encoding="utf-8"))
    evaluation["cases"][0]["distance_unit"] = "pixel"
    b.write_text(json.dumps(evaluation), encoding="utf-8")
    with pytest.raises(DataError, match=r"gives asd in mm and .*b.json in pixel units for 1 of the 4 cases they share"):
        compare_runs(a, b, "asd")


def test_compare_refuses_distances_of_an_evaluation_that_does_not_say_each_cases_unit(mixed_split, tmp_path):
    a, b = _two_runs(mixed_split, tmp_path)
    evaluation = json.loads(b.read_text(encoding="utf-8"))
    for case in evaluation["cases"]:
        del case["distance_unit"]
    b.write_text(json.dumps({**evaluation, "distance_unit": "mixed"}), encoding="utf-8")
    with pytest.raises(DataError, match="in mm for some cases and in pixels for others without saying which"):
        compare_runs(a, b, "hd95")
    assert compare_runs(a, b, "iou")["n_cases"] == 4
