"""Faults a user of ``fewsam studio`` meets in daily labelling work, each answered without losing labels:

- two studios started on one project folder: the second is refused with one line naming the first
  (each would rewrite the labelled set from its own memory and drop the other's slices);
- accepting the prediction of a slice the user labelled by hand: refused unless the replacement is
  confirmed (after a fit every slice of a predicted case has a prediction, and "A" is beside "S");
  in the page, "A" on a slice with unsaved edits keeps them, and on a labelled slice asks first;
- a dataset moved or copied with its project (another disk, another machine): its labels open with
  it, while a project whose own dataset is still in place stays refused for any other;
- an export killed half-way: the next export clears the staging folder it left in the project;
- a running fit cancelled from the page (one of far too many steps started by mistake): its worker
  ends, the job says "cancelled", and the next fit may start at once;
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error
from fewsam.atomic import atomic_write_bytes
from fewsam.data.phantom import write_phantom_dataset
from fewsam.studio.errors import StudioError
from fewsam.studio.project import LATEST_RUN, PREDICTIONS, STATE, Project, case_key, encode_prediction
from test_studio_api import (CASE, FINISHER, H, SLEEPER, W, data, decode, make_client, painted, put,  # noqa: F401
                             python, wait_for_job)
from test_studio_browser import Page, browser, stop_studio, wait_until  # noqa: F401  (browser: fixture)


OTHER = "phantom_001"


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


# --- accepting a prediction --------------------------------------------------------------------------


def saved_label(client, z: int) -> np.ndarray:
    return decode(client.get("/api/slice", params={"case": CASE, "z": z}).json()["label"], "u1", (H, W))


def test_accepting_a_prediction_keeps_a_hand_label_unless_the_replacement_is_confirmed(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(FINISHER)) as client:
        assert put(client, painted(), z=0).status_code == 200
        assert client.post("/api/fit", json={"steps": 2, "views": 1, "cases": [CASE]}).status_code == 202
        assert wait_for_job(client)["state"] == "done"
        refused = client.post("/api/accept", params={"case": CASE, "z": 0})
        assert refused.status_code == 409, refused.text
        assert "slice 0 of phantom_000 is labelled already" in refused.json()["detail"]
        np.testing.assert_array_equal(saved_label(client, 0), painted())
        assert client.post("/api/accept", params={"case": CASE, "z": 1}).status_code == 200  # unlabelled: as before
        replaced = client.post("/api/accept", params={"case": CASE, "z": 0, "replace": "true"})
        assert replaced.status_code == 200 and replaced.json()["labelled"] == [0, 1]
        assert saved_label(client, 0)[70, 90] == 3 and not saved_label(client, 0)[15, 15]


def predicted_project(data: Path, folder: Path) -> Path:
    """Slice 0 of CASE labelled by hand and a finished fit's prediction of every slice (class 3 in a square),
    written as the worker writes them: a project as the page finds it after a fit."""
    Project(data, folder).save_slice(CASE, 0, painted())
    atomic_write_bytes(folder / LATEST_RUN, json.dumps({"fit": "fit-0001", "run": str(folder / "run")}).encode())
    labels = np.zeros((3, H, W), np.uint8)
    labels[:, 60:80, 80:100] = 3
    atomic_write_bytes(folder / PREDICTIONS / "fit-0001" / f"{case_key(CASE)}.npz",
                       encode_prediction(CASE, "fit-0001", labels, np.array([0.2, 0.9, 0.5], np.float32)))
    return folder


@pytest.mark.slow
def test_the_accept_key_keeps_unsaved_edits_and_asks_before_replacing_a_label(data, tmp_path, browser):
    project, port = predicted_project(data, tmp_path / "project"), free_port()
    server = start_studio(data, project, port, tmp_path / "server.log")
    try:
        page = Page(browser, f"http://127.0.0.1:{port}/")
        page.open_slice(1)
        page.key("1", "b")
        page.stroke([(20, 100), (60, 100)])
        wait_until(lambda: page.js("return studio.draft().dirty"), 10, "the stroke")
        page.key("a")
        wait_until(lambda: "unsaved edits" in page.message(), 10, "the refusal to drop the edits")
        assert page.js("return studio.draft().dirty") and page.draft()[100, 40] == 1
        assert not page.js("return studio.state.slice.labelled")

        page.open_slice(0)
        page.key("a")
        wait_until(lambda: _alert(browser), 10, "the question")
        browser.switch_to.alert.dismiss()
        wait_until(lambda: "kept your label" in page.message(), 10, "the label kept")
    finally:
        stop_studio(server)
    labelled = Project(data, project)
    assert labelled.labelled() == {CASE: [0]}
    np.testing.assert_array_equal(labelled.saved_slice(CASE, 0)[0], painted())


def _alert(driver) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert.text
        return True
    except NoAlertPresentException:
        return False


# --- cancelling a fit --------------------------------------------------------------------------------


def test_a_running_fit_can_be_cancelled_and_the_next_one_starts(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        assert put(client, painted(), z=0).status_code == 200
        assert client.post("/api/fit", json={"steps": 20000}).json()["state"] == "running"
        worker = client.app.state.runner.job.process
        cancelled = client.delete("/api/job")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled" and worker.poll() is not None
        assert "was cancelled; your labels are unchanged" in client.get("/api/job").json()["message"]
        assert client.post("/api/fit", json={"steps": 5}).status_code == 202
        assert client.delete("/api/job").status_code == 200
        nothing = client.delete("/api/job")
        assert nothing.status_code == 404 and "nothing to cancel" in nothing.json()["detail"]
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0]


# --- a dataset moved with its project ------------------------------------------------------------------


def test_labels_follow_a_dataset_moved_with_its_project(tmp_path):
    data = write_phantom_dataset(tmp_path / "disk1" / "heart", n_train=1, n_val=1, slices=3, seed=0)
    Project(data, tmp_path / "disk1" / "heart-studio").save_slice(CASE, 1, painted())
    (tmp_path / "disk1").rename(tmp_path / "disk2")
    moved, project = tmp_path / "disk2" / "heart", tmp_path / "disk2" / "heart-studio"
    with make_client(moved, project) as client:
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [1]
        np.testing.assert_array_equal(saved_label(client, 1), painted())
    assert json.loads((project / STATE).read_text())["data"] == str(moved)


def test_a_moved_project_is_refused_for_data_without_its_labelled_cases(tmp_path):
    data = write_phantom_dataset(tmp_path / "heart", n_train=1, n_val=1, slices=3, seed=0)
    Project(data, tmp_path / "project").save_slice(OTHER, 1, painted())
    shutil.rmtree(data)
    smaller = write_phantom_dataset(tmp_path / "smaller", n_train=1, n_val=0, slices=3, seed=0)
    with pytest.raises(StudioError, match=f"lacks its labelled case.s. {OTHER}; give the dataset"):
        Project(smaller, tmp_path / "project")


# --- an export killed half-way ----------------------------------------------------------------------


def test_an_export_clears_what_a_killed_export_left_behind(data, tmp_path):
    project = tmp_path / "project"
    Project(data, project).save_slice(CASE, 0, painted())
    for leftover in (".export.partial-0badf00d", ".export.old-0badf00d"):  # killed before / between its renames
        (project / leftover).mkdir()
        (project / leftover / f"{CASE}.nii.gz").write_bytes(b"\0" * 4096)
    with make_client(data, project) as client:
        assert client.post("/api/export").status_code == 200
    assert sorted(p.name for p in project.iterdir() if p.name.startswith(".")) == []
    assert (project / "export" / "labelsTr" / f"{CASE}.nii.gz").is_file()
