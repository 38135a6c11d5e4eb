"""Options and files a user gets slightly wrong: list files from other editors, outputs that are
inputs, reports and predictions that fail half-way, values out of range. Each ends in one clear
error (or is read as meant), and nothing of the user's is replaced or left half-written."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import assert_one_line_error, run_fewsam
from fewsam.cli import app
from fewsam.errors import FewsamError, RunError, Stopped

VAL = ["patient010_frame01", "patient011_frame01", "patient012_frame01"]
LABEL = np.zeros((40, 48), np.uint8)
LABEL[10:20, 10:20], LABEL[22:30, 10:20], LABEL[10:30, 25:35] = 1, 2, 3


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray, key: str = "label") -> None:
    with h5py.File(path, "w") as f:
        f["image"] = image.astype(np.float32)
        f[key] = label.astype(np.uint8)


@pytest.fixture
def acdc(tmp_path) -> Path:
    """ACDC (SSL4MIS) layout: 2 labelled training slices, 3 validation volumes of 2 slices."""
    root = tmp_path / "acdc"
    (root / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = ["patient001_frame01_slice_0", "patient001_frame01_slice_1"]
    for name in train:
        _write_h5(root / "data" / f"{name}.h5", rng.random((40, 48)), LABEL)
    for name in VAL:
        _write_h5(root / "data" / f"{name}.h5", rng.random((2, 40, 48)), np.stack([LABEL, LABEL]))
    (root / "train_slices.list").write_text("\n".join(train) + "\n")
    (root / "val.list").write_text("\n".join(VAL) + "\n")
    return root


@pytest.fixture
def pred(acdc, tmp_path) -> Path:
    """Perfect predictions of the validation cases, as `fewsam predict` writes them."""
    from fewsam.data import open_dataset, write_prediction

    dataset = open_dataset(acdc)
    folder = tmp_path / "pred"
    for case_id in VAL:
        case = dataset.load(case_id)
        write_prediction(case, case.label, folder)
    return folder


def cli_error(*args: str) -> str:
    """The FewsamError a command raises (``cli.main`` prints it as one line, exit 2)."""
    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, FewsamError), (result.exception, result.output)
    return str(result.exception)


# --- list files -------------------------------------------------------------------------------

def test_a_list_file_from_a_windows_editor_is_read_as_meant(acdc):
    """A byte-order mark, CRLF line ends, blank lines and trailing spaces name the same cases."""
    from fewsam.data import open_dataset

    (acdc / "win.list").write_bytes(b"\xef\xbb\xbf" + f"{VAL[0]}\r\n\r\n{VAL[1]}  \r\n \r\n".encode())
    assert open_dataset(acdc).split("win.list") == VAL[:2]


@pytest.mark.parametrize("lines", [[VAL[0], VAL[1], VAL[0]], [VAL[0], f"{VAL[0]}.h5"]])
def test_a_case_named_twice_in_a_list_is_refused_naming_it(acdc, pred, lines):
    """Scored twice, a case would weigh double in the means and the paired tests."""
    (acdc / "dup.list").write_text("\n".join(lines) + "\n")
    message = cli_error("evaluate", "--pred", str(pred), "--data", str(acdc), "--split", "dup.list", "--quiet")
    assert f"names 1 case(s) more than once: {VAL[0]}; keep one line per case" in message
