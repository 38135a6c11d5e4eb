"""A predict stopped half-way (Ctrl-C, SIGTERM, kill -9, a damaged case) keeps the cases it finished beside
--out, and the same command again predicts only the rest; --out still appears whole, at the end, equal to an
uninterrupted predict's. Another predict (other options, --no-resume) starts afresh and says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import fit_tiny_supervised
from fewsam import cli
from fewsam.cli import app
from fewsam import predict as predicting
from fewsam.errors import RunError, Stopped
from fewsam.predict import predict

VAL = ["patient010_frame01", "patient011_frame01", "patient012_frame01"]


def kept_folder(out: Path) -> Path:
    """Where the finished cases of a stopped predict into ``out`` wait, as the docs name it."""
    return out.parent / f".{out.name}.predict-partial"


def kept_file(out: Path, case: str) -> Path:
    return kept_folder(out) / "predictions" / f"{case}.h5"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny supervised run, its data of 3 validation cases): it predicts from pixels, no SAM needed."""
    return fit_tiny_supervised(tmp_path_factory.mktemp("fitted"), VAL)


@pytest.fixture(scope="module")
def uninterrupted(fitted, tmp_path_factory) -> dict[str, bytes]:
    """Each prediction file of a predict that was never stopped, by name."""
    out = tmp_path_factory.mktemp("uninterrupted") / "pred"
    predict(*fitted, out, show_progress=False)
    return {p.name: p.read_bytes() for p in out.iterdir() if p.name != "predict.log"}


def predicted_cases(monkeypatch, stop_at: int | None = None) -> list[str]:
    """The cases predict predicts from now on, in order; with ``stop_at``, Ctrl-C as it comes to that case
    (0: the first)."""
    cases: list[str] = []
    real = predicting.predict_case_file

    def counted(dataset, case_id, *args, **kwargs):
        if len(cases) == stop_at:
            raise Stopped(signal.SIGINT)
        cases.append(case_id)
        return real(dataset, case_id, *args, **kwargs)

    monkeypatch.setattr(predicting, "predict_case_file", counted)
    return cases


def stopped_after_one(monkeypatch, run: Path, data: Path, out: Path, **options) -> Stopped:
    with pytest.raises(Stopped) as stopped:
        predict(run, data, out, show_progress=False, **options)
    monkeypatch.undo()
    return stopped.value


def kept_then_stopped_as_it_says_so(monkeypatch, run: Path, data: Path, out: Path) -> None:
    """A predict into ``out`` stopped after its first case; the next predict is stopped (Ctrl-C) as it says
    what it does with the case kept, before its first case."""
    from fewsam import resumable

    predicted_cases(monkeypatch, stop_at=1)
    stopped_after_one(monkeypatch, run, data, out)

    def stopped_as_it_says(message):
        raise Stopped(signal.SIGINT)

    monkeypatch.setattr(resumable, "tell", stopped_as_it_says)


def test_a_stop_before_the_first_case_of_a_run_that_encodes_nothing_offers_no_embeddings(fitted, tmp_path,
                                                                                          monkeypatch):
    """The U-Net predicts from pixels: Ctrl-C before its first case leaves nothing in the cache, so the stop
    message says only that no prediction was written and that the same command starts over."""
    run, data = fitted
    out = tmp_path / "pred"
    predicted_cases(monkeypatch, stop_at=0)
    stop = stopped_after_one(monkeypatch, run, data, out)
    line = cli.stopped_message(stop, ["fewsam", "predict", str(run), "--data", str(data), "--out", str(out)])
    assert line.startswith("interrupted; no prediction was written") and "start over" in line, line
    assert "embedding" not in line and "cache" not in line, line


def test_the_same_command_again_predicts_only_the_cases_a_stopped_predict_had_not_finished(
        fitted, uninterrupted, tmp_path, monkeypatch, caplog):
    run, data = fitted
    out = tmp_path / "pred"
    predicted_cases(monkeypatch, stop_at=1)
    stop = stopped_after_one(monkeypatch, run, data, out)
    kept = kept_folder(out)
    first = kept_file(out, VAL[0])
    assert not out.exists() and first.is_file()  # a user's tools never see a half-filled --out
    before = first.stat()
    line = cli.stopped_message(stop, ["fewsam", "predict", str(run), "--data", str(data), "--out", str(out)])
    assert f"1 of 3 predictions are kept in {kept}" in line and "run the same command again to resume" in line, line

    again = predicted_cases(monkeypatch)
    caplog.set_level("INFO", logger="fewsam")
    written = predict(run, data, out, show_progress=False)
    assert again == VAL[1:]  # the finished case is not predicted again
    assert f"resuming: 1 of 3 cases already predicted in {kept}" in caplog.messages
    assert written == [out / f"{case}.h5" for case in VAL]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "predict.log"} == uninterrupted
    after = (out / f"{VAL[0]}.h5").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # moved in, not written again
    assert "resuming: 1 of 3" in (out / "predict.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]  # nothing left beside --out


def test_a_stop_as_a_predict_takes_up_the_kept_cases_keeps_them(fitted, tmp_path, monkeypatch):
    """Ctrl-C as the same command again starts, before its first case: the cases kept are still kept."""
    run, data = fitted
    out = tmp_path / "pred"
    kept_then_stopped_as_it_says_so(monkeypatch, run, data, out)  # "resuming: 1 of 3 ...", said as it takes them up
    stop = stopped_after_one(monkeypatch, run, data, out)
    assert stop.kept is not None and kept_file(out, VAL[0]).is_file()
    again = predicted_cases(monkeypatch)
    predict(run, data, out, show_progress=False)
    assert again == VAL[1:]


def test_a_kept_case_whose_image_file_was_replaced_since_is_predicted_again(fitted, tmp_path, monkeypatch, caplog):
    """A case's image re-exported between the stop and the same command again: its kept prediction is of the
    old image, so it is predicted again; the other kept case, whose file is as it was, is taken up."""
    import shutil

    import numpy as np
    from conftest import TINY_LABEL, write_h5

    run, data = fitted
    data = Path(shutil.copytree(data, tmp_path / "acdc"))  # the module's data stays as it is for the others
    out = tmp_path / "pred"
    predicted_cases(monkeypatch, stop_at=2)
    stopped_after_one(monkeypatch, run, data, out)
    image = data / "data" / f"{VAL[0]}.h5"
    before = image.stat()
    write_h5(image, np.random.default_rng(1).random((2, 40, 48)), np.stack([TINY_LABEL, TINY_LABEL]))
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))

    again = predicted_cases(monkeypatch)
    caplog.set_level("INFO", logger="fewsam")
    predict(run, data, out, show_progress=False)
    assert again == [VAL[0], VAL[2]]  # VAL[1], unchanged, is taken up
    assert "1 kept case whose input files changed is predicted again" in caplog.messages, caplog.messages
    assert f"resuming: 1 of 3 cases already predicted in {kept_folder(out)}" in caplog.messages


def test_ctrl_c_as_the_predictions_move_in_leaves_them_whole_and_nothing_kept(fitted, tmp_path, monkeypatch):
    from fewsam import atomic, resumable

    run, data = fitted
    out = tmp_path / "pred"
    real_sync, real_move = atomic.sync_folder, resumable.move_in_whole

    def synced_then_ctrl_c(folder):  # the move's last step, with Ctrl-C held until it ends
        real_sync(folder)
        signal.raise_signal(signal.SIGINT)

    def moved_in(*args, **kwargs):
        monkeypatch.setattr(atomic, "sync_folder", synced_then_ctrl_c)
        real_move(*args, **kwargs)

    monkeypatch.setattr(resumable, "move_in_whole", moved_in)
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    cli._stop_on_signals()
    try:
        with pytest.raises(Stopped) as stopped:
            predict(run, data, out, show_progress=False)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert stopped.value.written == str(out) and stopped.value.kept is None
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{case}.h5" for case in VAL] + ["predict.log"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]


@pytest.mark.parametrize("option, said", [
    ("--save-probabilities", "were made by another predict (probabilities: false -> true); starting afresh"),
    ("--no-resume", "(--no-resume): the 1 predictions kept in"),
])
def test_another_predict_into_the_same_out_starts_afresh_and_says_so(fitted, tmp_path, monkeypatch, caplog,
                                                                      option, said):
    run, data = fitted
    out = tmp_path / "pred"
    predicted_cases(monkeypatch, stop_at=1)
    stopped_after_one(monkeypatch, run, data, out)
    again = predicted_cases(monkeypatch)
    caplog.set_level("INFO", logger="fewsam")
    result = CliRunner().invoke(app, ["predict", str(run), "--data", str(data), "--out", str(out), option, "--quiet"])
    assert result.exit_code == 0, result.output
    assert again == VAL  # nothing of the other predict's is taken up
    [notice] = [m for m in caplog.messages if "not resuming" in m]
    assert said in notice and not any(m.startswith("resuming:") for m in caplog.messages), caplog.messages
    probabilities = sorted(p.name for p in out.glob("*.probabilities.npz"))
    assert probabilities == ([f"{case}.probabilities.npz" for case in VAL] if option == "--save-probabilities" else [])


KILLED = """
import os, signal, sys
from pathlib import Path

from fewsam import predict as predicting

real = predicting.predict_case_file
done = []


def killed_half_way(dataset, case_id, predictor, cache, device, staging, *args, **kwargs):
    if done:  # the second case: half of its file written, and a temporary, when kill -9 comes
        (staging / f"{case_id}.h5").write_bytes(b"half of a prediction")
        (staging / f".{case_id}.h5.0123abcd.tmp").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    done.append(case_id)
    return real(dataset, case_id, predictor, cache, device, staging, *args, **kwargs)


predicting.predict_case_file = killed_half_way
predicting.predict(sys.argv[1], sys.argv[2], sys.argv[3], show_progress=False)
"""


def test_a_file_a_kill_left_half_written_is_not_taken_for_a_finished_case(fitted, uninterrupted, tmp_path,
                                                                          monkeypatch):
    run, data = fitted
    out = tmp_path / "pred"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    killed = subprocess.run([sys.executable, "-c", KILLED, str(run), str(data), str(out)], env=env, timeout=300,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert kept_file(out, VAL[1]).read_bytes() == b"half of a prediction"
    assert list(json.loads((kept_folder(out) / "finished.json").read_text())["finished"]) == [VAL[0]]

    again = predicted_cases(monkeypatch)
    predict(run, data, out, show_progress=False)  # the lock died with the killed predict
    assert again == VAL[1:]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "predict.log"} == uninterrupted


def test_a_predict_into_a_long_out_leaves_the_kept_cases_and_log_of_one_that_begins_alike(fitted, tmp_path,
                                                                                         monkeypatch, caplog):
    """Two long --out in one folder, alike but for their ends, each keep their own finished cases and log."""
    from fewsam.resumable import kept_folder as kept_beside

    run, data = fitted
    out, other = (tmp_path / f"predictions_acdc_fewshot_3cases_seed0_val_mirrored_refined_2026_12_07_{end}"
                  for end in "ab")
    predicted_cases(monkeypatch, stop_at=1)
    stopped_after_one(monkeypatch, run, data, out)
    kept = kept_beside(out)
    journal = (kept / "finished.json").read_bytes()

    others = predicted_cases(monkeypatch)
    caplog.set_level("INFO", logger="fewsam")
    predict(run, data, other, show_progress=False)
    assert others == VAL and not any("resuming" in m for m in caplog.messages), caplog.messages
    assert (kept / "finished.json").read_bytes() == journal and (kept / "predictions" / f"{VAL[0]}.h5").is_file()
    assert "predictions are kept in" not in (other / "predict.log").read_text()  # the stopped one's log is its own
    monkeypatch.undo()

    again = predicted_cases(monkeypatch)
    predict(run, data, out, show_progress=False)
    assert again == VAL[1:]
    assert "1 of 3 predictions are kept in" in (out / "predict.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, other.name]


def test_what_an_earlier_fewsam_left_beside_a_long_out_under_its_plain_name_is_cleared(fitted, tmp_path, caplog):
    """Earlier releases named the hidden folders beside a long --out by its first 64 characters alone: a
    killed writer's staging there is removed as today's are, and finished cases kept there for this --out
    (their journal names it) are removed and said; those a long --out that begins alike kept are left."""
    from fewsam.atomic import ABANDONED_GRACE_S, HIDDEN_NAME_KEPT

    run, data = fitted
    out, other = (tmp_path / f"predictions_acdc_fewshot_3cases_seed0_val_mirrored_refined_2026_12_07_{end}"
                  for end in "ab")
    plain = f".{out.name[:HIDDEN_NAME_KEPT]}"
    staging, kept = tmp_path / f"{plain}.partial-0123abcd", tmp_path / f"{plain}.predict-partial"
    staging.mkdir()
    old = time.time() - 2 * ABANDONED_GRACE_S
    os.utime(staging, (old, old))
    (kept / "predictions").mkdir(parents=True)
    (kept / "predictions" / f"{VAL[0]}.h5").write_bytes(b"an earlier prediction")
    for owner in (other, out):
        (kept / "finished.json").write_text(json.dumps({"identity": {"out": str(owner)},
                                                        "finished": {VAL[0]: [f"{VAL[0]}.h5"]}}))
        caplog.clear()
        caplog.set_level("INFO", logger="fewsam")
        predict(run, data, out, show_progress=False, overwrite=True)
        assert not staging.exists()
        assert kept.is_dir() == (owner == other)
        assert any(f"removed {kept}" in m for m in caplog.messages) == (owner == out), caplog.messages
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_two_predicts_into_one_out_at_once_do_not_fill_the_same_folder(fitted, tmp_path):
    from fewsam.atomic import let_go, take_folder

    run, data = fitted
    out = tmp_path / "pred"
    kept = kept_folder(out)
    kept.mkdir()
    log = tmp_path / ".pred.predict.log"
    log.write_text("the lines of the predict at work\n")
    fd, _ = take_folder(kept)  # a predict into the same --out at work
    try:
        with pytest.raises(RunError, match=f"another predict into {out} is running"):
            predict(run, data, out, show_progress=False)
    finally:
        let_go(fd)
    assert not out.exists() and list(kept.iterdir()) == []
    assert log.read_text() == "the lines of the predict at work\n"  # not a "stopped" line in its log


def test_a_predict_through_a_symlink_to_the_out_of_one_at_work_is_refused_too(fitted, tmp_path):
    """A symlink to --out names the same folder: its lock, finished cases and log are the real folder's, so a
    predict through the link while one is at work in the folder is refused as a second predict into it is,
    and, once free, writes into the folder with nothing hidden left beside the link."""
    from fewsam.atomic import let_go, take_folder

    run, data = fitted
    out, link = tmp_path / "pred", tmp_path / "link"
    out.mkdir()
    link.symlink_to(out, target_is_directory=True)
    kept = kept_folder(out)
    kept.mkdir()
    fd, _ = take_folder(kept)  # a predict into the folder itself at work
    try:
        with pytest.raises(RunError, match="another predict into .* is running"):
            predict(run, data, link, show_progress=False)
    finally:
        let_go(fd)
    assert list(out.iterdir()) == [] and list(kept.iterdir()) == []
    predict(run, data, link, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{case}.h5" for case in VAL] + ["predict.log"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [link.name, out.name]


def test_a_stopped_ray_predict_resumes_from_the_cases_its_workers_answered(fitted, tmp_path, monkeypatch):
    """The driver records each case as a worker answers it, so a stopped --ray job goes on as a local one does
    (the cluster stood in for by one that writes each case's file where a worker would)."""
    from fewsam.distributed import ray_jobs

    run, data = fitted
    out = tmp_path / "pred"
    asked: list[list[str]] = []

    def on_a_cluster(address, job, case_ids, staging, workers=None, show_progress=True, on_case=None, stop_at=None):
        asked.append(list(case_ids))
        for answered, case_id in enumerate(case_ids):
            if answered == stop_at:
                raise Stopped(signal.SIGINT)
            (staging / f"{case_id}.h5").write_bytes(case_id.encode())
            on_case(case_id, [Path(f"{case_id}.h5")])
        return [Path(f"{case_id}.h5") for case_id in case_ids]

    monkeypatch.setattr(ray_jobs, "predict_on_ray", lambda *args, **kwargs: on_a_cluster(*args, **kwargs, stop_at=1))
    with pytest.raises(Stopped):
        predict(run, data, out, show_progress=False, ray="127.0.0.1:6379")
    monkeypatch.setattr(ray_jobs, "predict_on_ray", on_a_cluster)
    written = predict(run, data, out, show_progress=False, ray="127.0.0.1:6379")
    assert asked == [VAL, VAL[1:]]
    assert written == [out / f"{case}.h5" for case in VAL]
    assert all((out / f"{case}.h5").read_bytes() == case.encode() for case in VAL)


def other_file_system(tmp_path: Path) -> Path:
    """A folder on another file system than ``tmp_path`` (the RAM disk at /dev/shm), where no rename from
    beside --out reaches; the test is skipped where there is none."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no writable file system other than the test folder's")
    return Path(__import__("tempfile").mkdtemp(dir=shm))


def test_an_out_that_links_to_another_file_system_receives_its_predictions(fitted, uninterrupted, tmp_path):
    """--out a link to a folder on other storage: the finished set waits beside the folder the link names, on its
    file system, and nothing is left beside the link."""
    import shutil

    run, data = fitted
    elsewhere = other_file_system(tmp_path)
    out = tmp_path / "pred"
    out.symlink_to(elsewhere, target_is_directory=True)
    try:
        written = predict(run, data, out, show_progress=False)
        assert written == [out / f"{case}.h5" for case in VAL]
        assert {p.name: p.read_bytes() for p in elsewhere.iterdir() if p.name != "predict.log"} == uninterrupted
        assert "done: 3 predictions" in (elsewhere / "predict.log").read_text()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]  # nothing kept or staged beside --out
        assert not list(elsewhere.parent.glob(f".{elsewhere.name}*"))
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def out_on_a_mount_point(tmp_path: Path, monkeypatch) -> Path:
    """An --out that is a mount point (a container's volume) stood in for: --out on the RAM disk, its finished
    cases and log waiting in ``tmp_path``, on another file system, as they wait in a mount point's parent."""
    from fewsam import resumable

    out = other_file_system(tmp_path)
    monkeypatch.setattr(resumable, "kept_folder", lambda target: tmp_path / f".{target.name}.predict-partial")
    monkeypatch.setattr(predicting, "running_log", lambda target: tmp_path / f".{target.name}.predict.log")
    return out


def test_a_full_disk_as_the_set_is_copied_to_a_mount_point_leaves_out_as_it_was(fitted, uninterrupted, tmp_path,
                                                                                  monkeypatch):
    """The copy to an --out on another file system fails on its second file (the disk there is full): --out
    receives none of the set, and the whole set stays kept for the same command again, which copies it in."""
    import errno
    import shutil

    from fewsam import atomic, resumable

    run, data = fitted
    out = out_on_a_mount_point(tmp_path, monkeypatch)
    copied, real_copy = [], atomic.shutil.copyfileobj

    def full_on_the_second(source, target):
        if copied:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        copied.append(source)
        real_copy(source, target)

    monkeypatch.setattr(atomic.shutil, "copyfileobj", full_on_the_second)
    try:
        with pytest.raises(OSError, match="No space left"):
            predict(run, data, out, show_progress=False)
        assert list(out.iterdir()) == []
        assert all((resumable.kept_folder(out) / "predictions" / f"{case}.h5").is_file() for case in VAL)
        monkeypatch.setattr(atomic.shutil, "copyfileobj", real_copy)
        assert predict(run, data, out, show_progress=False) == [out / f"{case}.h5" for case in VAL]
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "predict.log"} == uninterrupted
        assert list(tmp_path.iterdir()) == []  # the kept cases went in with the copy
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_a_run_refitted_with_other_options_and_no_other_files_is_another_predicts_identity(tmp_path):
    """A prompted run holds no weights, only its options (box or point prompts, the SAM model): two such runs
    fitted one after the other into one folder are told apart by their config, so the cases a stopped predict
    kept from the first are not taken up for the second."""
    import shutil

    from fewsam.models.precision import FP32
    from fewsam.predict import prediction_identity

    run = tmp_path / "run"

    def identity_of_fit(*options: str) -> dict:
        shutil.rmtree(run, ignore_errors=True)
        result = CliRunner().invoke(app, ["fit", "prompted", "--out", str(run), "--quiet", *options])
        assert result.exit_code == 0, result.output
        return prediction_identity(tmp_path / "pred", run, tmp_path / "data", None, VAL, False, FP32, "cpu", False)

    assert identity_of_fit("--prompt", "box") != identity_of_fit("--prompt", "points")


def test_a_stopped_no_resume_predict_says_its_cases_are_taken_up_without_that_option(fitted, tmp_path, monkeypatch):
    """The same command again, --no-resume and all, would discard what it kept: the stop message and the log
    name the command that takes them up."""
    run, data = fitted
    out = tmp_path / "pred"
    predicted_cases(monkeypatch, stop_at=1)
    stop = stopped_after_one(monkeypatch, run, data, out, resume=False)
    argv = ["fewsam", "predict", str(run), "--data", str(data), "--out", str(out), "--no-resume"]
    line = cli.stopped_message(stop, argv)
    assert "1 of 3 predictions are kept" in line and "without --no-resume" in line, line
    assert "the same command again" not in line, line
    log = (tmp_path / ".pred.predict.log").read_text()
    assert "without --no-resume" in log and "the same command again" not in log, log


def test_a_stop_as_another_predict_starts_afresh_leaves_the_earlier_ones_cases_and_claims_none(
        fitted, tmp_path, monkeypatch):
    """Ctrl-C as a predict with other options says it starts afresh: the cases kept are another predict's, which
    this command would not take up, so its stop message does not offer them; the earlier command still can."""
    run, data = fitted
    out = tmp_path / "pred"
    kept_then_stopped_as_it_says_so(monkeypatch, run, data, out)  # "not resuming: ... starting afresh"
    stop = stopped_after_one(monkeypatch, run, data, out, save_probabilities=True)
    line = cli.stopped_message(stop, ["fewsam", "predict", str(run), "--data", str(data), "--out", str(out),
                                      "--save-probabilities"])
    assert stop.kept is None and "no prediction was written" in line, line
    again = predicted_cases(monkeypatch)
    predict(run, data, out, show_progress=False)
    assert again == VAL[1:]


def test_a_case_whose_series_allows_no_dicom_seg_is_taken_up_from_its_prediction_alone(fitted, tmp_path,
                                                                                       monkeypatch):
    """A DICOM series whose headers lack what a SEG copies from them gets its NIfTI only: the journal names the
    files the case has, so the case counts as finished when taken up, rather than be predicted at every resume."""
    run, data = fitted
    out = tmp_path / "pred"
    real_open = predicting.open_for_run

    class ReadAsDicom:  # the tiny ACDC cases as series without the headers a SEG needs (no source files)
        format = "dicom"

        def __init__(self, dataset):
            self.dataset = dataset

        def __getattr__(self, name):
            return getattr(self.dataset, name)

    def read_as_dicom() -> None:
        monkeypatch.setattr(predicting, "open_for_run", lambda *args: ReadAsDicom(real_open(*args)))

    read_as_dicom()
    predicted_cases(monkeypatch, stop_at=1)
    stopped_after_one(monkeypatch, run, data, out)
    finished = json.loads((kept_folder(out) / "finished.json").read_text())["finished"]
    assert finished == {VAL[0]: [f"{VAL[0]}.h5"]}
    read_as_dicom()
    again = predicted_cases(monkeypatch)
    predict(run, data, out, show_progress=False)
    assert again == VAL[1:]


def test_every_file_a_case_is_journalled_with_reached_the_disk_first(fitted, tmp_path, monkeypatch):
    """The journal is synced as it is written: a power cut keeps it, and with it the cases it names, so each of
    their files (the class probabilities too) must have been synced before, or the case kept could hold a file
    whose bytes were lost."""
    from fewsam import resumable

    run, data = fitted
    synced: set[tuple[int, int]] = set()
    real_fsync, real_finish = os.fsync, resumable.KeptCases.finish

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.add((os.fstat(fd).st_dev, os.fstat(fd).st_ino))

    unsynced: list[str] = []

    def finish(kept, case_id, files):
        for name in files:
            stat = (kept.files / name).stat()
            if (stat.st_dev, stat.st_ino) not in synced:
                unsynced.append(Path(name).name)
        real_finish(kept, case_id, files)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(resumable.KeptCases, "finish", finish)
    predict(run, data, tmp_path / "pred", show_progress=False, save_probabilities=True)
    assert unsynced == []
