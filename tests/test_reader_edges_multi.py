"""Input a medical-imaging user brings that a reader could misread: a folder holding several DICOM
series, nnU-Net channel files of one colour image, one-hot label volumes, dataset.json case lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_fewsam
from test_dicom import arrays, write_series

from fewsam.data import open_dataset
from fewsam.errors import DataError


def write_two_series_in_one_folder(folder: Path) -> None:
    """A T1 and a T2 of one patient exported into one folder (files named by the exporter)."""
    t1, _ = arrays(0, (6, 6, 5))
    t2, _ = arrays(1, (5, 6, 5))
    write_series(folder, t1, uid="1.2.3.1", extra_tags={"0020|0011": "3", "0008|103e": "T1 MPRAGE"})
    write_series(folder / "t2", t2, uid="1.2.3.2", extra_tags={"0020|0011": "4", "0008|103e": "t2_tse"})
    for path in (folder / "t2").iterdir():
        path.rename(folder / f"t2_{path.name}")
    (folder / "t2").rmdir()


def test_a_folder_of_two_full_dicom_series_is_refused_naming_each_series(tmp_path):
    """The T1 and T2 of one patient in one folder are never stacked into one volume: the refusal
    names each series as a viewer shows it (number, description, UID) and says to split the folder."""
    write_two_series_in_one_folder(tmp_path / "data" / "p1")
    dataset = open_dataset(tmp_path / "data")
    with pytest.raises(DataError) as refusal:
        dataset.load("p1")
    message = str(refusal.value)
    for expected in ("holds 2 DICOM series", "series 3 'T1 MPRAGE' of 6 file(s)", "UID 1.2.3.1",
                     "series 4 't2_tse' of 5 file(s) such as t2_slice1.dcm", "UID 1.2.3.2",
                     "put each series in its own folder (p1/<series>/"):
        assert expected in message, message
    info = run_fewsam("info", "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert "unusable:" in info.stdout and "'T1 MPRAGE'" in info.stdout, info.stdout


def test_two_dicom_series_each_in_its_own_folder_are_two_cases(tmp_path):
    """What the refusal asks for works: each series in a folder of its own is its own case."""
    t1, _ = arrays(0, (6, 6, 5))
    t2, _ = arrays(1, (5, 6, 5))
    write_series(tmp_path / "p1" / "t1", t1, uid="1.2.3.1")
    write_series(tmp_path / "p1" / "t2", t2, uid="1.2.3.2")
    dataset = open_dataset(tmp_path)
    assert sorted(dataset.entries) == ["p1/t1", "p1/t2"]
    np.testing.assert_array_equal(dataset.load("p1/t1").image, t1.astype(np.float32))
    np.testing.assert_array_equal(dataset.load("p1/t2").image, t2.astype(np.float32))
