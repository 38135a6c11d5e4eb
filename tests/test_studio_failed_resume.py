"""A fit that failed (disk full, out of memory, a crash) after its training loop saved a resume checkpoint
is offered Resume, which goes on from that checkpoint in the same fit folder, also after a restart; a failed
fit without a checkpoint is not. Fits are run by stand-in workers, as in test_studio_restart.py."""

from __future__ import annotations

from pathlib import Path

from test_studio_api import data, make_client, painted, put, python, wait_for_job  # noqa: F401  (data: fixture)
from test_studio_restart import FIT_WORKER_START

# Reaches step 3 of its steps (checkpointed beside its config at step 2, with CHECKPOINT True), then fails
# as the real worker records a failure.
FAILING_FIT = FIT_WORKER_START + """
(run / "config.json").write_text(json.dumps({"method": "fewshot", "fewshot": {"steps": spec["steps"]}}))
if CHECKPOINT:
    (run / "checkpoint_last.pt").write_bytes(b"the loop's resume state")
status.write_text(json.dumps({"state": "failed", "phase": "fit", "pid": os.getpid(),
                              "error": "[Errno 28] No space left on device: 'run/fit_log.jsonl'"}))
sys.exit(1)
"""


def failing_fit(checkpoint: bool):
    return python(f"CHECKPOINT = {checkpoint}\n" + FAILING_FIT)


def fit_that_fails(client) -> dict:
    assert put(client, painted()).status_code == 200
    assert client.post("/api/fit", json={"steps": 80}).status_code == 202
    return wait_for_job(client)


def test_a_fit_failed_after_a_checkpoint_is_offered_resume_and_goes_on_in_its_folder(data, tmp_path):
    project = tmp_path / "project"
    with make_client(data, project, worker_argv=failing_fit(True)) as client:
        job = fit_that_fails(client)
        assert job["state"] == "failed" and job["resumable"] is True
        assert job["error"].startswith("[Errno 28] No space left on device")
        assert job["message"] == ("fit-0001 failed at step 3 of 80 ([Errno 28] No space left on device: "
                                  "'run/fit_log.jsonl'); Resume goes on from its last checkpoint, step 2, on the "
                                  "1 slice(s) labelled when it started, or Fit starts a new fit on your current "
                                  "labels. Your labels are unchanged")
        assert client.post("/api/job/resume").status_code == 202
        done = wait_for_job(client)
        assert done["state"] == "done" and done["result"]["resumed"] == "job-0001"
        assert Path(done["result"]["fit_dir"]) == project / "fits" / "fit-0001"


def test_a_failed_fit_with_a_checkpoint_is_still_offered_resume_after_a_restart(data, tmp_path):
    project = tmp_path / "project"
    with make_client(data, project, worker_argv=failing_fit(True)) as client:
        fit_that_fails(client)
    with make_client(data, project, worker_argv=failing_fit(True)) as client:
        job = client.get("/api/job").json()
        assert (job["state"], job["id"], job["resumable"]) == ("failed", "job-0001", True)
        assert "Resume goes on from its last checkpoint, step 2" in job["message"]
        assert client.post("/api/job/resume").status_code == 202
        assert wait_for_job(client)["result"]["resumed"] == "job-0001"


def test_a_failed_fit_without_a_checkpoint_is_not_offered_resume(data, tmp_path):
    project = tmp_path / "project"
    with make_client(data, project, worker_argv=failing_fit(False)) as client:
        job = fit_that_fails(client)
        assert job["state"] == "failed" and job["resumable"] is False and "Resume" not in job.get("message", "")
        refused = client.post("/api/job/resume")
        assert refused.status_code == 404 and "nor a failed fit with a checkpoint" in refused.json()["detail"]
    with make_client(data, project, worker_argv=failing_fit(False)) as client:
        assert client.get("/api/job").json() == {"state": "idle"}


def test_a_failed_fit_whose_checkpoint_was_saved_under_other_steps_is_not_offered_resume(data, tmp_path):
    """The run's config names the steps its checkpoint was saved for: resuming it with others is refused."""
    project = tmp_path / "project"
    with make_client(data, project, worker_argv=failing_fit(True)) as client:
        fit_that_fails(client)
        (project / "fits" / "fit-0001" / "run" / "config.json").write_text(
            '{"method": "fewshot", "fewshot": {"steps": 40}}', encoding="utf-8")
        assert client.get("/api/job").json()["resumable"] is False
        assert client.post("/api/job/resume").status_code == 404


def test_a_fit_worker_that_crashed_after_a_checkpoint_says_how_and_is_offered_resume(data, tmp_path):
    """Killed (out of memory) or crashed, the worker writes no error: the page says how it ended."""
    crash = FAILING_FIT.replace('status.write_text(json.dumps({"state": "failed"',
                                'os._exit(3)\nstatus.write_text(json.dumps({"state": "failed"')
    with make_client(data, tmp_path / "project", worker_argv=python("CHECKPOINT = True\n" + crash)) as client:
        job = fit_that_fails(client)
        assert job["state"] == "failed" and job["resumable"] is True
        assert job["message"].startswith("fit-0001 failed at step 3 of 80 (the fit worker stopped with exit code 3); "
                                         "Resume goes on from its last checkpoint, step 2")
        assert client.post("/api/job/resume").status_code == 202
