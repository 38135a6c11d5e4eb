"""A file fewsam writes reaches the disk before its name does, and the name before the writer goes on:
after a power cut a studio label, a checkpoint or a cache entry is the old one or the whole new one,
never an empty file under the trusted name (a rename alone orders nothing on the disk)."""

from __future__ import annotations

import os
from pathlib import Path

from fewsam import atomic
from fewsam.atomic import atomic_write, atomic_write_bytes, staged_folder


def recorded(monkeypatch) -> list[tuple[str, str]]:
    """(call, what) for every fsync and rename, in order; fsync names what it synced (file or folder)."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return calls


def test_a_file_is_synced_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    calls = recorded(monkeypatch)
    target = tmp_path / "labels" / "case.nii.gz"
    atomic_write_bytes(target, b"label")
    assert [c for c, _ in calls] == ["fsync", "replace", "fsync"]
    assert calls[0][1].endswith(".tmp") and calls[1][1] == str(target) and calls[2][1] == str(target.parent)
    assert target.read_bytes() == b"label"


def test_a_writer_that_closes_its_file_still_writes(tmp_path):
    atomic_write(tmp_path / "x.bin", lambda fh: (fh.write(b"abc"), fh.close()))
    assert (tmp_path / "x.bin").read_bytes() == b"abc"


def test_files_moved_into_an_existing_output_folder_are_synced_there(tmp_path, monkeypatch):
    out = tmp_path / "pred"
    (out / "sub").mkdir(parents=True)
    (out / "old.txt").write_text("kept")
    with staged_folder(out, overwrite=True) as staging:
        atomic_write_bytes(staging / "sub" / "case.png", b"png")
        calls = recorded(monkeypatch)
    synced = {what for call, what in calls if call == "fsync"}
    assert str(out / "sub") in synced
    assert (out / "sub" / "case.png").read_bytes() == b"png" and (out / "old.txt").read_text() == "kept"


def test_a_folder_that_cannot_be_synced_is_left_as_it_is(tmp_path):
    atomic.sync_folder(tmp_path / "missing")  # no error: nothing to make durable
