"""Faults a user of ``fewsam studio`` meets in daily labelling work, each answered without losing labels:

- two studios started on one project folder: the second is refused with one line naming the first
  (each would rewrite the labelled set from its own memory and drop the other's slices);
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from fewsam.studio.errors import StudioError
from test_studio_api import data  # noqa: F401  (data: fixture)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_studio(data: Path, project: Path, port: int, log: Path) -> subprocess.Popen:
    """``fewsam studio`` as a user starts it, answering on ``port`` when this returns."""
    env = dict(os.environ, FEWSAM_NO_REEXEC="1", OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, "-m", "fewsam", "studio", "--data", str(data), "--project",
                               str(project), "--port", str(port)], stdout=log.open("w"),
                              stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2).status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError("the studio did not start")


def stop_studio(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# --- one studio per project ------------------------------------------------------------------------


def test_a_second_studio_on_the_same_project_is_refused_naming_the_first(data, tmp_path):
    project, port = tmp_path / "project", free_port()
    first = start_studio(data, project, port, tmp_path / "first.log")
    try:
        try:  # a second studio that starts serves until stopped
            second = subprocess.run([sys.executable, "-m", "fewsam", "studio", "--data", str(data), "--project",
                                     str(project), "--port", str(free_port())], capture_output=True, text=True,
                                    cwd=tmp_path, env=dict(os.environ, FEWSAM_NO_REEXEC="1"), timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("a second studio started on the project of a running one")
        assert_one_line_error(second, f"another studio is already serving --project {project}")
        assert f"http://127.0.0.1:{port}/" in second.stderr and f"process {first.pid}" in second.stderr
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5).status == 200
    finally:
        stop_studio(first)
    from fewsam.studio.project import one_studio

    with one_studio(project, "here", echo=lambda line: None):  # the first studio's end freed the project
        with pytest.raises(StudioError, match=r"already serving .*\(process \d+, here\)"):
            with one_studio(project, "there", echo=lambda line: None):
                pass
