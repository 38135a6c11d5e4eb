"""Run folders that were damaged, left unfinished, fitted on data that changed since, or used by two
fits at once: every case ends in one clear RunError naming the file and the way out."""

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fewsam.atomic import atomic_write_bytes, stale_temporaries
from fewsam.errors import RunError
from fewsam.runs import (BEST, CONFIG, LAST, LOCK, LOG, MANIFEST, RunFolder, check_run, data_sha256,
                         prepare_run_dir, read_config, run_folder, write_json)

CFG = {"method": "fewshot", "fewshot": {"steps": 2}, "data_sha256": "a" * 64}
PREDICT_FILES = [BEST, "prompt_bank.pt", "postprocess.json", "sam/" + BEST]


def finished_run(root: Path, config: dict = CFG) -> Path:
    """A run folder as a few-shot fit (with a SAM-Match-like sam/ stage) leaves it."""
    with run_folder(root / "run", config) as run:
        for name in PREDICT_FILES:
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            (run / name).write_bytes(name.encode() * 100)
        (run / LAST).write_bytes(b"resume state")
        (run / LOG).write_text('{"step": 1}\n')
        (run / "pseudo_labels").mkdir()
        (run / "pseudo_labels" / "step_0000001.pt").write_bytes(b"labels")
    return run


# --- the manifest and check_run ------------------------------------------------------------------

def test_manifest_lists_what_predict_reads(tmp_path):
    run = finished_run(tmp_path)
    files = json.loads((run / MANIFEST).read_text())["files"]
    assert sorted(files) == sorted(PREDICT_FILES)
    assert files[BEST]["bytes"] == (run / BEST).stat().st_size and len(files[BEST]["sha256"]) == 64
    assert check_run(run)["method"] == "fewshot"


def _remove(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:10])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", PREDICT_FILES)
@pytest.mark.parametrize("damage, says", [(_remove, "is missing"), (_truncate, "is damaged"),
                                          (_flip_a_byte, "is damaged")])
def test_a_lost_or_damaged_file_is_named(tmp_path, name, damage, says):
    run = finished_run(tmp_path)
    damage(run / name)
    with pytest.raises(RunError) as err:
        check_run(run)
    message = str(err.value)
    assert str(run / name) in message and says in message and "fit again" in message
    assert "\n" not in message


def test_a_missing_postprocessing_choice_is_an_error_not_a_different_prediction(tmp_path):
    run = finished_run(tmp_path)
    (run / "postprocess.json").unlink()
    with pytest.raises(RunError, match="postprocess.json is missing"):
        check_run(run)


def test_a_fit_that_never_finished_is_refused_with_resume_as_the_way_out(tmp_path):
    class Killed(Exception):
        pass

    with pytest.raises(Killed):
        with run_folder(tmp_path / "run", CFG) as run:
            (run / LAST).write_bytes(b"resume state")
            (run / BEST).write_bytes(b"best so far")
            raise Killed
    assert (run / LAST).exists() and not (run / MANIFEST).exists()  # kept for resuming
    with pytest.raises(RunError, match="never finished.*resume it with the same `fewsam fit` command"):
        check_run(run)


def test_a_corrupt_manifest_is_named(tmp_path):
    run = finished_run(tmp_path)
    (run / MANIFEST).write_text('{"files": ')
    with pytest.raises(RunError, match=f"{MANIFEST} is corrupt.*same `fewsam fit` command"):
        check_run(run)


@pytest.mark.parametrize("text, says", [("[1, 2]", "not a JSON object"), ("{}", 'no "method"'),
                                        ('{"method": 3}', 'no "method"'), ("{not json", "is corrupt"),
                                        (b"\xff\xfe", "is corrupt")])
def test_a_config_that_records_no_run_is_named(tmp_path, text, says):
    run = finished_run(tmp_path)
    (run / CONFIG).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RunError, match=says) as err:
        check_run(run)
    assert str(run / CONFIG) in str(err.value) and "fit again" in str(err.value)
    with pytest.raises(RunError, match=says):  # a fit into the folder says the same, and changes nothing
        prepare_run_dir(run, CFG)
    assert (run / CONFIG).read_bytes() == (text if isinstance(text, bytes) else text.encode())


def test_a_config_may_be_edited_but_not_lose_what_the_fit_recorded(tmp_path):
    run = finished_run(tmp_path)
    config = read_config(run)
    write_json(run / CONFIG, config | {"data": "/moved/data"})
    assert check_run(run)["data"] == "/moved/data"
    write_json(run / CONFIG, {k: v for k, v in config.items() if k != "fewshot"})
    with pytest.raises(RunError, match=f"{CONFIG} lacks 'fewshot', which its fit recorded; restore it, or delete"):
        check_run(run)


def test_resuming_a_finished_run_with_a_damaged_file_is_refused_and_changes_nothing(tmp_path):
    run = finished_run(tmp_path)
    _flip_a_byte(run / BEST)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunError, match=f"{BEST} is damaged.*delete {run} and fit again"):
        with run_folder(run, CFG):
            raise AssertionError("the fit must not start")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resuming_an_unfinished_run_rewrites_its_manifest(tmp_path):
    run = finished_run(tmp_path)
    (run / MANIFEST).unlink()  # stopped after its last checkpoint, before it finished
    with run_folder(run, CFG) as again:
        (again / "postprocess.json").write_text(choice := '{"largest_component": true}')
    check_run(run)
    assert json.loads((run / MANIFEST).read_text())["files"]["postprocess.json"]["bytes"] == len(choice)


def test_a_finished_run_asked_again_keeps_its_manifest_even_when_the_rerun_fails(tmp_path):
    run = finished_run(tmp_path)
    before = (run / MANIFEST).read_bytes()
    with pytest.raises(KeyboardInterrupt), RunFolder(run) as folder:
        folder.prepare(CFG)
        assert folder.finished
        raise KeyboardInterrupt
    assert (run / MANIFEST).read_bytes() == before
    check_run(run)


def test_a_zero_shot_run_has_an_empty_manifest(tmp_path):
    with run_folder(tmp_path / "run", {"method": "prompted", "prompted": {}}) as run:
        pass
    assert json.loads((run / MANIFEST).read_text())["files"] == {}
    check_run(run)


# --- data changed under a run ---------------------------------------------------------------------

class TinyDataset:
    """Cases as arrays in memory, loaded as fewsam's readers load them."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.cases = {cid: SimpleNamespace(image=rng.random((3, 4, 5)).astype(np.float32),
                                           label=rng.integers(0, 3, (3, 4, 5)).astype(np.uint8))
                      for cid in ("a", "b", "v")}
        self.loads = 0

    def load(self, case_id):
        self.loads += 1
        return self.cases[case_id]


REFS = [SimpleNamespace(case_id="a", z=0), SimpleNamespace(case_id="a", z=2), SimpleNamespace(case_id="b", z=1)]


def test_data_hash_covers_labelled_slices_and_validation_cases():
    data = TinyDataset()
    before = data_sha256(data, REFS, ["v"])
    assert data.loads == 3  # each case read once
    assert data_sha256(data, REFS, ["v"]) == before
    data.cases["a"].label[1, 0, 0] += 1  # a slice nobody labelled: not part of the run
    assert data_sha256(data, REFS, ["v"]) == before
    for case_id, z in (("a", 2), ("v", 1)):
        data.cases[case_id].label[z, 0, 0] += 1
        changed = data_sha256(data, REFS, ["v"])
        assert changed != before
        before = changed
    data.cases["b"].image[1, 2, 3] += 1.0
    assert data_sha256(data, REFS, ["v"]) != before
    data.cases["v"].label = None
    assert data_sha256(data, REFS, ["v"]) != before


def test_changed_data_is_refused_with_its_own_message(tmp_path):
    run = finished_run(tmp_path)
    with pytest.raises(RunError, match="changed since .* was fitted; fit into another --out"):
        prepare_run_dir(run, {**CFG, "data_sha256": "b" * 64})
    assert read_config(run)["data_sha256"] == "a" * 64
    check_run(run)


def test_a_run_recorded_without_a_data_hash_still_resumes(tmp_path):
    config = {k: v for k, v in CFG.items() if k != "data_sha256"}
    run = finished_run(tmp_path, config)
    assert prepare_run_dir(run, CFG)[1]


# --- one fit at a time, and what a kill leaves ------------------------------------------------------

def test_a_second_fit_into_the_same_folder_is_refused_at_once(tmp_path):
    with run_folder(tmp_path / "run", CFG) as run:
        with pytest.raises(RunError, match=f"in use by another fit .*{LOCK}.*choose another --out"):
            with RunFolder(run):
                raise AssertionError("the second fit must not start")
        assert read_config(run)["method"] == "fewshot"
    with run_folder(run, CFG):  # released when the first fit ended
        pass


def test_the_cli_refuses_a_locked_run_folder_in_one_line(tmp_path):
    run, _ = prepare_run_dir(tmp_path / "run", CFG)
    fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        result = subprocess.run([sys.executable, "-m", "fewsam", "fit", "fewshot", "--data", str(tmp_path / "nope"),
                                 "--out", str(run), "--labeled-slices", "1", "--quiet"], capture_output=True,
                                text=True, env=dict(os.environ, FEWSAM_NO_REEXEC="1"), timeout=120)
    finally:
        os.close(fd)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "in use by another fit" in lines[0]
    assert read_config(run)["data_sha256"] == "a" * 64


def test_stale_temporaries_are_cleared_when_the_next_fit_starts(tmp_path):
    run = finished_run(tmp_path)
    stale = [run / f".{LAST}.k1ll3d00.tmp", run / "sam" / f".{BEST}.abc_defg.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    assert sorted(stale_temporaries(run)) == sorted(stale)
    with run_folder(run, CFG):
        assert not any(path.exists() for path in stale)
    check_run(run)


def test_a_foreign_folder_keeps_its_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / ".notes.txt.backup.tmp").write_text("mine")
    with pytest.raises(RunError, match="not a fewsam run folder"):
        with run_folder(folder, CFG):
            pass
    assert [p.name for p in folder.iterdir()] == [".notes.txt.backup.tmp"]


@pytest.mark.parametrize("exists", [False, True])
def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, exists):
    folder = tmp_path / "run"
    if exists:
        folder.mkdir()  # the user's empty folder stays, empty
    with pytest.raises(ValueError):
        with RunFolder(folder):  # e.g. the data cannot be opened: before any config is written
            raise ValueError
    assert folder.exists() == exists and (not exists or not any(folder.iterdir()))
    with pytest.raises(ValueError):
        with run_folder(folder, CFG) as run:
            (run / BEST).write_bytes(b"not yet resumable")
            raise ValueError
    assert folder.exists() == exists and (not exists or not any(folder.iterdir()))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_write_bytes(tmp_path / "shared.bin", b"x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from fewsam.atomic import atomic_write

    path = atomic_write_bytes(tmp_path / "f.json", b"old")

    def fail(fh):
        fh.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


class _StopAsked(BaseException):
    pass


def test_a_stop_signal_during_a_write_lands_after_the_file_is_in_place(tmp_path):
    """Ctrl-C or SIGTERM arriving mid-write (a checkpoint being saved) stops the program once the
    file is whole: the stop it asked for, never a writer's half-written-file error."""
    from fewsam.atomic import atomic_write

    def stop(signum, frame):
        raise _StopAsked(signum)

    def write_with_a_signal_halfway(fh):
        fh.write(b"first half, ")
        os.kill(os.getpid(), signal.SIGTERM)
        fh.write(b"second half")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(_StopAsked):
            atomic_write(tmp_path / "checkpoint.pt", write_with_a_signal_halfway)
        assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"first half, second half"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# --- a real few-shot fit ----------------------------------------------------------------------------

@pytest.fixture
def phantom(tiny_sam_phantom):
    return tiny_sam_phantom


def _fit(phantom, tmp_path, run="run"):
    from fewsam.api import FitOptions, fit
    from fewsam.methods.fewshot import FewShotConfig

    options = FitOptions(data=phantom, run=tmp_path / run, labeled_slices=2, cache=str(tmp_path / "cache"),
                         show_progress=False, precision="fp32")  # the reference: no encoder conversion per test
    return fit("fewshot", options, FewShotConfig(augmented_views=0, steps=2, val_every=2, views=1, batch_size=2))


def test_a_fewshot_fit_ends_with_a_manifest_and_refuses_labels_changed_since(phantom, tmp_path):
    import nibabel as nib

    _fit(phantom, tmp_path)
    run = tmp_path / "run"
    files = json.loads((run / MANIFEST).read_text())["files"]
    assert {BEST, "prompt_bank.pt", "postprocess.json"} <= set(files) and LAST not in files
    assert check_run(run)["data_sha256"] == read_config(run)["data_sha256"]
    _fit(phantom, tmp_path)  # the same command again: resumes the finished run
    check_run(run)

    labelled = read_config(run)["labelled"]["refs"][0].split(":")[0]
    path = phantom / "labelsTr" / f"{labelled}.nii.gz"
    label = nib.load(path)
    edited = np.asarray(label.dataobj).copy()
    edited[edited == 1] = 2
    nib.save(nib.Nifti1Image(edited, label.affine, label.header), path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunError, match="changed since"):
        _fit(phantom, tmp_path)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_predict_refuses_a_run_without_its_postprocessing_choice(phantom, tmp_path):
    from fewsam.api import predict

    _fit(phantom, tmp_path)
    (tmp_path / "run" / "postprocess.json").unlink()
    with pytest.raises(RunError, match="postprocess.json is missing"):
        predict(tmp_path / "run", phantom, tmp_path / "pred", cache_root=tmp_path / "cache", show_progress=False)
    assert not (tmp_path / "pred").exists()
