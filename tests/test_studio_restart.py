"""fewsam studio after a restart, and the words its page shows for errors of the shared core.

- a fit running when the studio was stopped (Ctrl+C: the server stops its worker; the run folder keeps
  its last checkpoint) was forgotten by the next studio on the project: the page said "no fit yet" and
  offered no way to go on. Now it shows the fit as interrupted, how far it got, and Resume, which starts
  the same fit again in its own folder (the run goes on from its last checkpoint);
- errors the fit and predict workers meet in the shared core carry advice for the command line (run the
  same `fewsam fit` command, choose another --out, delete the run folder): the page says what to press.

Fits are run by stand-in workers (Python one-liners, as in test_studio_api.py) that write what the real
worker and training loop write: status.json, RUN/fit_log.jsonl and the resume checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fewsam.errors import FewsamError, RunError
from fewsam.studio.errors import for_the_page
from fewsam.studio.project import LATEST_RUN
from test_studio_api import (FINISHER, SLEEPER, data, make_client, painted, put, python,  # noqa: F401  (data: fixture)
                             wait_for_job)
from test_studio_browser import wait_until

# The start of a stand-in fit worker: started again with "resumes" in its spec it finishes at once and says
# which job it resumed; else it logs three steps, validated (and checkpointed) at step 2.
FIT_WORKER_START = """
import json, os, pathlib, sys, time
spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
status = pathlib.Path(spec["status"])
run = pathlib.Path(spec["fit_dir"]) / "run"
if spec.get("resumes"):
    status.write_text(json.dumps({"state": "done", "phase": "done", "pid": os.getpid(), "result": {
        "resumed": spec["resumes"], "fit_dir": spec["fit_dir"], "device": spec.get("device"), "predicted": []}}))
    sys.exit(0)
run.mkdir(parents=True)
(run / "fit_log.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in [
    {"step": 1, "loss": 0.9}, {"step": 2, "loss": 0.7}, {"step": 2, "validation": {"score": 0.6}},
    {"step": 3, "loss": 0.5}]))
"""
# A fit that reaches step 3 of its steps and runs on until it is stopped.
STOPPABLE_FIT = FIT_WORKER_START + """
(run / "checkpoint_last.pt").write_bytes(b"the loop's resume state")
status.write_text(json.dumps({"state": "running", "phase": "fit", "pid": os.getpid(), "message": "fitting"}))
time.sleep(120)
"""
COMMAND_LINE_ADVICE = re.compile(r"--[a-z]|`fewsam|same command")


def fit_until_the_studio_stops(data: Path, project: Path) -> None:
    """Label a slice, start an 80-step fit, and stop the studio while it runs (as Ctrl+C stops it)."""
    with make_client(data, project, worker_argv=python(STOPPABLE_FIT)) as client:
        assert put(client, painted()).status_code == 200
        assert client.post("/api/fit", json={"steps": 80}).status_code == 202
        wait_until(lambda: client.get("/api/job").json()["step"] == 3, 10, "the fit's third step")


def test_a_fit_stopped_with_the_studio_is_shown_after_a_restart_and_resumes(data, tmp_path):
    project = tmp_path / "project"
    fit_until_the_studio_stops(data, project)
    with make_client(data, project, worker_argv=python(STOPPABLE_FIT), device="cpu") as client:
        job = client.get("/api/info").json()["job"]
        assert (job["state"], job["id"], job["kind"], job["step"], job["steps"]) == ("interrupted", "job-0001",
                                                                                     "fit", 3, 80)
        assert job["resumable"] is True and job["loss"] == 0.5
        assert job["message"].startswith("fit-0001 was interrupted (the studio was stopped while it ran) at step 3 "
                                         "of 80; Resume goes on from its last checkpoint, step 2, on the 1 slice(s) "
                                         "labelled when it started, or Fit starts a new fit on your current labels")
        assert client.post("/api/job/resume").status_code == 202
        done = wait_for_job(client)
        assert done["state"] == "done" and done["id"] == "job-0002"
        assert done["result"]["resumed"] == "job-0001" and done["result"]["device"] == "cpu"
        assert Path(done["result"]["fit_dir"]) == project / "fits" / "fit-0001"  # the same run, not a new fit
        refused = client.post("/api/job/resume")
        assert refused.status_code == 404 and "no interrupted fit" in refused.json()["detail"]
    assert "resumed job-0001 as job-0002" in (project / "studio.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("original_kept", [False, True], ids=["moved", "copied"])
def test_a_fit_interrupted_in_a_project_moved_or_copied_since_resumes_in_the_folder_served(data, tmp_path,
                                                                                           original_kept):
    """The job read back kept the paths of the folder it was started in: a moved project's fit could not be
    resumed ("its fit folder is gone"), and a copied one's was resumed into the other copy, outside the
    project the studio serves."""
    original, served = tmp_path / "project", tmp_path / "elsewhere" / "project"
    fit_until_the_studio_stops(data, original)
    shutil.copytree(original, served)
    if not original_kept:
        shutil.rmtree(original)
    with make_client(data, served, worker_argv=python(STOPPABLE_FIT)) as client:
        job = client.get("/api/job").json()
        assert (job["state"], job["step"], job["resumable"]) == ("interrupted", 3, True), job
        assert client.post("/api/job/resume").status_code == 202
        done = wait_for_job(client)
        assert done["state"] == "done" and Path(done["result"]["fit_dir"]) == served / "fits" / "fit-0001", done
    if original_kept:
        assert sorted(p.name for p in (original / "jobs").iterdir()) == ["job-0001"]


def test_a_fit_interrupted_before_its_dataset_and_project_moved_resumes_on_the_dataset_served(data, tmp_path):
    """The resumed fit predicted its cases from the dataset's old folder, gone since the move."""
    original_data, moved = tmp_path / "data", tmp_path / "elsewhere"
    shutil.copytree(data, original_data)
    fit_until_the_studio_stops(original_data, tmp_path / "project")
    moved.mkdir()
    for folder in ("data", "project"):
        shutil.move(tmp_path / folder, moved / folder)
    with make_client(moved / "data", moved / "project", worker_argv=python(STOPPABLE_FIT)) as client:
        assert client.post("/api/job/resume").status_code == 202
        assert wait_for_job(client)["state"] == "done"
    assert json.loads((moved / "project" / "jobs" / "job-0002" / "job.json").read_text())["data"] == str(moved / "data")


def test_a_fit_of_a_project_moved_since_predicts_from_the_folder_served(data, tmp_path):
    """PROJECT/latest_run.json names the fit's run by the path it was fitted in: after a move, Predict sent the
    worker to a folder that is gone (or, for a copy, to the other copy's run)."""
    original, served = tmp_path / "project", tmp_path / "elsewhere" / "project"
    with make_client(data, original, worker_argv=python(FINISHER)) as client:
        assert put(client, painted()).status_code == 200
        assert client.post("/api/fit", json={"steps": 2}).status_code == 202
        assert wait_for_job(client)["state"] == "done"
    served.parent.mkdir()
    shutil.move(original, served)
    with make_client(data, served, worker_argv=python(FINISHER)) as client:
        run = served / "fits" / "fit-0001" / "run"
        assert Path(client.get("/api/info").json()["latest_fit"]["run"]) == run
        assert client.post("/api/predict", json={"all_cases": True}).status_code == 202
        assert Path(json.loads((served / "jobs" / "job-0002" / "job.json").read_text())["run"]) == run


def test_a_fit_cancelled_before_a_restart_is_not_offered_for_resuming(data, tmp_path):
    project = tmp_path / "project"
    fit_until_the_studio_stops(data, project)
    with make_client(data, project, worker_argv=python(SLEEPER)) as client:
        assert client.get("/api/job").json()["state"] == "interrupted"
        assert client.post("/api/fit", json={"steps": 80}).status_code == 202  # a new fit instead
        assert client.delete("/api/job").json()["state"] == "cancelled"
    with make_client(data, project, worker_argv=python(SLEEPER)) as client:
        assert client.get("/api/job").json() == {"state": "idle"}
        assert client.post("/api/job/resume").status_code == 404


def core_messages(tmp_path: Path) -> list[str]:
    """Errors the shared core raises on what a studio's fit or prediction meets: a run folder that is gone,
    one whose fit never finished, one with a damaged file, a resume with other settings, a damaged
    resume checkpoint."""
    from fewsam.runs import check_run, prepare_run_dir, write_manifest
    from fewsam.train import _read_resume_state

    said = []

    def say(call, *args) -> None:
        with pytest.raises(FewsamError) as err:
            call(*args)
        said.append(str(err.value))

    run = tmp_path / "run"
    say(check_run, tmp_path / "gone")
    prepare_run_dir(run, {"method": "fewshot", "fewshot": {"steps": 80}})
    say(check_run, run)
    say(prepare_run_dir, run, {"method": "fewshot", "fewshot": {"steps": 40}})
    (run / "checkpoint_best.pt").write_bytes(b"weights")
    write_manifest(run)
    (run / "checkpoint_best.pt").write_bytes(b"changed")
    say(check_run, run)
    (run / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    say(_read_resume_state, run / "checkpoint_last.pt")
    return said


def test_command_line_advice_of_the_core_reads_as_what_to_press_in_the_page(tmp_path):
    messages = core_messages(tmp_path)
    assert all(COMMAND_LINE_ADVICE.search(m) or "delete" in m for m in messages)  # as the CLI says them
    for message in messages:
        shown = for_the_page(message)
        assert not COMMAND_LINE_ADVICE.search(shown) and "delete" not in shown, shown
        assert "press Fit to" in shown and shown.split(";")[0] == message.split(";")[0]  # what went wrong: kept


PREDICTS_FROM_A_RUN_THAT_IS_GONE = """
import sys
from pathlib import Path
from fewsam.runs import check_run
from fewsam.studio import worker
worker.run_job = lambda spec, status: check_run(Path(spec["run"]))  # the worker's check before loading the model
sys.exit(worker.main(sys.argv[1:]))
"""


def test_a_prediction_from_a_fit_folder_that_is_gone_says_to_fit_again(data, tmp_path):
    project = tmp_path / "project"
    with make_client(data, project, worker_argv=python(PREDICTS_FROM_A_RUN_THAT_IS_GONE)) as client:
        (project / LATEST_RUN).write_text(json.dumps({"fit": "fit-0001", "run": str(project / "fits/fit-0001/run")}))
        assert client.post("/api/predict", json={"all_cases": True}).status_code == 202
        job = wait_for_job(client)
        assert job["state"] == "failed" and "is not a fewsam run folder" in job["error"]
        assert job["error"].endswith("; press Fit to fit again") and "`fewsam" not in job["error"]


def test_a_core_error_answering_a_request_says_what_to_press(data, tmp_path, monkeypatch):
    from fewsam.studio.project import Project

    def suggest(self):
        raise RunError(f"{tmp_path / 'run'} exists and is not a fewsam run folder; choose another --out")

    monkeypatch.setattr(Project, "suggest", suggest)
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        answer = client.get("/api/suggest")
        assert answer.status_code == 400
        assert answer.json()["detail"].endswith("is not a fewsam run folder; press Fit to start a new fit")
