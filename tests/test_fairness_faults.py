"""Group attributes and fairness figures where tables and files meet real data.

Covers: top-coded ages ("90+", ">89", HIPAA's way of writing every age above 89) fall in the top age bin
(said once), and bins that split them are refused; a joined table whose value differs from the one a
FairSeg npz file stores is said, naming the case and both values, and the table's value is used (said
nothing when they agree); each group's bootstrap interval draws that group's own subjects, whatever the
other groups hold, and ES-Dice and the worst-group gap get intervals from the stratified draws; a fair fit
whose run records a group fewsam now reads as unknown ("-1") resumes with the case in no group.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from fewsam import progress
from fewsam.data import group_of, open_dataset, read_attribute_table
from fewsam.errors import DataError
from fewsam.fairness import FairGroups, case_groups, check_bin_values, fair_groups_for
from fewsam.metrics import group_summary


@pytest.fixture
def notices(monkeypatch, caplog):
    """fewsam's notices said while a test runs (each said anew: the process may have said it before)."""
    monkeypatch.setattr(progress, "_said", {})
    with caplog.at_level(logging.INFO, logger="fewsam"):
        yield caplog


# --- top-coded ages ------------------------------------------------------------------------------------

@pytest.mark.parametrize("written", ["90+", ">89", ">=90", "≥90", "90 or older"])
def test_top_coded_ages_fall_in_the_top_age_bin(tmp_path, notices, written):
    table = tmp_path / "ages.csv"
    table.write_text(f"case,age\na,45\nb,{written}\nc,72\n", encoding="utf-8")
    rows = read_attribute_table(table).rows
    check_bin_values("age", None, rows)  # refused as text beside numbers before
    assert [group_of(rows[c], "age") for c in "abc"] == ["<60", ">=60", ">=60"]
    assert "read as 90 or older" in notices.text


def test_bins_that_split_a_top_coded_age_are_refused(tmp_path):
    from fewsam.data import parse_bins

    table = tmp_path / "ages.csv"
    table.write_text("case,age\na,45\nb,90+\n", encoding="utf-8")
    rows = read_attribute_table(table).rows
    assert group_of(rows["b"], "age", parse_bins("age:60,90")) == ">=90"
    with pytest.raises(DataError, match="case b has age = 90\\+ .* cannot place in one bin"):
        check_bin_values("age", parse_bins("age:60,95"), rows)


# --- a table over the values stored in FairSeg's npz files ---------------------------------------------

def _fairseg_folder(root):
    """Four npz files, races 0 (Asian) and 2 (White), two each."""
    root.mkdir()
    mask = np.zeros((8, 8), np.int8)
    mask[:3] = -1
    for i, race in enumerate([0, 0, 2, 2]):
        np.savez(root / f"data_{i:05d}.npz", slo_fundus=np.full((8, 8), 10 * i + 5, np.uint8), disc_cup_mask=mask,
                 race=race, gender=i % 2)
    return root


def test_a_table_disagreeing_with_an_npz_file_is_said_and_wins(tmp_path, notices):
    root = _fairseg_folder(tmp_path / "fairseg")
    agreeing, disagreeing = tmp_path / "agreeing.csv", tmp_path / "disagreeing.csv"
    agreeing.write_text("case,race\ndata_00000,Asian\ndata_00003,White\n", encoding="utf-8")
    disagreeing.write_text("case,race\ndata_00000,Asian\ndata_00001,White\ndata_00002,White\n", encoding="utf-8")
    dataset = open_dataset(root, agreeing)
    assert case_groups(dataset, dataset.split("all"), "race")["data_00003"] == "White"
    assert "in its file" not in notices.text  # values that agree are nothing to say
    dataset = open_dataset(root, disagreeing)
    assert case_groups(dataset, dataset.split("all"), "race")["data_00001"] == "White"  # the table's value
    said = [r.getMessage() for r in notices.records if "in its file" in r.getMessage()]
    assert len(said) == 1
    assert "case data_00001 has race = 'Asian' in its file" in said[0] and "but 'White' in" in said[0]


# --- bootstrap intervals by group ------------------------------------------------------------------------

def _case(i, group, dice):
    scores = {"dice": dice, "iou": dice / (2 - dice), "hd95": 1.0, "asd": 1.0}
    return {"case": f"c{i}", "group": group, "per_class": {"fg": scores}}


SCORES = [0.31, 0.92, 0.55, 0.77, 0.12, 0.68, 0.49, 0.83, 0.25, 0.6]


def test_a_groups_interval_draws_its_own_cases_whatever_the_others_hold():
    cases = [_case(i, "A" if i < 5 else "B", d) for i, d in enumerate(SCORES)]
    alone = group_summary(cases, n_boot=300, seed=4)["groups"]["B"]["ci95"]
    with_more_a = group_summary([_case(99, "A", 0.4), *cases], n_boot=300, seed=4)["groups"]["B"]["ci95"]
    assert with_more_a == alone
    assert group_summary(cases, n_boot=300, seed=4)["groups"]["B"]["ci95"] == alone  # deterministic per seed
    assert group_summary(cases, n_boot=300, seed=5)["groups"]["B"]["ci95"] != alone


def test_the_gap_interval_is_the_stratified_draws_of_the_groups():
    """Group A scores 1 everywhere, so each stratified replicate's gap is 1 minus group B's replicate mean:
    the gap's interval mirrors B's own interval exactly when both come from B's own draws."""
    cases = [_case(i, "A", 1.0) for i in range(4)] + [_case(10 + i, "B", d) for i, d in enumerate(SCORES)]
    result = group_summary(cases, n_boot=400, seed=2)
    lo, hi = result["groups"]["B"]["ci95"]["dice"]
    assert result["worst_group_gap_ci95"] == pytest.approx([1 - hi, 1 - lo])
    es_lo, es_hi = result["es_dice_ci95"]
    assert es_lo <= result["es_dice"] <= es_hi
    one_subject = group_summary([*cases, _case(50, "C", 0.5)], n_boot=50)
    assert one_subject["worst_group_gap_ci95"] is None and one_subject["es_dice_ci95"] is None


# --- a fair fit resumed over a run that recorded "-1" as a group ---------------------------------------

class _Table:
    """Attributes by case id, as an index or a joined table gives them."""

    format = "h5"

    def __init__(self, attributes):
        self.attributes = attributes

    def attributes_of(self, case_id):
        return self.attributes[case_id]


def test_a_fair_fit_whose_run_recorded_minus_one_as_a_group_resumes(tmp_path, notices):
    data = _Table({"a": {"sex": "F"}, "b": {"sex": "M"}, "c": {"sex": -1}, "d": {"sex": None}})
    fair = fair_groups_for("sex", 1.0, None, data, ["a", "b", "c", "d"])
    run = tmp_path / "run"
    run.mkdir()
    recorded = {**fair.record, "case_group": {**fair.record["case_group"], "c": "-1", "d": "unknown"}}
    (run / "fair_groups.json").write_text(json.dumps(recorded), encoding="utf-8")  # as an earlier fewsam grouped them
    fair.save(run)
    assert json.loads((run / "fair_groups.json").read_text(encoding="utf-8"))["case_group"]["c"] is None
    assert "which fewsam reads as no value" in notices.text
    moved = FairGroups(fair.case_group, 1.0, {**fair.record, "case_group": {**fair.record["case_group"], "a": "M"}})
    with pytest.raises(DataError, match="case a: 'F' -> 'M'"):
        moved.save(run)  # a group the table really changed is still refused
