"""A writer killed outright (kill -9, the OOM killer) cannot remove the hidden staging folder its predictions or
report were being written into: the next writer into the same --out removes it, and leaves alone one that a
live writer is still filling, and every hidden folder of the user's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fewsam import atomic
from fewsam.atomic import atomic_write_bytes, staged_folder

WRITER = """
import os, signal, sys
from pathlib import Path

import numpy as np
import pytest
from fewsam.atomic import atomic_write_bytes, staged_folder

with staged_folder(Path(sys.argv[1]), overwrite=True) as staging:
    atomic_write_bytes(staging / "case_000.nii.gz", b"half of the predictions")
    print(staging, flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()  # a live writer, still at work
"""


def writer(out: Path, how: str) -> tuple[subprocess.Popen, Path]:
    """A process writing into ``out`` through ``staged_folder``: killed with SIGKILL half-way (``kill``), or
    left waiting half-way (``wait``); with the staging folder it was filling."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(out), how], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    staging = Path(process.stdout.readline().strip())
    assert staging.is_dir() and staging.name.startswith(atomic.hidden_name(out.name, ".partial-"))
    return process, staging


def aged(folder: Path) -> None:
    """``folder`` as a staging folder left long enough ago that no writer is about to take it."""
    old = time.time() - 2 * atomic.ABANDONED_GRACE_S
    os.utime(folder, (old, old))


def test_the_staging_folder_of_a_killed_writer_is_removed_by_the_next_one(tmp_path):
    out = tmp_path / "pred"
    process, killed = writer(out, "kill")
    assert process.wait(timeout=60) == -signal.SIGKILL and killed.is_dir()  # kill -9: nothing could clean up
    process.stdout.close()
    process.stdin.close()
    aged(killed)
    with staged_folder(out, overwrite=False) as staging:
        atomic_write_bytes(staging / "case_000.nii.gz", b"every prediction")
    assert not killed.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]
    assert (out / "case_000.nii.gz").read_bytes() == b"every prediction"


LONG_OUT = "predictions_acdc_fewshot_3cases_seed0_val_mirrored_refined_2026_12_07_"  # 72 characters, + a or b


def test_two_long_outs_that_begin_alike_get_hidden_names_of_their_own_within_the_name_limit(tmp_path):
    limit = atomic.name_limit(tmp_path)
    for suffix in (".partial-0123abcd", ".predict-partial", ".predict.log", ".0123abcd.tmp"):
        first, second = (atomic.hidden_name(LONG_OUT + end, suffix) for end in "ab")
        assert first != second and first.endswith(suffix) and second.endswith(suffix)
        assert first.startswith(f".{LONG_OUT[:40]}")  # still readable in a listing
        longest = atomic.hidden_name("x" * limit, suffix)
        assert max(len(os.fsencode(name)) for name in (first, second, longest)) <= limit
        (tmp_path / longest).mkdir()  # the file system holds it


def test_a_short_outs_hidden_names_are_the_name_itself():
    assert atomic.hidden_name("pred", ".predict.log") == ".pred.predict.log"
    assert atomic.hidden_name("p" * atomic.HIDDEN_NAME_KEPT, ".predict-partial") == \
        f".{'p' * atomic.HIDDEN_NAME_KEPT}.predict-partial"


def test_a_killed_writers_staging_beside_a_long_out_is_removed_and_the_other_long_outs_is_left(tmp_path):
    out, other = tmp_path / f"{LONG_OUT}a", tmp_path / f"{LONG_OUT}b"
    others = tmp_path / atomic.hidden_name(other.name, ".partial-0123abcd")
    others.mkdir()
    aged(others)
    process, killed = writer(out, "kill")
    assert process.wait(timeout=60) == -signal.SIGKILL
    process.stdout.close()
    process.stdin.close()
    aged(killed)
    with staged_folder(out, overwrite=False):
        pass
    assert not killed.exists() and others.is_dir()


def test_a_live_writers_staging_folder_and_the_users_hidden_folders_are_left(tmp_path):
    out = tmp_path / "pred"
    users = [tmp_path / ".pred.partial-notours", tmp_path / ".pred.partial-0badf00d-mine"]
    for folder in users:
        folder.mkdir()
        aged(folder)
    process, live = writer(out, "wait")
    try:
        aged(live)
        with staged_folder(tmp_path / "other", overwrite=False):
            pass
        with staged_folder(out, overwrite=True) as staging:
            atomic_write_bytes(staging / "case_001.nii.gz", b"another")
        assert live.is_dir() and (live / "case_000.nii.gz").exists()  # still being written: not touched
        process.communicate("\n", timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0 and not live.exists()  # it finished, moving its files in
    assert all(folder.is_dir() for folder in users)
    assert (out / "case_000.nii.gz").exists() and (out / "case_001.nii.gz").exists()


def test_a_staging_folder_made_moments_ago_and_not_held_yet_is_left(tmp_path):
    """A writer makes its folder, then takes its lock: in between, the folder is new, not abandoned."""
    out = tmp_path / "pred"
    young = tmp_path / ".pred.partial-0123abcd"
    young.mkdir()
    with staged_folder(out, overwrite=False):
        pass
    assert young.is_dir()


@pytest.mark.parametrize("out_exists", [False, True])
def test_ctrl_c_as_the_outputs_move_in_lets_them_finish_and_says_so(tmp_path, monkeypatch, out_exists):
    """Ctrl-C as the finished predictions moved into --out: the move finished (the signal is held) and the stop
    came after it, but the command said no prediction was written, and the same command was then refused for
    the full --out it had just written."""
    from fewsam import cli
    from fewsam.errors import Stopped

    out = tmp_path / "pred"
    if out_exists:
        out.mkdir()
        (out / "notes.txt").write_text("the user's")
    real_sync = atomic.sync_folder

    def sync_then_ctrl_c(folder):  # the moves are done file by file, then each folder synced: the last step
        real_sync(folder)
        signal.raise_signal(signal.SIGINT)

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    cli._stop_on_signals()
    try:
        with pytest.raises(Stopped) as stopped:
            with staged_folder(out, overwrite=out_exists) as staging:
                for name in ("case_000.nii.gz", "case_001.nii.gz"):
                    atomic_write_bytes(staging / name, name.encode())
                monkeypatch.setattr(atomic, "sync_folder", sync_then_ctrl_c)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert (out / "case_000.nii.gz").read_bytes() == b"case_000.nii.gz" and (out / "case_001.nii.gz").exists()
    assert stopped.value.written == str(out)
    line = cli.stopped_message(stopped.value, ["fewsam", "predict", "run", "--out", str(out)])
    assert f"{out} holds its whole output" in line and "no prediction was written" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]  # no staging folder left


ENTRY_WRITER = """
import os, signal, sys
from pathlib import Path

from fewsam.atomic import atomic_write


def write(fh):
    fh.write(b"half of an embedding")
    fh.flush()
    print("writing", flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()  # a live writer, still at work


atomic_write(Path(sys.argv[1]), write)
"""


def entry_writer(path: Path, how: str) -> tuple[subprocess.Popen, Path]:
    """A process writing ``path`` through ``atomic_write``: killed half-way (``kill``) or left waiting
    (``wait``); with the temporary file it was writing."""
    process = subprocess.Popen([sys.executable, "-c", ENTRY_WRITER, str(path), how], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    (tmp,) = path.parent.glob(atomic.hidden_name(path.name, ".*.tmp"))
    return process, tmp


@pytest.mark.parametrize("how", ["kill", "wait"])
def test_a_cache_entry_a_killed_fill_half_wrote_is_removed_when_the_entry_is_written(tmp_path, fake_sam, how):
    """kill -9 as an embedding was being stored left its hidden ``.KEY.npz.RANDOM.tmp`` for good; the fill that
    encodes those pixels again removes it, and leaves alone one that a live process is still writing."""
    from fewsam.cache import EmbeddingCache

    image = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    cache = EmbeddingCache(tmp_path, fake_sam)
    path = cache.path_for(cache.key(image))
    path.parent.mkdir(parents=True, exist_ok=True)
    process, tmp = entry_writer(path, how)
    if how == "kill":
        assert process.wait(timeout=60) == -signal.SIGKILL  # dead, its lock gone with it
    users = path.parent / atomic.hidden_name(path.name, ".mine.tmp")
    users.write_bytes(b"the user's")
    try:
        aged(tmp)
        aged(users)
        cache.embed([image])
        assert path.exists() and users.exists()
        assert tmp.exists() == (how == "wait")  # a live writer's temporary is not touched
    finally:
        process.kill()
        process.communicate()
