"""The life of a run folder across methods and what is read back from it: a finished run asked
again; distill's teacher (missing, moved after the fit, zero-shot, fitted on other data, fitted
again into its folder, its copy in the run); damaged files of an unfinished run and a truncated
file anywhere; a full disk while a checkpoint is written; data that moved; a file system without
locks; SAM-Match's refreshes in the fit log; what a refused rerun names; and compare / report on
evaluations of other classes or distance units."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.config import ConfigError
from fewsam.data.phantom import write_phantom_dataset
from fewsam.methods.distill import DistillConfig, teacher_config
from fewsam.runs import MANIFEST, run_folder

QUIET = ["--quiet", "--precision", "fp32"]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("r4") / "ph", n_train=3, n_val=1, slices=2, seed=1)


def _supervised(data: Path, run: Path, steps: str = "2") -> list[str]:
    return ["fit", "supervised", "--data", str(data), "--labeled-slices", "2", "--steps", steps, "--val-every", "2",
            "--batch-size", "2", "--image-size", "16", "--out", str(run), *QUIET]


# --- a finished run asked again -------------------------------------------------------------------

def test_a_finished_run_asked_again_says_so_and_changes_nothing(phantom, tmp_path):
    run = tmp_path / "run"
    assert _invoke(*_supervised(phantom, run)).exit_code == 0
    before = _files(run)
    again = _invoke(*_supervised(phantom, run))
    assert again.exit_code == 0, again.output
    assert "finished already" in again.output and f"delete {run}" in again.output
    assert _files(run) == before  # not refitted, not re-chosen, not even its log touched


def test_a_finished_distill_whose_teacher_moved_is_still_finished_and_predicts(phantom, tmp_path):
    """Asking a finished distill run again used to check its teacher again: with the teacher moved
    the rerun failed, and had already removed the run's manifest, so the run could not predict."""
    teacher, cache = tmp_path / "teacher", tmp_path / "cache"
    assert _invoke(*_supervised(phantom, teacher)).exit_code == 0
    fit = ["fit", "distill", "--data", str(phantom), "--labeled-slices", "2", "--teacher", str(teacher), "--steps",
           "2", "--val-every", "2", "--batch-size", "2", "--unlabeled-batch", "2", "--image-size", "16",
           "--cache", str(cache), "--out", str(tmp_path / "run"), *QUIET]
    assert _invoke(*fit).exit_code == 0
    teacher.rename(tmp_path / "elsewhere")
    again = _invoke(*fit)
    assert again.exit_code == 0, again.output
    assert "finished already" in again.output
    assert (tmp_path / "run" / MANIFEST).exists()
    pred = _invoke("predict", str(tmp_path / "run"), "--data", str(phantom), "--out", str(tmp_path / "pred"),
                   "--quiet")
    assert pred.exit_code == 0, pred.output


# --- distill's teacher ----------------------------------------------------------------------------

def test_a_teacher_that_does_not_exist_is_named_as_the_teacher(tmp_path):
    with pytest.raises(ConfigError, match=r"^--teacher \S+gone does not exist"):
        teacher_config(SimpleNamespace(), DistillConfig(teacher=str(tmp_path / "gone")))


def test_a_zero_shot_run_as_teacher_is_refused_for_what_it_is_not_for_its_budget(tmp_path):
    """A prompted run records no labelled slices: it was refused as "fitted on other labelled
    slices", sending the user after a budget that no budget could fix."""
    with run_folder(tmp_path / "prompted", {"method": "prompted", "prompted": {"prompt": "box"}}):
        pass
    with pytest.raises(ConfigError, match="is a prompted run: nothing was fitted"):
        teacher_config(SimpleNamespace(), DistillConfig(teacher=str(tmp_path / "prompted")))


def test_a_teacher_fitted_on_other_data_with_the_same_case_ids_is_refused(phantom, tmp_path):
    """Only the teacher's case ids and label values were compared: a teacher fitted on another
    export naming its cases alike taught its labels as this data's."""
    teacher, other = tmp_path / "teacher", write_phantom_dataset(tmp_path / "other", n_train=3, n_val=1, slices=2,
                                                                 seed=7)
    assert _invoke(*_supervised(phantom, teacher)).exit_code == 0
    fit = ["fit", "distill", "--data", str(other), "--labeled-slices", "2", "--teacher", str(teacher), "--steps", "2",
           "--batch-size", "2", "--image-size", "16", "--cache", str(tmp_path / "cache"), "--out",
           str(tmp_path / "run"), *QUIET]
    refused = str(_invoke(*fit).exception)
    assert refused.startswith(f"the teacher {teacher} was fitted on other images or labels than {other}"), refused
    assert not (tmp_path / "run").exists()


def test_a_teacher_fitted_again_into_its_folder_is_not_mixed_into_a_resumed_student(phantom, tmp_path):
    """The stored pseudo-labels named the teacher by its folder alone: a student resumed after the
    teacher was fitted again there trained on the old teacher's labels, with no word said."""
    from fewsam.methods.distill import PSEUDO_FILE

    teacher, run = tmp_path / "teacher", tmp_path / "run"
    assert _invoke(*_supervised(phantom, teacher)).exit_code == 0
    fit = ["fit", "distill", "--data", str(phantom), "--labeled-slices", "2", "--teacher", str(teacher),
           "--steps", "2", "--val-every", "1", "--batch-size", "2", "--unlabeled-batch", "2", "--image-size", "16",
           "--no-teacher-blend", "--cache", str(tmp_path / "cache"), "--out", str(run), *QUIET]
    assert _invoke(*fit).exit_code == 0
    (run / MANIFEST).unlink()  # stopped after its last checkpoint
    shutil.rmtree(teacher)
    assert _invoke(*_supervised(phantom, teacher, steps="4")).exit_code == 0  # another teacher, same folder
    refused = str(_invoke(*fit).exception)
    assert refused.startswith(f"the teacher {teacher} was fitted again since this fit labelled its pool"), refused
    assert not (run / MANIFEST).exists()

    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):  # stopped before its first checkpoint
        (run / name).unlink()
    old = torch.load(run / PSEUDO_FILE, weights_only=True)["teacher_fit"]
    assert _invoke(*fit).exit_code == 0  # the new teacher labels the pool again
    assert torch.load(run / PSEUDO_FILE, weights_only=True)["teacher_fit"] != old


# --- evaluations of other classes -----------------------------------------------------------------

def _evaluation(path: Path, scores: list[float], cls: str = "fg") -> Path:
    from fewsam.metrics import summarise

    cases = [{"case": f"case_{i:03d}", "group": None,
              "per_class": {cls: {"dice": s, "iou": s / (2 - s), "hd95": 1.0, "asd": 1.0}}}
             for i, s in enumerate(scores)]
    path.write_text(json.dumps({**summarise(cases), "distance_unit": "pixel"}))
    return path


def test_evaluations_of_other_classes_are_not_paired_case_by_case(tmp_path):
    """Two datasets both naming their cases case_000... were paired by case id and tested as one."""
    from fewsam.compare import compare_runs
    from fewsam.errors import DataError
    from fewsam.report import write_group_report

    a = _evaluation(tmp_path / "a.json", [0.9, 0.8, 0.7])
    b = _evaluation(tmp_path / "b.json", [0.5, 0.4, 0.6], cls="tumour")
    with pytest.raises(DataError, match="a.json scores classes fg but .*b.json scores tumour; compare evaluations"):
        compare_runs(a, b)
    write_group_report([a, b], tmp_path / "report")
    assert "b scores classes tumour but a scores fg" in (tmp_path / "report" / "report.md").read_text()


# --- a full disk ----------------------------------------------------------------------------------

def _limit_file_size(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


def test_a_full_disk_while_a_checkpoint_is_written_is_one_line_and_leaves_no_run(phantom, tmp_path):
    """torch's checkpoint writer turns the failed write into a RuntimeError of its own ("unexpected
    pos"): the fit ended in a traceback. A file-size limit stands in for the full disk."""
    import os
    import subprocess
    import sys

    from tests.conftest import assert_one_line_error

    run = tmp_path / "run"
    env = dict(os.environ, FEWSAM_NO_REEXEC="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "fewsam", *_supervised(phantom, run)], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=300, preexec_fn=_limit_file_size(100_000))
    assert_one_line_error(result, f"File too large writing {run / 'checkpoint_best.pt'}; free space")
    assert "the same command again" in result.stderr
    assert not run.exists()  # a new run that failed before its first checkpoint leaves nothing


def test_a_write_error_inside_a_writer_names_the_file(tmp_path):
    import errno

    from fewsam.atomic import atomic_write

    def write(fh) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        finally:
            raise RuntimeError("unexpected pos 213056 vs 212944")  # as torch's zip writer reports it

    with pytest.raises(OSError) as failed:
        atomic_write(tmp_path / "checkpoint.pt", write)
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(tmp_path / "checkpoint.pt"))
    assert list(tmp_path.iterdir()) == []


# --- damaged files of an unfinished run -----------------------------------------------------------

def test_an_emptied_best_checkpoint_is_named_when_the_fit_resumes_not_blessed(phantom, tmp_path):
    """An unfinished run whose checkpoint_best.pt a copy left empty resumed "fine", wrote a manifest
    that blessed the empty file, and every predict then ended in a bare "Aborted!" (torch's EOFError)."""
    run = tmp_path / "run"
    assert _invoke(*_supervised(phantom, run)).exit_code == 0
    (run / MANIFEST).unlink()  # stopped after its last checkpoint, before it finished
    (run / "checkpoint_best.pt").write_bytes(b"")
    refused = str(_invoke(*_supervised(phantom, run)).exception)
    assert refused.startswith(f"{run / 'checkpoint_best.pt'} is damaged"), refused
    assert f"delete {run / 'checkpoint_last.pt'} to restart this fit" in refused
    assert not (run / MANIFEST).exists()


def test_a_damaged_run_file_read_outside_the_checks_is_named():
    from fewsam.errors import RunError
    from fewsam.train import load_run_file

    with pytest.raises(RunError, match=r"empty.pt is damaged \(.*\); delete the run folder and fit again"):
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "empty.pt").write_bytes(b"")
            load_run_file(Path(folder) / "empty.pt")


def test_an_eof_inside_a_command_is_one_error_line_not_a_bare_aborted(monkeypatch, capsys, tmp_path):
    import fewsam.predict
    from fewsam import cli

    def truncated(*args, **kwargs):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(fewsam.predict, "predict", truncated)
    with pytest.raises(SystemExit) as stop:
        cli.run_app(["predict", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "p")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: a file ended before its data did (Compressed file ended")


def test_a_damaged_stored_pseudo_labelling_is_made_again(tmp_path):
    from fewsam.methods.distill import stored_pseudo_labels

    (tmp_path / "pseudo_labels.pt").write_bytes(b"PK\x03\x04 cut short")
    assert stored_pseudo_labels(tmp_path / "pseudo_labels.pt") == {}
    assert stored_pseudo_labels(tmp_path / "absent.pt") == {}


# --- a dataset that moved -------------------------------------------------------------------------

def test_an_unfinished_run_resumes_from_a_copy_of_its_data_elsewhere(phantom, tmp_path):
    """A batch job that copies the dataset to its own scratch folder reads it from a new path each
    time: the resumed fit was refused for "data: old -> new", though the data hash showed the same data."""
    run, moved = tmp_path / "run", tmp_path / "scratch" / "ph"
    assert _invoke(*_supervised(phantom, run, steps="4")).exit_code == 0
    (run / MANIFEST).unlink()
    (run / "checkpoint_last.pt").unlink()  # stopped before its first checkpoint, config.json written
    (run / "checkpoint_best.pt").unlink()
    shutil.copytree(phantom, moved)
    resumed = _invoke(*_supervised(moved, run, steps="4"))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "config.json").read_text())["data"] == str(moved.resolve())
    assert "moved from" in (run / "fit.log").read_text()
    changed = _invoke(*_supervised(moved, run, steps="6"))  # other options are still compared
    assert "train.steps: 4 -> 6" in str(changed.exception)


# --- a run folder on a file system without locks ---------------------------------------------------

def test_a_file_system_without_locks_does_not_refuse_every_fit_as_in_use(tmp_path, monkeypatch):
    """On an NFS mount without its lock service flock fails with ENOLCK: every fit into any folder
    there was refused as "in use by another fit", for good."""
    import errno
    import fcntl

    from fewsam.errors import RunError
    from fewsam.progress import said
    from fewsam.runs import RunFolder

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with RunFolder(tmp_path / "run") as folder:
        folder.prepare({"method": "supervised", "supervised": {}})
    assert (tmp_path / "run" / MANIFEST).exists()
    assert any("without file locks" in notice for notice in said())

    def held(fd: int, operation: int) -> None:
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")

    monkeypatch.setattr(fcntl, "flock", held)
    with pytest.raises(RunError, match="is in use by another fit"):
        with RunFolder(tmp_path / "run"):
            pass


# --- SAM-Match's refreshes in the fit log ---------------------------------------------------------

def test_a_pseudo_label_refresh_is_a_line_of_the_fit_log(tmp_path):
    """A refresh labels the whole unlabelled pool; RUN/fit.log said nothing of it."""
    from fewsam.methods.samatch.refresh import refresh_line
    from fewsam.progress import log_to, record

    quality = {"student_all": {"1": 0.5, "mean": 0.5}, "sam_refined": {"1": 0.75, "mean": 0.75}}
    with log_to(tmp_path / "fit.log"):
        record(refresh_line(200, 2, 3, 5, quality))
    assert (tmp_path / "fit.log").read_text(encoding="utf-8").rstrip().endswith(
        "pseudo-labels refreshed at step 200: SAM refined 2 of 3 unlabelled slices (5 prompts); pooled Dice "
        "against the pool's labels: student 0.5000, SAM-refined slices 0.7500")
    assert refresh_line(200, 0, 1, 0, {"student_all": {"mean": 0.25}, "sam_refined": None}).endswith(
        "(0 prompts); pooled Dice against the pool's labels: student 0.2500")


def test_distances_in_millimetres_are_not_paired_with_distances_in_pixels(tmp_path):
    from fewsam.compare import compare_runs
    from fewsam.errors import DataError

    a = _evaluation(tmp_path / "a.json", [0.9, 0.8, 0.7])
    b = _evaluation(tmp_path / "b.json", [0.5, 0.4, 0.6])
    b.write_text(json.dumps({**json.loads(b.read_text()), "distance_unit": "mm"}))
    with pytest.raises(DataError, match="a.json gives hd95 in pixel and .*b.json in mm units; compare them on dice"):
        compare_runs(a, b, metric="hd95")
    assert compare_runs(a, b)["n"] == 3  # Dice has no unit


def test_every_file_of_a_copied_teacher_is_in_the_manifest(tmp_path):
    """A damaged RUN/teacher/config.json was named with "delete RUN/teacher and fit again", which
    leaves a run that predicts through a teacher it no longer has."""
    from fewsam.errors import RunError
    from fewsam.runs import check_run

    with run_folder(tmp_path / "run", {"method": "distill", "distill": {}}) as run:
        (run / "teacher").mkdir()
        for name in ("config.json", "checkpoint_best.pt", "prompt_bank.pt", "postprocess.json"):
            (run / "teacher" / name).write_text(name)
    listed = json.loads((run / MANIFEST).read_text())["files"]
    assert sorted(listed) == ["teacher/checkpoint_best.pt", "teacher/config.json", "teacher/postprocess.json",
                              "teacher/prompt_bank.pt"]
    (run / "teacher" / "config.json").write_text("{")
    with pytest.raises(RunError, match=f"teacher/config.json is damaged .*; delete {run} and fit again"):
        check_run(run)


# --- what a refused rerun names -------------------------------------------------------------------

def test_another_labelled_budget_is_named_as_an_option_not_as_changed_data(tmp_path):
    """A larger --labeled-slices changes the data hash as well: the rerun was refused with "the
    labelled slices ... in DATA changed since RUN was fitted", blaming data nobody had touched."""
    from fewsam.errors import RunError
    from fewsam.runs import prepare_run_dir

    def config(slices: int, data: str = "/data/acdc", digest: str = "a") -> dict:
        return {"method": "samatch", "data": data, "labelled": {"slices": slices}, "data_sha256": digest * 64,
                "samatch": {"use_sam": True}, "model": "litemedsam"}

    prepare_run_dir(tmp_path / "run", config(2))
    with pytest.raises(RunError, match=r"different configuration \(labelled.slices: 2 -> 3\)"):
        prepare_run_dir(tmp_path / "run", config(3, digest="b"))
    with pytest.raises(RunError, match="was fitted on /data/acdc, and the labelled slices or validation cases in "
                                       "/data/other differ"):
        prepare_run_dir(tmp_path / "run", config(2, "/data/other", digest="b"))
    with pytest.raises(RunError, match="cases in /data/acdc changed since"):
        prepare_run_dir(tmp_path / "run", config(2, digest="b"))
    moved = {**config(2, "/data/moved"), "samatch": {"use_sam": False}, "model": None}
    with pytest.raises(RunError, match=r"\(samatch.use_sam: true -> false; model: "):  # the option given comes first
        prepare_run_dir(tmp_path / "run", moved)


KILLED_AT_STEP = """
import os, signal, sys
from fewsam import train
from fewsam.cli import main

logged, kill_at = train._log, int(sys.argv[1])

def log_then_die(run_dir, record):  # the OOM killer at the given step: no handler runs, nothing is cleaned
    logged(run_dir, record)
    if record.get("step") == kill_at and "loss" in record:
        os.kill(os.getpid(), signal.SIGKILL)

train._log = log_then_die
sys.argv = ["fewsam", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("killed_at, fitted", [(1, False), (3, True)])
def test_a_fit_killed_outright_is_refused_with_other_settings_as_what_it_holds(phantom, tmp_path, killed_at, fitted):
    """A fit the OOM killer stopped at step 1, before its first checkpoint (step 2), holds nothing fitted: the
    same fit with a smaller --batch-size was sent to "rerun with its settings to resume", which only runs out
    of memory again, and not told that deleting the folder loses nothing."""
    import os
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    command = _supervised(phantom, run, steps="4")
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP, str(killed_at), *command], capture_output=True,
                            text=True, env=dict(os.environ, FEWSAM_NO_REEXEC="1"), timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / "config.json").exists() and (run / "checkpoint_last.pt").exists() == fitted
    smaller = _invoke(*[("1" if arg == "2" and prev == "--batch-size" else arg)
                        for prev, arg in zip(["", *command], command)])
    message = str(smaller.exception)
    assert smaller.exit_code != 0 and "different configuration (supervised.batch_size: 2 -> 1)" in message, message
    if fitted:
        assert "rerun with its settings to resume" in message, message
    else:
        assert "resume" not in message and "nothing is fitted in it" in message and f"delete {run}" in message, message
    assert _invoke(*command).exit_code == 0  # the same settings: resumed (or started, when nothing was fitted)
