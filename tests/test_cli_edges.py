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


# --- outputs that fail half-way -----------------------------------------------------------------

def test_a_folder_in_the_way_of_one_prediction_writes_none_of_them(tmp_path):
    from fewsam.atomic import staged_folder

    out = tmp_path / "pred"
    (out / "b.h5").mkdir(parents=True)
    (out / "a.h5").write_text("an old prediction")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match=r"a folder .*b\.h5 is in the way.*nothing was written"):
        with staged_folder(out, overwrite=True) as staging:
            for name in ("a.h5", "b.h5"):
                (staging / name).write_text("new")
    assert (out / "a.h5").read_text() == "an old prediction" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]  # no staging folder left


def test_a_file_where_a_prediction_folder_goes_writes_none_of_them(tmp_path):
    from fewsam.atomic import staged_folder

    out = tmp_path / "pred"
    out.mkdir()
    (out / "site").write_text("mine")
    with pytest.raises(RunError, match=r"a file .*site is in the way"):
        with staged_folder(out, overwrite=True) as staging:
            (staging / "a.png").write_text("new")
            (staging / "site").mkdir()
            (staging / "site" / "b.png").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["site"]


def test_ctrl_c_while_predictions_move_in_lands_after_the_last_one(tmp_path, monkeypatch):
    """Replacing predictions in an existing folder is file by file: a stop half-way would leave old and
    new predictions mixed, so it is held until every file is in place."""
    from fewsam import atomic
    from fewsam.cli import _stop_on_signals

    out = tmp_path / "pred"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    real_replace = os.replace

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGINT)

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    _stop_on_signals()
    try:
        with pytest.raises(Stopped):
            with atomic.staged_folder(out, overwrite=True) as staging:
                for name in ("a.h5", "b.h5", "c.h5"):
                    (staging / name).write_text("new")
                monkeypatch.setattr(atomic.os, "replace", replace_then_interrupt)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert sorted(p.name for p in out.iterdir()) == ["a.h5", "b.h5", "c.h5", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]
