"""Faults a user meets: progress in logs, a prediction that fails half-way, paths of the wrong kind,
devices that are not there, text in a binned column, and images with nothing (or NaN) in them."""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_LABEL, assert_one_line_error, fit_tiny_supervised, main_raising, run_fewsam, write_h5
from fewsam.cli import app, check_device
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import CacheError, DataError, FewsamError, RunError, Stopped
from fewsam.progress import PlainProgress, progress_bar, tracked

VAL = [f"patient{i:03d}_frame01" for i in range(10, 20)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny supervised run, the data it was fitted on): it predicts from pixels, no SAM needed."""
    return fit_tiny_supervised(tmp_path_factory.mktemp("fitted"), VAL)


@pytest.fixture
def data(fitted, tmp_path) -> Path:
    """A copy of the fitted run's data that a test may damage."""
    return Path(shutil.copytree(fitted[1], tmp_path / "acdc"))



def cli_error(*args: str) -> str:
    """The FewsamError a command raises (``cli.main`` prints it as one line, exit 2)."""
    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, FewsamError), (result.exception, result.output)
    return str(result.exception)


def _damage(data: Path, case: str) -> Path:
    path = data / "data" / f"{case}.h5"
    path.write_bytes(path.read_bytes()[:100])
    return path


# --- progress when stderr is not a terminal ---------------------------------------------------

def test_progress_off_a_terminal_is_plain_lines_every_5_percent():
    stream = io.StringIO()
    with progress_bar(True, stream) as bar:
        job = bar.add_task("fit", total=400, completed=100)  # a resumed fit
        for step in range(300):
            bar.update(job, advance=1, description=f"fit loss {0.5 - step / 1000:.3f}")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("fit 120/400 (30%) loss 0.481, 0:00 elapsed")
    assert lines[-1].startswith("fit 400/400 (100%) loss 0.201, 0:00 elapsed")
    assert len(lines) == 15 and "\x1b" not in stream.getvalue()


def test_progress_lines_every_30_seconds_with_time_left():
    now = [0.0]
    stream = io.StringIO()
    bar = PlainProgress(stream, clock=lambda: now[0])
    job = bar.add_task("embed", total=1000)
    for _ in range(4):
        now[0] += 20.0
        bar.update(job, advance=1)
    assert stream.getvalue().splitlines() == ["embed 2/1000 (0%), 0:40 elapsed, ~5:32:40 left",
                                              "embed 4/1000 (0%), 1:20 elapsed, ~5:32:00 left"]


def test_tracked_writes_lines_to_a_redirected_stderr(capsys):
    assert list(tracked(range(40), "predict")) == list(range(40))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("predict 2/40 (5%)") and lines[-1].startswith("predict 40/40 (100%)")
    assert len(lines) == 20
    list(tracked(range(40), "predict", enabled=False))
    assert capsys.readouterr().err == ""


def test_a_terminal_keeps_the_rich_bar():
    from rich.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    with progress_bar(True, Terminal()) as bar:
        assert isinstance(bar, Progress)


# --- predict leaves nothing behind ----------------------------------------------------------

def test_predict_failing_on_case_7_keeps_the_6_before_it_and_the_rerun_predicts_the_rest(fitted, data, tmp_path):
    run, _ = fitted
    good = (data / "data" / f"{VAL[6]}.h5").read_bytes()
    _damage(data, VAL[6])
    pred = tmp_path / "out" / "pred"
    failed = run_fewsam("predict", str(run), "--data", str(data), "--out", str(pred), "--quiet", cwd=tmp_path)
    assert_one_line_error(failed, VAL[6])
    # no prediction folder: the finished cases, kept hidden beside it, and the log, where predict said it was
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".pred.predict-partial", ".pred.predict.log"]
    assert VAL[6] in (tmp_path / "out" / ".pred.predict.log").read_text().splitlines()[-1]
    (data / "data" / f"{VAL[6]}.h5").write_bytes(good)
    again = run_fewsam("predict", str(run), "--data", str(data), "--out", str(pred), "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming: 6 of 10 cases already predicted" in (pred / "predict.log").read_text()
    assert sorted(p.name for p in pred.iterdir()) == sorted([*(f"{c}.h5" for c in VAL), "predict.log"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pred"]  # the log moved in with them


def test_failed_overwrite_keeps_the_users_files_and_writes_nothing(fitted, data, tmp_path):
    from fewsam.predict import predict

    run, _ = fitted
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "notes.txt").write_text("mine")
    (pred / f"{VAL[0]}.h5").write_text("an old prediction")
    _damage(data, VAL[6])
    with pytest.raises(DataError, match=VAL[6]):
        predict(run, data, pred, overwrite=True, show_progress=False)
    assert sorted(p.name for p in pred.iterdir()) == ["notes.txt", f"{VAL[0]}.h5"]
    assert (pred / f"{VAL[0]}.h5").read_text() == "an old prediction"
    # its log and the cases it finished, for the same command to go on from
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".pred.predict-partial",
                                                                                    ".pred.predict.log"]
    shutil.copy(fitted[1] / "data" / f"{VAL[6]}.h5", data / "data")
    written = predict(run, data, pred, overwrite=True, show_progress=False)
    assert sorted(p.name for p in pred.iterdir()) == sorted([*(f"{c}.h5" for c in VAL), "notes.txt", "predict.log"])
    assert written == [pred / f"{c}.h5" for c in VAL] and (pred / "notes.txt").read_text() == "mine"
    with h5py.File(pred / f"{VAL[0]}.h5") as f:
        assert f["pred"].shape == (2, 40, 48)


# --- paths of the wrong kind ----------------------------------------------------------------

@pytest.mark.parametrize("where", ["root", "data", "data/sub"])
def test_predict_into_the_dataset_is_refused_even_with_overwrite(fitted, data, where):
    from fewsam.predict import predict

    out = data if where == "root" else data / where
    with pytest.raises(RunError, match="lies in the dataset's own folder"):
        predict(fitted[0], data, out, overwrite=True, show_progress=False)
    assert not (data / "data" / "sub").exists()


@pytest.mark.parametrize("where, says", [
    ("project", "holds files that fewsam predict did not write (no predict.log, no prediction of a case of "),
    ("run", "is a fewsam run folder; predictions would mix with its files"),
    ("home", "is your home folder; --overwrite writes only into a folder of predictions"),
])
def test_overwrite_writes_only_into_a_folder_of_predictions(fitted, data, tmp_path, monkeypatch, where, says):
    """--overwrite wrote the predictions into any existing folder, among the files there: a project's, a
    run's, the home folder. A folder of earlier predictions (with the user's notes kept beside them) is
    still written into: ``test_failed_overwrite_keeps_the_users_files_and_writes_nothing``."""
    out = tmp_path / where
    if where == "run":
        shutil.copytree(fitted[0], out)
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    before = sorted(p.name for p in out.iterdir())
    message = cli_error("predict", str(fitted[0]), "--data", str(data), "--out", str(out), "--overwrite")
    assert message.startswith(f"--out {out} {says}"), message
    assert sorted(p.name for p in out.iterdir()) == before


def test_overwrite_never_writes_into_the_filesystem_root(data):
    from fewsam.data import open_dataset
    from fewsam.predict import check_output_folder

    with pytest.raises(RunError, match="^--out / is the filesystem root; --overwrite writes only into a folder"):
        check_output_folder(Path("/"), open_dataset(data), overwrite=True)


def test_predict_out_that_is_a_file(fitted, data, tmp_path):
    (tmp_path / "pred").write_text("x")
    message = cli_error("predict", str(fitted[0]), "--data", str(data), "--out", str(tmp_path / "pred"))
    assert "--out" in message and "is a file" in message
    (tmp_path / "f").write_text("x")
    assert "is a file, not a folder" in cli_error("predict", str(fitted[0]), "--data", str(data), "--out",
                                                  str(tmp_path / "f" / "pred"))


def test_json_that_is_a_folder_and_a_cache_that_is_a_file(data, tmp_path):
    assert "is a folder; give a file path" in cli_error("info", str(data), "--json", str(tmp_path))
    assert "is a folder" in cli_error("compare", "a.json", "b.json", "--json", str(tmp_path))
    (tmp_path / "cache").write_text("x")
    for args in (["embed", "--data", str(data)], ["fit", "fewshot", "--data", str(data), "--out",
                                                 str(tmp_path / "run"), "--labeled-slices", "1"]):
        message = cli_error(*args, "--cache", str(tmp_path / "cache"))
        assert "--cache" in message and "is a file" in message
    assert not (tmp_path / "run").exists()


def test_a_read_only_cache_still_to_be_made_is_refused_up_front(tmp_path, monkeypatch):
    from fewsam.predict import check_cache_folder

    parent = tmp_path / "shared"
    parent.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == parent and mode & os.W_OK else real(p, mode))
    check_cache_folder(parent)  # an existing read-only cache is read (tests/test_read_only_cache.py)
    with pytest.raises(CacheError, match="read-only"):  # a cache folder still to be made inside it
        check_cache_folder(parent / "fewsam")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_through_the_cli(data, tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o555)
    result = run_fewsam("embed", "--data", str(data), "--cache", str(parent / "cache"), cwd=tmp_path)
    assert_one_line_error(result, "read-only")


def test_bench_refuses_to_empty_a_folder_with_files(data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    assert "not empty" in cli_error("bench", "--data", str(data), "--cache", str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "thesis.tex").exists()


# --- devices --------------------------------------------------------------------------------

@pytest.mark.parametrize("device, pattern", [("gpu0", "is not a device"), ("", "is not a device"),
                                             ("cuda:x", "is not a device")])
def test_unknown_device(device, pattern):
    with pytest.raises(FewsamError, match=pattern):
        check_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda():
    with pytest.raises(FewsamError, match="use --device cpu"):
        check_device("cuda")
    check_device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_with_a_gpu():
    check_device("cuda")
    check_device("cuda:0")
    with pytest.raises(FewsamError, match="there is no GPU"):
        check_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("command", [["embed", "--data", "nope"], ["predict", "run", "--data", "nope", "--out", "p"],
                                     ["bench", "--data", "nope"], ["demo", "--out", "nope"],
                                     ["fit", "fewshot", "--data", "nope", "--out", "run", "--labeled-slices", "1"],
                                     ["fit", "supervised", "--data", "nope", "--out", "run", "--labeled-cases", "1"]])
def test_device_is_checked_before_any_work(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--device 'gpu0' is not a device" in cli_error(*command, "--device", "gpu0")
    assert list(tmp_path.iterdir()) == []


def test_device_error_is_one_line(tmp_path):
    result = run_fewsam("fit", "fewshot", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--labeled-slices",
                    "1", "--device", "gpu0", cwd=tmp_path)
    assert_one_line_error(result, "--device 'gpu0' is not a device; use cpu, cuda or cuda:N")
    assert not (tmp_path / "run").exists()


# --- suspicious pixels at predict -----------------------------------------------------------

def test_constant_image_warns_naming_the_case(fitted, data, tmp_path, caplog):
    from fewsam.predict import predict

    write_h5(data / "data" / f"{VAL[3]}.h5", np.zeros((2, 40, 48)), np.stack([TINY_LABEL, TINY_LABEL]))
    with caplog.at_level(logging.WARNING, logger="fewsam"):
        written = predict(fitted[0], data, tmp_path / "pred", show_progress=False)
    assert len(written) == 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and VAL[3] in warnings[0] and "constant image" in warnings[0]


def test_nan_names_the_file_and_slice(fitted, data, tmp_path):
    from fewsam.predict import predict

    image = np.random.default_rng(1).random((2, 40, 48))
    image[1, 5, 5] = np.nan
    path = data / "data" / f"{VAL[2]}.h5"
    write_h5(path, image, np.stack([TINY_LABEL, TINY_LABEL]))
    with pytest.raises(DataError, match=rf"{path}: slice 1 of case {VAL[2]} holds NaN or Inf"):
        predict(fitted[0], data, tmp_path / "pred", show_progress=False)
    assert not (tmp_path / "pred").exists()


# --- every option says its default ----------------------------------------------------------

HAND_WRITTEN = ("embed", "predict", "evaluate", "compare", "report", "bench", "demo", "info")


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_every_option_says_its_default(name):
    """Typer shows non-None defaults; a None default must say in its help what it means."""
    import typer

    command = typer.main.get_command(app).commands[name]
    for param in command.params:
        if param.param_type_name != "option" or param.required or param.is_flag or param.name == "help":
            continue
        if param.default is None:
            assert "[default:" in (param.help or ""), f"{name} {param.opts}: {param.help!r}"
        else:
            assert param.show_default is not False, f"{name} {param.opts}"


@pytest.mark.parametrize("name", ["predict", "evaluate"])
def test_split_help_names_the_default_split(name):
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    line = next(line for line in result.output.splitlines() if "--split" in line)
    assert "[default: val]" in line


@pytest.mark.parametrize("args", [["predict"], ["fit", "fewshot"], ["evaluate"]])
def test_help_lists_on_off_flags_without_a_value_type(args):
    """"--overwrite <bool>" read as if the flag took a value, which it refuses."""
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    flag = "--overwrite" if args != ["fit", "fewshot"] else "--test-mirroring"
    assert flag in result.output
    assert "<path>" in result.output or "<int>" in result.output  # options that take a value keep their type


def test_folder_options_that_are_files(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("x")
    assert "--out taken is a file" in cli_error("fit", "supervised", "--data", str(data), "--out", "taken",
                                                "--labeled-cases", "1")
    assert "--out taken is a file" in cli_error("demo", "--out", "taken")
    assert "--pred taken is a file" in cli_error("evaluate", "--pred", "taken", "--data", str(data))
    assert (tmp_path / "taken").read_text() == "x"


def test_a_constant_labelled_image_is_refused_before_any_work(tmp_path):
    """A blank exported image in the labelled budget: one clear error, no run folder."""
    import numpy as np
    from PIL import Image

    from fewsam.api import FitOptions, fit
    from fewsam.errors import DataError
    from fewsam.methods.supervised import SupervisedConfig

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        image = np.zeros((32, 32), np.uint8) if i == 0 else rng.integers(0, 255, (32, 32), dtype=np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255
        Image.fromarray(image).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    options = FitOptions(data=root, run=tmp_path / "run", labeled_images=2, show_progress=False)
    with pytest.raises(DataError, match="constant image"):
        fit("supervised", options, SupervisedConfig(steps=1, image_size=16))
    assert not (tmp_path / "run").exists()


# --- NaN at fit, 4D NIfTI files -------------------------------------------------------------

def _nifti_phantom(root: Path) -> Path:
    write_phantom_dataset(root, n_train=2, n_val=1, slices=3)
    return root


def _rewrite_nifti(path: Path, change) -> None:
    import nibabel as nib

    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj, dtype=np.float32)), img.affine), str(path))


def test_a_labelled_image_with_nan_is_refused_at_fit_naming_file_and_slice(tmp_path):
    data = _nifti_phantom(tmp_path / "nifti")
    path = data / "imagesTr" / "phantom_000_0000.nii.gz"

    def nan_in_slice_2(a):
        a[..., 2][5, 5] = np.nan  # NIfTI (x, y, z): slice 2 in fewsam's (z, y, x)
        return a

    _rewrite_nifti(path, nan_in_slice_2)
    result = run_fewsam("fit", "supervised", "--data", str(data), "--labeled-cases", "1", "--steps", "1",
                        "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert_one_line_error(result, f"{path}: slice 2 of case phantom_000 holds NaN or Inf")
    assert not (tmp_path / "run").exists()


def test_a_4d_nifti_is_read_as_its_first_volume_and_said_once(tmp_path, caplog, monkeypatch):
    import nibabel as nib

    from fewsam import progress
    from fewsam.data import open_dataset

    monkeypatch.setattr(progress, "_said", {})
    data = _nifti_phantom(tmp_path / "nifti")
    paths = [data / "imagesTr" / f"phantom_00{i}_0000.nii.gz" for i in range(2)]
    first = {p: np.asarray(nib.load(str(p)).dataobj, dtype=np.float32) for p in paths}
    for path in paths:
        _rewrite_nifti(path, lambda a: np.stack([a, a[::-1] + 7], axis=-1))
    dataset = open_dataset(data)
    with caplog.at_level(logging.INFO, logger="fewsam"):
        cases = [dataset.load(f"phantom_00{i}") for i in range(2)]
    for case, path in zip(cases, paths):
        np.testing.assert_array_equal(case.image, first[path].transpose(2, 1, 0))
    notices = [r.getMessage() for r in caplog.records if "4th axis" in r.getMessage()]
    assert notices == [f"{paths[0]} holds 2 volumes along its 4th axis (time frames or channels): fewsam segments "
                       "the first of each such file; export the frame or channel you want as a 3D file"]


@pytest.mark.parametrize("frames", [1, 2])
def test_a_4d_nifti_gets_a_prediction_a_viewer_overlays(tmp_path, frames):
    """A one-volume 4D image (x, y, z, 1) gets an (x, y, z, 1) prediction, its own shape; one of
    several volumes a 3D prediction of the volume segmented. Both read back as written."""
    import nibabel as nib

    from fewsam.data import open_dataset
    from fewsam.data.writers import read_prediction, write_prediction

    data = _nifti_phantom(tmp_path / "nifti")
    path = data / "imagesTr" / "phantom_000_0000.nii.gz"
    _rewrite_nifti(path, lambda a: np.stack([a] * frames, axis=-1))
    case = open_dataset(data).load("phantom_000")
    pred = (case.image > case.image.mean()).astype(np.uint8)
    written = nib.load(str(write_prediction(case, pred, tmp_path / "pred")))
    image = nib.load(str(path))
    assert written.shape == (image.shape if frames == 1 else image.shape[:3])
    np.testing.assert_array_equal(written.affine, image.affine)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), pred)


def _fit_until(command: list[str], cwd: Path, path: Path, marker: str = "") -> subprocess.Popen:
    """Start ``fewsam`` in a process of its own and return once ``path`` exists (and shows ``marker``)."""
    env = dict(os.environ, FEWSAM_NO_REEXEC="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "fewsam", *command], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not (path.exists() and (not marker or marker in path.read_text())):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"no {marker!r} in {path}"
            time.sleep(0.2)
    except AssertionError:
        process.kill()  # a fit of 100,000 steps is not left running after the test fails
        raise
    return process


def _stop_and_check(process: subprocess.Popen, signum: int, how: str, run: Path) -> None:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert stderr.strip().splitlines() == [f"{how}; run the same command again to resume"]
    last = (run / "fit.log").read_text().splitlines()[-1]
    assert last.endswith(f"{how}; the same command resumes from the last checkpoint"), last


@pytest.mark.parametrize("argv, ending", [
    (["fewsam", "fit", "fewshot", "--data", "d"], "run the same command again to resume"),
    (["fewsam", "embed", "--data", "d"], "run the same command again to resume"),
    (["fewsam", "predict", "run", "--data", "d", "--out", "p"],
     "no prediction was written (the folder is written whole, at the end), but the embeddings encoded so far are "
     "kept in the cache: the same command again encodes only the rest"),
    (["fewsam", "evaluate", "--pred", "p", "--data", "d"],
     "nothing partial was kept: run the same command again to start over"),
])
def test_a_stopped_command_says_whether_it_resumes(monkeypatch, capsys, argv, ending):
    from fewsam.errors import Stopped

    monkeypatch.setattr(sys, "argv", argv)
    code, lines = main_raising(monkeypatch, capsys, Stopped(signal.SIGINT))
    assert (code, lines) == (130, [f"interrupted; {ending}"])


def test_sigterm_and_ctrl_c_stop_a_fit_logged_and_resumable(tmp_path):
    """A scheduler's or kill's SIGTERM (exit 143) and Ctrl-C (exit 130): one line saying how to
    resume, fit.log's last line says how the fit ended, the run's lock is let go, and the same
    command resumes it."""
    data = write_phantom_dataset(tmp_path / "ph", n_train=2, n_val=1, slices=3)
    run = tmp_path / "run"
    command = ["fit", "supervised", "--data", str(data), "--labeled-cases", "1", "--steps", "100000",
               "--val-every", "2", "--image-size", "16", "--batch-size", "2", "--quiet", "--out", str(run)]
    started = _fit_until(command, tmp_path, run / "checkpoint_last.pt")
    _stop_and_check(started, signal.SIGTERM, "terminated (SIGTERM)", run)
    resumed = _fit_until(command, tmp_path, run / "fit.log", "resumed at step")
    _stop_and_check(resumed, signal.SIGINT, "interrupted", run)


def test_sigterm_while_predicting_leaves_no_partial_folder(tmp_path):
    """The command line's SIGTERM handler raises in the middle of writing predictions; the staging
    folder (and the parent made for it) is removed, as on any other failure."""
    from fewsam.cli import _stop_on_signals
    from fewsam.atomic import staged_folder

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    _stop_on_signals()
    try:
        with pytest.raises(Stopped) as stop, staged_folder(tmp_path / "new" / "out", overwrite=False) as staging:
            (staging / "case.nii.gz").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs before this ends
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert stop.value.signum == signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_error_line_saying_the_same_command_resumes(monkeypatch, capsys):
    import errno

    full_disk = OSError(errno.ENOSPC, "No space left on device", "runs/fs3/.last.pt.1a2b3c4d.tmp")
    code, lines = main_raising(monkeypatch, capsys, full_disk)
    assert code == 2
    assert lines == [
        "error: No space left on device writing runs/fs3/.last.pt.1a2b3c4d.tmp; free space (or use another "
        "--out / --cache), then run the same command again"]
