"""Counts that were off: the report's paired-subject count that held the tied pairs the Wilcoxon test
leaves out; a one-file multi-frame DICOM volume counted as one slice and so left out as a localizer; a
series whose files only partly give their slice place, stacked in GDCM's unsaid order."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fewsam.data import open_dataset
from fewsam.errors import DataError
from fewsam.report import _test_blocks
from test_dicom_series_faults import enhanced_mr, mr_slice, save_part10


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


# ---------------------------------------------------------------- a multi-frame volume beside other series


def multi_frame_volume(path: Path, frames: int) -> np.ndarray:
    stored = np.random.default_rng(frames).integers(0, 1000, (frames, 4, 5)).astype("<u2")
    enhanced_mr(path, stored, [(1.0, 0.0)] * frames)
    return stored


def other_series(folder: Path, files: int) -> None:
    """``files`` single-frame axial slices of a series of their own, 2 mm apart."""
    for z in range(files):
        save_part10(mr_slice(100 + z, (0.0, 0.0, 2.0 * z), SeriesInstanceUID="1.2.3.4.7",
                             SOPInstanceUID=f"1.2.3.4.7.{z}"), folder / f"IM{z:04d}.dcm")


def test_a_multi_frame_volume_beside_a_scout_is_read_and_the_scout_left_out(tmp_path, notices):
    """Counted by files, the one-file volume was no more than the one-file scout: the folder was refused."""
    stored = multi_frame_volume(tmp_path / "s" / "volume.dcm", 6)
    other_series(tmp_path / "s", 1)
    np.testing.assert_array_equal(open_dataset(tmp_path).load("s").image, stored.astype(np.float32))
    assert any("1 localizer series (1 file(s) of at most 3 slices) beside its series of 6 slices in 1 file(s)"
               in r.getMessage() for r in notices.records)


def test_a_multi_frame_volume_beside_a_multi_file_series_is_no_localizer(tmp_path):
    """Counted by files, the 6-frame volume was left out as a localizer of the 5-file series."""
    multi_frame_volume(tmp_path / "s" / "volume.dcm", 6)
    other_series(tmp_path / "s", 5)
    with pytest.raises(DataError, match=r"holds 2 DICOM series; put each series in its own folder"):
        open_dataset(tmp_path).load("s")


# ---------------------------------------------------------------- slices only partly placed


def slices_partly_placed(folder: Path, unplaced: set[int], drop: tuple[str, ...]) -> None:
    for n in range(1, 7):
        ds = mr_slice(n, (0.0, 0.0, 2.0 * n))
        if n in unplaced:
            for keyword in drop:
                delattr(ds, keyword)
        save_part10(ds, folder / f"IM{n:04d}.dcm")


def test_a_series_whose_files_only_partly_give_their_place_is_refused_naming_them(tmp_path):
    """GDCM ordered such a series by whatever tag it fell back to, the unplaced files anywhere, unsaid."""
    slices_partly_placed(tmp_path / "s", {2, 5}, ("ImagePositionPatient", "InstanceNumber"))
    with pytest.raises(DataError, match=r"2 of its 6 DICOM files give no slice position \(ImagePositionPatient\) "
                                        r"though the others do \(IM0002.dcm, IM0005.dcm\)"):
        open_dataset(tmp_path).load("s")


@pytest.mark.parametrize("unplaced", [{3}, {6}, {1, 4}, {2, 5}])
def test_a_series_whose_files_all_give_instance_numbers_but_only_some_a_position_is_refused(tmp_path, unplaced):
    """GDCM sorted such files by position, a missing one at the origin, and ITK placed the volume by its first
    files' positions: a file without one was stacked first or last ({3}, {6}), or the volume's origin and slice
    spacing were made up from the origin ({1, 4}: origin 0 and slices 2.4 mm apart for 2 and 2 mm), unsaid."""
    slices_partly_placed(tmp_path / "s", unplaced, ("ImagePositionPatient",))
    lacking = ", ".join(f"IM{n:04d}.dcm" for n in sorted(unplaced))
    with pytest.raises(DataError, match=rf"{len(unplaced)} of its 6 DICOM files give no slice position "
                                        rf"\(ImagePositionPatient\) though the others do \({lacking}\)"):
        open_dataset(tmp_path).load("s")


def test_a_series_placed_by_instance_number_alone_reads_in_that_order(tmp_path):
    """No file gives a position: GDCM orders the files by their instance numbers, whatever their names."""
    for n in range(1, 7):
        ds = mr_slice(n, (0.0, 0.0, 0.0))
        del ds.ImagePositionPatient
        save_part10(ds, tmp_path / "s" / f"IM{7 - n:04d}.dcm")
    image = open_dataset(tmp_path).load("s").image
    expected = [np.frombuffer(mr_slice(n, (0.0, 0.0, 0.0)).PixelData, "<u2").reshape(4, 5) for n in range(1, 7)]
    np.testing.assert_array_equal(image, np.stack(expected).astype(np.float32))
