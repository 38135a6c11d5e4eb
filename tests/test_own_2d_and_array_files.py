"""Data a user brings from other tools as those tools lay it out: SSL4MIS h5 folders, index tables written
on Windows or by spreadsheets, 2D mask folders."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import assert_one_line_error, run_fewsam
from fewsam.data import open_dataset


def _acdc_case(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = image, label


def ssl4mis_acdc(root: Path) -> Path:
    """ACDC as SSL4MIS's release lays it out: volumes in data/, the training slices in data/slices/."""
    rng = np.random.default_rng(0)
    label = np.zeros((2, 12, 10), np.uint8)
    label[:, 3:9, 2:8] = 1
    label[:, 4:7, 3:6] = 3
    for case in ("patient001_frame01", "patient002_frame01"):
        _acdc_case(root / "data" / f"{case}.h5", rng.random(label.shape, np.float32), label)
    for z in range(2):
        _acdc_case(root / "data" / "slices" / f"patient001_frame01_slice_{z}.h5", rng.random((12, 10), np.float32),
                   label[z])
    (root / "train_slices.list").write_text("patient001_frame01_slice_0\npatient001_frame01_slice_1\n")
    (root / "val.list").write_text("patient002_frame01\n")
    return root


def test_ssl4mis_training_slices_in_data_slices_are_the_train_split(tmp_path):
    """SSL4MIS opens data/slices/<case>.h5 for each line of train_slices.list: read from data/ alone, every line
    named a missing case and the labelled budget could not be taken."""
    ds = open_dataset(ssl4mis_acdc(tmp_path / "acdc"))
    assert ds.split("train") == ["patient001_frame01_slice_0", "patient001_frame01_slice_1"]
    case = ds.load("patient001_frame01_slice_1")
    assert case.image.shape == (1, 12, 10) and sorted(np.unique(case.label)) == [0, 1, 3]
    assert ds.split("val") == ["patient002_frame01"]


def test_a_slice_in_both_data_and_data_slices_is_refused_naming_both(tmp_path):
    root = ssl4mis_acdc(tmp_path / "acdc")
    with h5py.File(root / "data" / "slices" / "patient001_frame01_slice_0.h5") as f:
        _acdc_case(root / "data" / "patient001_frame01_slice_0.h5", f["image"][()], f["label"][()])
    result = run_fewsam("info", str(root), cwd=tmp_path)
    assert_one_line_error(result, "are both case 'patient001_frame01_slice_0'")
    assert "slices/patient001_frame01_slice_0.h5" in result.stderr
