"""fewsam studio after a kill: a label save cut short at any point, and a fit whose worker never began.

- A save writes the case's label file, then labelled.json. A studio killed between the two (SIGKILL, a
  power cut) must not leave the new pixels in the label file of a slice labelled.json does not list: the
  next studio would show the slice unlabelled but painted, and refuse its Save as "saved in another tab".
  The next studio shows the project as before the save or as after it, and every earlier label as it was.
- A fit interrupted before its worker began is a fit that did not start (and why, where that is known),
  not a worker that ended "at step 0".

A kill is taken as the project folder is at that moment: copied there, while the save is stopped by an
exception, and the copy opened as a restarted studio opens it. One test kills a real process (SIGKILL).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fewsam.studio import project as project_module
from fewsam.studio.project import SAVE_JOURNAL, STATE, Project
from test_studio_api import (CASE, H, SLEEPER, W, data, decode, make_client, painted, put,  # noqa: F401  (data)
                             python)

LABEL_FILE = Path("labels") / f"{CASE}.nii.gz"
EARLIER = painted()  # slice 0's label, saved before the save that is killed
NEW = painted((3, 2, 1))
BLANK = np.zeros((H, W), np.uint8)


class Killed(BaseException):
    """Ends the save where the kill came (what the process would do after it is never looked at)."""


# Where a kill comes: after which write of the save (a function of project.py, and the file it writes).
KEPT_ASIDE = ("keep_aside", None)
RECORDED = ("atomic_write_bytes", SAVE_JOURNAL)
LABEL_WRITTEN = ("write_prediction", None)
STATE_WRITTEN = ("atomic_write_bytes", STATE)

# What is saved when the kill comes: (slices saved before, the slice saved, its label before the save).
SECOND_SLICE = "an unlabelled slice of a labelled case"
FIRST_SAVE = "the first slice of a case"
SAVED_AGAIN = "a labelled slice saved again"


def saved_before(scenario: str) -> tuple[int, np.ndarray, bool]:
    """(the slice the killed save writes, its label before it, whether it was labelled before)."""
    return {SECOND_SLICE: (1, BLANK, False), FIRST_SAVE: (0, BLANK, False), SAVED_AGAIN: (0, EARLIER, True)}[scenario]


def kill_after(monkeypatch, point: tuple[str, str | None], folder: Path, crashed: Path) -> None:
    """After ``point``'s write, ``crashed`` becomes what a kill leaves of ``folder``, and the save stops."""
    name, only = point
    real = getattr(project_module, name)

    def then_killed(*args, **kwargs):
        result = real(*args, **kwargs)
        if only is None or Path(args[0]).name == only:
            shutil.copytree(folder, crashed, symlinks=True)
            raise Killed
        return result

    monkeypatch.setattr(project_module, name, then_killed)


def save_killed(monkeypatch, data: Path, tmp_path: Path, scenario: str, point: tuple[str, str | None]) -> Path:
    """The project a kill at ``point`` leaves, saving NEW as ``scenario`` says."""
    folder, crashed = tmp_path / "project", tmp_path / "crashed"
    with make_client(data, folder):
        pass  # a studio served it: its studio.log makes it a project before anything is labelled
    project = Project(data, folder)
    if scenario != FIRST_SAVE:
        project.save_slice(CASE, 0, EARLIER)
    z, _, _ = saved_before(scenario)
    with monkeypatch.context() as patch:
        kill_after(patch, point, folder, crashed)
        with pytest.raises(Killed):
            project.save_slice(CASE, z, NEW)
    return crashed


def shown(client, z: int) -> tuple[np.ndarray, bool, str]:
    got = client.get("/api/slice", params={"case": CASE, "z": z}).json()
    return decode(got["label"], "u1", (H, W)), got["labelled"], got["revision"]


def leftovers(project: Path) -> list[str]:
    labels = project / "labels"
    found = [p.name for p in labels.iterdir() if p.name != LABEL_FILE.name] if labels.is_dir() else []
    return found + ([SAVE_JOURNAL] if (project / SAVE_JOURNAL).exists() else [])


CASES = [(scenario, point) for scenario in (SECOND_SLICE, FIRST_SAVE, SAVED_AGAIN)
         for point in (KEPT_ASIDE, RECORDED, LABEL_WRITTEN, STATE_WRITTEN)
         if not (scenario == FIRST_SAVE and point == KEPT_ASIDE)]  # no label file yet: nothing is kept aside


@pytest.mark.parametrize("scenario, point", CASES, ids=[f"{s}, killed after {p[0]}({p[1] or ''})" for s, p in CASES])
def test_a_save_killed_at_any_point_restarts_as_before_it_or_after_it(monkeypatch, data, tmp_path, scenario,
                                                                     point):
    crashed = save_killed(monkeypatch, data, tmp_path, scenario, point)
    z, label_before, labelled_before = saved_before(scenario)
    # Done once labelled.json lists the slice; a slice it listed before cannot say so, and is undone.
    done = point == STATE_WRITTEN and not labelled_before
    with make_client(data, crashed) as client:
        label, labelled, _ = shown(client, z)
        np.testing.assert_array_equal(label, NEW if done else label_before)
        assert labelled is (done or labelled_before)
        if scenario == SECOND_SLICE:
            earlier, earlier_labelled, _ = shown(client, 0)
            np.testing.assert_array_equal(earlier, EARLIER)
            assert earlier_labelled is True
    assert leftovers(crashed) == []
    if scenario == FIRST_SAVE and not done:
        assert not (crashed / LABEL_FILE).exists()


def test_a_save_killed_between_its_two_writes_can_be_saved_again_after_the_restart(monkeypatch, data, tmp_path):
    """The page loads the slice as it was, and its Save, sent with that revision, is taken."""
    crashed = save_killed(monkeypatch, data, tmp_path, SECOND_SLICE, LABEL_WRITTEN)
    with make_client(data, crashed) as client:
        _, labelled, revision = shown(client, 1)
        assert labelled is False
        response = client.put("/api/label", params={"case": CASE, "z": 1, "h": H, "w": W, "base": revision},
                              content=NEW.tobytes(), headers={"Content-Type": "application/octet-stream"})
        assert response.status_code == 200, response.json()
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0, 1]
    assert "a save of slice 1 of phantom_000 was interrupted" in (crashed / "studio.log").read_text(encoding="utf-8")


def test_a_studio_that_is_not_serving_leaves_the_save_under_way_alone(monkeypatch, data, tmp_path):
    """A second studio opens the project before the project lock refuses it: it must not undo the serving
    studio's save half-way."""
    crashed = save_killed(monkeypatch, data, tmp_path, SECOND_SLICE, LABEL_WRITTEN)
    label = (crashed / LABEL_FILE).read_bytes()
    make_client(data, crashed)  # made, never served (not entered)
    assert (crashed / SAVE_JOURNAL).exists() and (crashed / LABEL_FILE).read_bytes() == label


@pytest.mark.parametrize("content", ['{"case": "phantom_000", "sl', '{"case": "phantom_000", "slice": 1, '
                                     '"label": "../labelled.json", "previous": false, "labelled": false}'])
def test_a_damaged_save_record_is_refused_naming_it_and_what_to_do(data, tmp_path, content):
    folder = tmp_path / "project"
    Project(data, folder).save_slice(CASE, 0, EARLIER)
    (folder / SAVE_JOURNAL).write_text(content, encoding="utf-8")
    with pytest.raises(project_module.StudioError, match=r"label_save.json .*interrupted; delete it"):
        Project(data, folder)
    assert (folder / STATE).exists()


KILLED_BETWEEN_THE_WRITES = """
import os, signal, sys
from pathlib import Path
import numpy as np
from fewsam.studio import project as project_module
from fewsam.studio.project import STATE, Project

project = Project(sys.argv[1], sys.argv[2])
written = project_module.atomic_write_bytes

def killed_before_the_state(path, content):
    if Path(path).name == STATE:
        os.kill(os.getpid(), signal.SIGKILL)
    return written(path, content)

project_module.atomic_write_bytes = killed_before_the_state
label = np.zeros((int(sys.argv[3]), int(sys.argv[4])), np.uint8)
label[10:40, 10:40] = 2
project.save_slice(sys.argv[5], 1, label)
"""


def test_a_studio_process_killed_between_the_label_file_and_labelled_json_restarts_as_before(data, tmp_path):
    folder = tmp_path / "project"
    Project(data, folder).save_slice(CASE, 0, EARLIER)
    ended = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_THE_WRITES, str(data), str(folder), str(H), str(W),
                            CASE], capture_output=True, text=True, timeout=60)
    assert ended.returncode == -signal.SIGKILL, ended.stderr
    assert (folder / SAVE_JOURNAL).exists()
    with make_client(data, folder) as client:
        label, labelled, _ = shown(client, 1)
        np.testing.assert_array_equal(label, BLANK)
        assert labelled is False
        np.testing.assert_array_equal(shown(client, 0)[0], EARLIER)
    assert leftovers(folder) == []


# --- a fit whose worker never began ----------------------------------------------------------------------------

def fit_job_left(data: Path, project: Path, status: dict | None, log: str) -> None:
    """A labelled project whose fit job-0001 has its job.json, and the status and worker log given."""
    with make_client(data, project) as client:
        assert put(client, painted()).status_code == 200
    job, fit = project / "jobs" / "job-0001", project / "fits" / "fit-0001"
    (fit / "data").mkdir(parents=True)
    job.mkdir(parents=True)
    spec = {"kind": "fit", "fit_dir": str(fit), "project": str(project), "steps": 80, "labelled_slices": 1,
            "status": str(job / "status.json")}
    (job / "job.json").write_text(json.dumps(spec), encoding="utf-8")
    (job / "worker.log").write_text(log, encoding="utf-8")
    if status is not None:
        (job / "status.json").write_text(json.dumps(status), encoding="utf-8")


@pytest.mark.parametrize("status, log, why", [
    (None, "", "its worker never began and left no word of why"),
    (None, "/usr/bin/python3: No module named fewsam.studio.worker\n",
     "its worker stopped before it began; its log ends: /usr/bin/python3: No module named fewsam.studio.worker"),
    ({"state": "interrupted", "ended": 1.0}, "", "the studio was stopped while its worker was starting"),
], ids=["no record", "the worker's last words", "stopped with the studio"])
def test_a_fit_whose_worker_never_began_is_said_not_to_have_started(data, tmp_path, status, log, why):
    project = tmp_path / "project"
    fit_job_left(data, project, status, log)
    with make_client(data, project, worker_argv=python(SLEEPER)) as client:
        job = client.get("/api/job").json()
        assert (job["state"], job["resumable"]) == ("interrupted", True)
        assert job["message"].startswith(f"the fit did not start: {why}"), job["message"]
        assert "worker ended" not in job["message"] and "at step" not in job["message"]
        assert job["message"].endswith("; Resume starts it, on the 1 slice(s) labelled when it was made, or Fit "
                                       "starts a new fit on your current labels. Your labels are unchanged")
        assert client.post("/api/job/resume").status_code == 202


def test_a_fit_the_studio_stopped_while_its_worker_was_starting_is_said_not_to_have_started(data, tmp_path):
    project = tmp_path / "project"
    with make_client(data, project, worker_argv=python(SLEEPER)) as client:
        assert put(client, painted()).status_code == 200
        assert client.post("/api/fit", json={"steps": 80}).status_code == 202
    with make_client(data, project, worker_argv=python(SLEEPER)) as client:
        job = client.get("/api/job").json()
        assert job["state"] == "interrupted"
        assert job["message"].startswith("the fit did not start: the studio was stopped while its worker was "
                                         "starting; Resume starts it"), job["message"]
