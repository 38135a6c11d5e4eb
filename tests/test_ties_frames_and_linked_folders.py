"""Counts that were off and a walk that named cases after a link: the report's paired-subject count that
held the tied pairs the Wilcoxon test leaves out; a one-file multi-frame DICOM volume counted as one slice
and so left out as a localizer; a series whose files only partly give their slice place, stacked in GDCM's
unsaid order; and a link to a folder of the data that sorted before it, its cases named after the link."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fewsam.data import open_dataset
from fewsam.errors import DataError
from fewsam.report import _test_blocks
from test_dicom_series_faults import enhanced_mr, mr_slice, save_part10
from test_reader_walk_faults import png_cases


@pytest.fixture
def notices(caplog, monkeypatch):
    """What ``say_once`` tells the user during a test (as if the process had said nothing yet)."""
    from fewsam import progress

    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level(logging.INFO, logger="fewsam")
    return caplog


# ---------------------------------------------------------------- the report's tied pairs


def evaluation(dice: dict[str, float]) -> dict:
    """An evaluation's per-case records of one class, as the report reads them."""
    return {"cases": [{"case": case, "per_class": {"liver": {"dice": value}}} for case, value in dice.items()]}


def paired_count_cell(base: dict[str, float], other: dict[str, float]) -> str:
    blocks = _test_blocks([("A", evaluation(base)), ("B", evaluation(other))])
    header, rows = blocks[-1][1]
    return str(rows[0][header.index("paired subjects")])


def test_the_report_says_how_many_tied_pairs_the_test_left_out_as_compare_does():
    base = {f"c{i}": 0.9 for i in range(8)}
    other = {**{f"c{i}": 0.9 for i in range(3)}, **{f"c{i}": 0.8 - 0.01 * i for i in range(3, 8)}}
    assert paired_count_cell(base, other) == "8, 3 with no difference left out by the test"


def test_the_report_of_pairs_without_ties_gives_the_count_alone():
    assert paired_count_cell({"a": 0.9, "b": 0.8, "c": 0.7}, {"a": 0.5, "b": 0.6, "c": 0.65}) == "3"
