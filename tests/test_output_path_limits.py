"""Output paths the file system cannot hold (a link to nothing or a loop of links on the way, a name
longer than it allows) end in one `error:` line before any work, never a traceback; a long name it
does hold is written, though fewsam's hidden temporaries beside it add to that name."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_png_cases


@pytest.fixture
def evaluation(tmp_path) -> tuple[Path, Path, Path]:
    """(data root, prediction folder, evaluation JSON) of two PNG cases, one predicted exactly."""
    from fewsam.evaluate import evaluate

    label = np.zeros((16, 16), np.uint8)
    label[4:12, 4:12] = 1
    half = label.copy()
    half[4:8] = 0
    root, pred = write_png_cases(tmp_path, label, {"a": ({"site": "x"}, label), "b": ({"site": "y"}, half)})
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(evaluate(pred, root, "test", show_progress=False)), encoding="utf-8")
    return root, pred, path


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of the command line's entry point, in this process (fast)."""
    from fewsam import cli

    for setup in ("_tune_allocator", "_show_notes", "_stop_on_signals"):
        monkeypatch.setattr(cli, setup, lambda: None)
    monkeypatch.setattr(sys, "argv", ["fewsam", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def assert_refused(code: int, lines: list[str], says: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], lines


def test_json_on_a_link_to_nothing_is_refused_and_the_link_kept(evaluation, tmp_path, monkeypatch, capsys):
    root, pred, _ = evaluation
    link = tmp_path / "result.json"
    link.symlink_to(tmp_path / "gone" / "result.json")
    code, lines = run_main(monkeypatch, capsys, "evaluate", "--pred", str(pred), "--data", str(root), "--split",
                           "test", "--json", str(link), "--quiet")
    assert_refused(code, lines, "which does not exist")
    assert link.is_symlink()


def test_json_on_a_loop_of_links_is_refused_and_the_link_kept(evaluation, tmp_path, monkeypatch, capsys):
    root, pred, _ = evaluation
    (tmp_path / "one").symlink_to(tmp_path / "two")
    (tmp_path / "two").symlink_to(tmp_path / "one")
    code, lines = run_main(monkeypatch, capsys, "evaluate", "--pred", str(pred), "--data", str(root), "--split",
                           "test", "--json", str(tmp_path / "one"), "--quiet")
    assert_refused(code, lines, "a loop of links")
    assert (tmp_path / "one").is_symlink()


@pytest.mark.parametrize("where", ["gone", "loop"])
def test_out_below_a_broken_link_is_refused(evaluation, tmp_path, monkeypatch, capsys, where):
    link = tmp_path / "reports"
    if where == "gone":
        link.symlink_to(tmp_path / "nowhere")
    else:
        (tmp_path / "back").symlink_to(link)
        link.symlink_to(tmp_path / "back")
    code, lines = run_main(monkeypatch, capsys, "report", str(evaluation[2]), "--out", str(link / "r"))
    assert_refused(code, lines, f"{link} is a link to")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("option", ["--out", "--json"])
def test_name_longer_than_the_file_system_allows_is_refused(evaluation, tmp_path, monkeypatch, capsys, option):
    root, pred, path = evaluation
    long = str(tmp_path / ("x" * 300))
    args = (["report", str(path), "--out", long] if option == "--out" else
            ["compare", str(path), str(root / "index.csv"), "--json", long])
    code, lines = run_main(monkeypatch, capsys, *args)
    assert_refused(code, lines, f"is 300 bytes, longer than the {os.pathconf(tmp_path, 'PC_NAME_MAX')}")


def test_input_name_too_long_is_one_line(evaluation, tmp_path, monkeypatch, capsys):
    code, lines = run_main(monkeypatch, capsys, "compare", str(tmp_path / ("x" * 300 + ".json")),
                           str(evaluation[2]))
    assert_refused(code, lines, "File name too long")


def test_long_names_the_file_system_holds_are_written(evaluation, tmp_path, monkeypatch, capsys):
    root, pred, path = evaluation
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    report_out, json_out = tmp_path / ("r" * (limit - 5)), tmp_path / ("j" * (limit - 5))
    code, lines = run_main(monkeypatch, capsys, "report", str(path), "--out", str(report_out))
    assert code == 0, lines
    assert (report_out / "report.md").is_file()
    code, lines = run_main(monkeypatch, capsys, "evaluate", "--pred", str(pred), "--data", str(root), "--split",
                           "test", "--json", str(json_out), "--quiet")
    assert code == 0, lines
    assert json.loads(json_out.read_text(encoding="utf-8"))["n_cases"] == 2


def _on_proc_and_sys() -> bool:
    return sys.platform.startswith("linux") and os.path.ismount("/proc") and os.path.ismount("/sys")


@pytest.mark.skipif(not _on_proc_and_sys(), reason="needs Linux's /proc and /sys mounted")
@pytest.mark.parametrize("command, place", [
    (["evaluate", "--json", "/proc/x.json"], "/proc is on a proc file system"),
    (["evaluate", "--json", "/sys/foo/x.json"], "/sys is on a sysfs file system"),
    (["compare", "EVAL", "EVAL", "--json", "/proc/self/x.json"], "/proc/self is on a proc file system"),
    (["report", "EVAL", "--out", "/proc/x"], "/proc is on a proc file system"),
    (["embed", "--cache", "/sys/foo"], "/sys is on a sysfs file system"),
    (["fit", "supervised", "--out", "/proc/x"], "/proc is on a proc file system"),
    (["bench", "--json", "/proc/x.json"], "/proc is on a proc file system"),
])
def test_an_output_on_a_kernel_file_system_is_one_line_before_any_work(evaluation, monkeypatch, capsys, command,
                                                                        place):
    """Run as root, /proc and /sys pass every permission check, and the write at the end failed with a
    traceback about a temporary file: refused up front instead, naming the file system."""
    root, pred, path = evaluation
    args = [str(path) if word == "EVAL" else word for word in command]
    if command[0] in ("evaluate", "embed", "fit", "bench"):
        args += ["--data", str(root)]
    if command[0] == "evaluate":
        args += ["--pred", str(pred), "--split", "test", "--quiet"]
    code, lines = run_main(monkeypatch, capsys, *args)
    assert_refused(code, lines, place)
    assert not any("Traceback" in line for line in lines)


@pytest.mark.skipif(not _on_proc_and_sys(), reason="needs Linux's /proc and /sys mounted")
def test_predict_refuses_an_out_on_a_kernel_file_system(evaluation):
    from fewsam.data import open_dataset
    from fewsam.errors import FewsamError
    from fewsam.predict import check_output_folder

    with pytest.raises(FewsamError, match="/proc is on a proc file system"):
        check_output_folder(Path("/proc/x"), open_dataset(evaluation[0]), overwrite=False)


def test_the_file_system_of_a_folder_is_its_deepest_mount(tmp_path, monkeypatch):
    """The deepest mount point above the folder decides (the last one mounted there), and a mount point's
    spaces are read from the table's octal escapes."""
    from fewsam import atomic

    table = tmp_path / "mountinfo"
    table.write_text("1 0 254:0 / / rw - ext4 /dev/vda rw\n"
                     f"2 1 0:21 / {tmp_path}/my\\040disk rw - proc proc rw\n"
                     f"3 1 0:22 / {tmp_path}/my\\040disk/tmp rw - sysfs sysfs rw\n"
                     f"4 1 0:23 / {tmp_path}/my\\040disk/tmp rw - tmpfs tmpfs rw\n")
    monkeypatch.setattr(atomic, "MOUNT_TABLE", table)
    assert atomic.file_system_type(tmp_path / "my disk" / "x") == "proc"
    assert atomic.file_system_type(tmp_path / "my disk" / "tmp" / "x") == "tmpfs"
    assert atomic.file_system_type(tmp_path / "my diskette") == "ext4"
    monkeypatch.setattr(atomic, "MOUNT_TABLE", tmp_path / "absent")
    assert atomic.file_system_type(tmp_path) is None
