"""How the studio's page says a failure of the machine rather than of the labels: a device the machine
lacks, a full disk, memory that ran out (an error in the worker, or the system killing it).

The command line's words for these (``fewsam.errors``, ``fewsam.devices``) name options the page user
cannot type; the page says the same thing with what they can do instead (restart the studio with
another --device, free space, fit with fewer views). The real worker's ``main`` runs each failing job
in the test's process; a stand-in worker hands what it recorded (status.json, exit code) to the studio,
whose job status is what the page reads.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch

from fewsam.devices import check_device
from fewsam.errors import FewsamError
from fewsam.studio import worker
from fewsam.studio.errors import for_the_page
from fewsam.studio.jobs import DISK_FULL_EXIT
from fewsam.studio.project import LATEST_RUN
from test_studio_api import data, make_client, painted, put, python, wait_for_job  # noqa: F401  (data: fixture)
from test_studio_restart import FIT_WORKER_START

DEVICE_ADVICE_FOR_THE_COMMAND_LINE = re.compile(r"(?:use|pass|rerun with) --device|use cpu, cuda|use cuda:0")
FIT_OPTIONS_THE_PAGE_LACKS = re.compile(r"--batch-size|--image-size|--model|--out|same command")


def run_worker(tmp_path: Path, **spec) -> tuple[dict, int]:
    """(status.json, exit code) of the real worker's ``main`` on a job with ``spec``, in this process."""
    folder = tmp_path / "worker"
    folder.mkdir()
    spec = {"kind": "fit", "device": "cpu", "status": str(folder / "status.json"), **spec}
    (folder / "job.json").write_text(json.dumps(spec), encoding="utf-8")
    code = worker.main([str(folder / "job.json")])
    return json.loads((folder / "status.json").read_text(encoding="utf-8")), code


def failing_worker(monkeypatch, tmp_path: Path, error: BaseException) -> tuple[dict, int]:
    """What the real worker records and exits with when its job fails with ``error``."""
    def run_job(spec: dict, status: worker.Status) -> dict:
        raise error

    monkeypatch.setattr(worker, "run_job", run_job)
    return run_worker(tmp_path)


def replaying(record: dict, code: int):
    """A stand-in worker writing the status.json ``record`` the real one wrote and exiting as it did: the
    server's side of that failure, without a worker process that imports the studio (seconds each)."""
    return python(f"""
import json, pathlib, sys
pathlib.Path(json.loads(pathlib.Path(sys.argv[1]).read_text())["status"]).write_text({json.dumps(json.dumps(record))})
sys.exit({code})
""")


# --- the device --------------------------------------------------------------------------------------------------

def without_cuda(monkeypatch) -> None:
    """This machine as one without a usable GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_a_studio_started_on_cuda_without_a_gpu_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    from fewsam import cli
    from fewsam.studio import server

    without_cuda(monkeypatch)
    for setup in ("_tune_allocator", "_show_notes", "_stop_on_signals"):
        monkeypatch.setattr(cli, setup, lambda: None)
    monkeypatch.setattr(server, "run_studio", lambda *a, **k: pytest.fail("the studio started on a missing GPU"))
    monkeypatch.setattr("sys.argv", ["fewsam", "studio", "--device", "cuda", "--demo", "--project",
                                     str(tmp_path / "project")])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: --device cuda: "), lines
    assert not (tmp_path / "project").exists()


def device_refusals(monkeypatch) -> list[str]:
    """What ``check_device`` says for each device a machine can lack, and a core error's "rerun with"."""
    said = ["the decoder does not fit on this GPU; rerun with --device cpu"]
    for device, cuda_build, gpus in (("gpu", None, 0), ("meta", None, 0), ("cuda", None, 0), ("cuda", "12.1", 0),
                                     ("cuda:3", "12.1", 2), ("mps", None, 0)):
        monkeypatch.setattr(torch.version, "cuda", cuda_build)
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpus=gpus: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda gpus=gpus: gpus)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        with pytest.raises(FewsamError) as refused:
            check_device(device)
        said.append(str(refused.value))
    return said


def test_device_advice_reads_as_restarting_the_studio_with_another_device(monkeypatch):
    messages = device_refusals(monkeypatch)
    assert all(DEVICE_ADVICE_FOR_THE_COMMAND_LINE.search(m) for m in messages)  # as the command line says them
    for message in messages:
        shown = for_the_page(message)
        assert not DEVICE_ADVICE_FOR_THE_COMMAND_LINE.search(shown), shown
        assert "restart the studio with --device " in shown, shown
        assert shown.split(";")[0].endswith(message.split(";")[0].removeprefix("--device")), shown  # what: kept


@pytest.mark.parametrize("kind", ["fit", "predict"])
def test_a_job_on_a_device_the_machine_lacks_fails_on_the_device(monkeypatch, tmp_path, kind):
    """A prediction met a missing GPU as torch's own error from inside model loading."""
    without_cuda(monkeypatch)
    record, code = run_worker(tmp_path, kind=kind, device="cuda", fit_dir=str(tmp_path / "fit"),
                              run=str(tmp_path / "fit" / "run"), data=str(tmp_path / "data"), project=str(tmp_path),
                              fit="fit", cases=["a"], cache=str(tmp_path / "cache"), precision="fp32",
                              labelled_slices=1, steps=2, views=1)
    assert code == 1 and record["error"].startswith("--device cuda: "), record


def test_a_prediction_on_a_device_the_machine_lacks_says_on_the_page_to_restart_the_studio(monkeypatch, data,
                                                                                          tmp_path):
    without_cuda(monkeypatch)
    record, code = run_worker(tmp_path, kind="predict", device="cuda", cases=["a"])
    project = tmp_path / "project"
    with make_client(data, project, device="cuda", worker_argv=replaying(record, code)) as client:
        (project / LATEST_RUN).write_text(json.dumps({"fit": "fit-0001", "run": str(project / "fits/fit-0001/run")}))
        assert client.post("/api/predict", json={"all_cases": True}).status_code == 202
        job = wait_for_job(client)
    assert job["state"] == "failed" and job["error"].startswith("the studio's --device cuda: "), job["error"]
    assert "restart the studio with --device cpu" in job["error"]
    assert not DEVICE_ADVICE_FOR_THE_COMMAND_LINE.search(job["error"])


# --- a full disk, memory that ran out -----------------------------------------------------------------------------

def failed_fit(data: Path, project: Path, argv, **settings) -> dict:
    """The job status the page reads after a fit whose worker ``argv`` fails."""
    with make_client(data, project, worker_argv=argv, **settings) as client:
        assert put(client, painted()).status_code == 200
        assert client.post("/api/fit", json={"steps": 80}).status_code == 202
        job = wait_for_job(client)
    assert job["state"] == "failed", job
    assert not FIT_OPTIONS_THE_PAGE_LACKS.search(job["error"]), job["error"]
    return job


def test_a_fit_that_fills_the_disk_says_which_file_and_to_free_space(monkeypatch, data, tmp_path):
    fit_dir = tmp_path / "project" / "fits" / "fit-0001"
    full = OSError(errno.ENOSPC, "No space left on device", str(fit_dir / "run" / ".checkpoint_last.pt.tmp"))
    job = failed_fit(data, tmp_path / "project", replaying(*failing_worker(monkeypatch, tmp_path, full)))
    assert job["error"] == (f"No space left on device writing {fit_dir}/run/.checkpoint_last.pt.tmp; free space on "
                            "the disk that holds it, then press Fit again")


def test_a_full_disk_that_names_no_file_says_which_folders_to_free_space_for(monkeypatch, data, tmp_path):
    """The page read "No space left on device; free space on the disk that holds it": "it" named nothing."""
    project, cache = tmp_path / "project", tmp_path / "cache"
    full = OSError(errno.ENOSPC, "No space left on device")
    job = failed_fit(data, project, replaying(*failing_worker(monkeypatch, tmp_path, full)), cache=str(cache))
    assert job["error"] == (f"No space left on device; free space on the disk that holds the project folder {project} "
                            f"or the embedding cache {cache}, then press Fit again"), job["error"]


def test_a_prediction_that_runs_out_of_memory_is_not_told_to_fit_with_fewer_views(monkeypatch, data, tmp_path):
    """Views are a fit's setting: a prediction holds one case at a time whatever the page asks for."""
    record, code = failing_worker(monkeypatch, tmp_path, RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    project = tmp_path / "project"
    with make_client(data, project, worker_argv=replaying(record, code)) as client:
        (project / LATEST_RUN).write_text(json.dumps({"fit": "fit-0001", "run": str(project / "fits/fit-0001/run")}))
        assert client.post("/api/predict", json={"all_cases": True}).status_code == 202
        job = wait_for_job(client)
    assert job["state"] == "failed" and job["error"] == (
        "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); free memory (close other programs, or other "
        "jobs on the GPU), then press Predict again"), job["error"]


def test_a_fit_that_runs_out_of_memory_says_so_and_to_fit_with_fewer_views(monkeypatch, data, tmp_path):
    memory = MemoryError("Unable to allocate 37.3 GiB for an array with shape (10000, 1000000)")
    job = failed_fit(data, tmp_path / "project", replaying(*failing_worker(monkeypatch, tmp_path, memory)))
    assert job["error"].startswith("out of memory (Unable to allocate 37.3 GiB for an array with shape "
                                   "(10000, 1000000)); fit with fewer views"), job["error"]
    assert job["error"].endswith("or free memory (close other programs, or other jobs on the GPU), then press Fit "
                                 "again")


def test_a_worker_that_cannot_record_a_full_disk_exits_saying_it(monkeypatch, tmp_path):
    def full(self: worker.Status, **fields) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(worker, "run_job", lambda spec, status: full(status))
    monkeypatch.setattr(worker.Status, "update", lambda self, **fields: None if "pid" in fields else full(self))
    (tmp_path / "job.json").write_text(json.dumps({"kind": "fit", "status": str(tmp_path / "status.json")}))
    assert worker.main([str(tmp_path / "job.json")]) == DISK_FULL_EXIT


def test_a_fit_worker_ended_by_a_full_disk_before_saying_why_is_shown_as_a_full_disk(data, tmp_path):
    job = failed_fit(data, tmp_path / "project", python(f"import sys; sys.exit({DISK_FULL_EXIT})"))
    status = tmp_path / "project" / "jobs" / "job-0001" / "status.json"
    assert job["error"].startswith(f"No space left on device writing {status}; free space on the disk that holds it, "
                                   "then press Fit again"), job["error"]


KILLED_AT_STEP_3 = "import signal\n" + FIT_WORKER_START + """
(run / "config.json").write_text(json.dumps({"method": "fewshot", "fewshot": {"steps": spec["steps"]}}))
(run / "checkpoint_last.pt").write_bytes(b"the loop's resume state")
events = os.environ.get("MEMORY_EVENTS")
if events:  # the kernel's out-of-memory killer counts its kill in the cgroup's memory.events
    pathlib.Path(events).write_text("low 0\\nhigh 0\\nmax 3\\noom 1\\noom_kill 5\\n")
os.kill(os.getpid(), signal.SIGKILL)
"""


def counted_oom_kills(monkeypatch, tmp_path: Path, count: int) -> dict[str, str]:
    """A cgroup memory.events holding ``count`` out-of-memory kills so far, as this studio reads it; the
    environment a stand-in worker is given to count its own kill there."""
    from fewsam.studio import jobs

    events = tmp_path / "memory.events"
    events.write_text(f"low 0\nhigh 0\nmax 0\noom 0\noom_kill {count}\n", encoding="utf-8")
    monkeypatch.setattr(jobs, "memory_events_file", lambda: events)
    return {**os.environ, "MEMORY_EVENTS": str(events)}


def test_a_worker_killed_by_sigkill_where_no_kill_count_is_readable_names_memory_as_likely_not_certain(
        monkeypatch, data, tmp_path):
    """The system's out-of-memory killer sends SIGKILL, and so do `kill -9` and a stopped container: the page
    said "out of memory" as a fact."""
    from fewsam.studio import jobs

    monkeypatch.setattr(jobs, "memory_events_file", lambda: None)
    job = failed_fit(data, tmp_path / "project", python(KILLED_AT_STEP_3))
    assert job["error"].startswith("the fit worker was killed (SIGKILL), most often because memory ran out; fit "
                                   "with fewer views"), job["error"]
    assert "out of memory" not in job["error"]
    assert job["resumable"] is True
    assert job["message"].startswith(
        "fit-0001 failed at step 3 of 80 (the fit worker was killed (SIGKILL), most often because memory ran out); "
        "fit with fewer views (each labelled slice is held in memory once per view) or free memory (close other "
        "programs, or other jobs on the GPU), then Resume goes on from its last checkpoint, step 2"), job["message"]


def test_a_worker_the_out_of_memory_killer_counted_is_said_to_be_killed_for_memory(monkeypatch, data, tmp_path):
    env = counted_oom_kills(monkeypatch, tmp_path, 4)
    job = failed_fit(data, tmp_path / "project", python(KILLED_AT_STEP_3), worker_env=env)
    assert job["error"].startswith("the fit worker was killed by the system's out-of-memory killer (SIGKILL); fit "
                                   "with fewer views"), job["error"]


def test_a_worker_killed_by_sigkill_while_no_out_of_memory_kill_was_counted_is_not_said_to_lack_memory(
        monkeypatch, data, tmp_path):
    """`kill -9` of the worker: the cgroup's count of out-of-memory kills stays as it was."""
    env = counted_oom_kills(monkeypatch, tmp_path, 4)
    job = failed_fit(data, tmp_path / "project", python(KILLED_AT_STEP_3), worker_env={**env, "MEMORY_EVENTS": ""})
    assert job["error"].startswith("the fit worker was killed (SIGKILL) by a person or program, not for lack of "
                                   "memory (the system's out-of-memory killer killed nothing while it ran); press Fit "
                                   "again"), job["error"]
    assert job["message"].startswith("fit-0001 failed at step 3 of 80 (the fit worker was killed (SIGKILL) by a person "
                                     "or program, not for lack of memory (the system's out-of-memory killer killed "
                                     "nothing while it ran)); Resume goes on from its last checkpoint"), job["message"]
    assert "fewer views" not in job["error"] and "fewer views" not in job["message"]


def test_a_prediction_worker_killed_by_sigkill_is_told_to_press_predict_not_to_fit_with_fewer_views(
        monkeypatch, data, tmp_path):
    from fewsam.studio import jobs

    monkeypatch.setattr(jobs, "memory_events_file", lambda: None)
    project = tmp_path / "project"
    killed = python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with make_client(data, project, worker_argv=killed) as client:
        (project / LATEST_RUN).write_text(json.dumps({"fit": "fit-0001", "run": str(project / "fits/fit-0001/run")}))
        assert client.post("/api/predict", json={"all_cases": True}).status_code == 202
        job = wait_for_job(client)
    assert job["error"].startswith("the predict worker was killed (SIGKILL), most often because memory ran out; free "
                                   "memory (close other programs, or other jobs on the GPU), then press Predict "
                                   "again"), job["error"]


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   OSError(errno.ENOSPC, "No space left on device"),
                                   OSError(errno.EACCES, "Permission denied", "/srv/cache/entry.pt")])
def test_a_failed_prediction_is_told_to_press_predict_and_a_failed_fit_fit(monkeypatch, tmp_path, error):
    """Each job's advice ended "press Fit (or Predict) again" whichever job had failed."""
    said = failing_worker(monkeypatch, tmp_path, error)[0]["error"]
    assert for_the_page(said, "predict").endswith("then press Predict again"), for_the_page(said, "predict")
    assert for_the_page(said, "fit").endswith("then press Fit again"), for_the_page(said, "fit")


# --- a full disk in a page request --------------------------------------------------------------------------------

def test_a_label_save_that_fills_the_disk_names_the_project_folder_and_the_save_button(monkeypatch, data, tmp_path):
    """A request's full disk read "the disk is full: ...; free space, then try again": which disk was not said."""
    def full(case, volume, folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    project = tmp_path / "project"
    monkeypatch.setattr("fewsam.studio.project.write_prediction", full)
    with make_client(data, project, cache=str(tmp_path / "cache")) as client:
        response = put(client, painted())
        assert response.status_code == 507 and response.json()["detail"] == (
            f"No space left on device; free space on the disk that holds the project folder {project}, then press "
            "Save again"), response.json()
        assert client.get("/api/info").json()["cases"][0]["labelled"] == []


def test_an_export_that_fills_the_disk_names_the_file_and_leaves_no_partial_export(monkeypatch, data, tmp_path):
    from fewsam.studio import project as project_module

    def full(case, volume, folder, rel, image):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / rel))

    project = tmp_path / "project"
    with make_client(data, project) as client:
        assert put(client, painted()).status_code == 200
        monkeypatch.setattr(project_module, "write_label", full)
        response = client.post("/api/export")
    detail = response.json()["detail"]
    assert response.status_code == 507 and detail.startswith(f"No space left on device writing {project}/"), detail
    assert detail.endswith("; free space on the disk that holds it, then press Export labelled set again"), detail
    assert sorted(p.name for p in project.iterdir() if "export" in p.name) == []


def test_what_failed_keeps_torchs_own_words_in_parentheses():
    """A GPU's "(GPU 0; 15.78 GiB total capacity)" was cut at its "; " in the Resume message."""
    from fewsam.errors import out_of_memory_message
    from fewsam.studio.errors import remedy
    from fewsam.studio.jobs import what_failed

    error = for_the_page(out_of_memory_message(RuntimeError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)")))
    assert what_failed(error) == ("out of memory (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB "
                                  "total capacity))")
    assert remedy(error).startswith("fit with fewer views")


def test_a_fit_a_full_disk_keeps_from_starting_leaves_no_fit_nor_job_folder_behind(monkeypatch, data, tmp_path):
    """A copy of the labelled slices stayed in PROJECT/fits on the full disk, and an empty job folder that the
    next studio read back as the newest job, hiding the one before it (a failed fit's Resume)."""
    from fewsam.studio import jobs

    def full(path, content):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    project = tmp_path / "project"
    with make_client(data, project) as client:
        assert put(client, painted()).status_code == 200
        monkeypatch.setattr(jobs, "atomic_write_bytes", full)
        response = client.post("/api/fit", json={"steps": 80})
        assert response.status_code == 507 and response.json()["detail"].endswith(
            "job.json; free space on the disk that holds it, then press Fit again"), response.json()
        assert client.get("/api/job").json() == {"state": "idle"}
    assert not (project / "fits").exists() and list((project / "jobs").iterdir()) == []


def test_a_save_or_unmark_whose_state_file_a_full_disk_refuses_leaves_the_slice_as_it_was(monkeypatch, data, tmp_path):
    """The page listed a refused save's slice as labelled (and a refused unmark's as not) while labelled.json,
    and so the next studio, had it as before."""
    from fewsam.studio import project as project_module

    written = project_module.atomic_write_bytes

    def full_for_the_state(path, content):
        if Path(path).name == "labelled.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return written(path, content)

    project = tmp_path / "project"
    with make_client(data, project) as client:
        assert put(client, painted()).status_code == 200
        monkeypatch.setattr(project_module, "atomic_write_bytes", full_for_the_state)
        assert put(client, painted(), z=1).status_code == 507
        assert client.delete("/api/label", params={"case": "phantom_000", "z": 0}).status_code == 507
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0]
    assert json.loads((project / "labelled.json").read_text(encoding="utf-8"))["slices"] == {"phantom_000": [0]}


def test_a_page_request_that_runs_out_of_memory_says_so_not_internal_error(monkeypatch, data, tmp_path):
    """Opening a case too large for the memory left read "internal error: MemoryError: ..." (HTTP 500)."""
    from fastapi.testclient import TestClient

    from fewsam.studio import StudioSettings, create_app
    from fewsam.studio.project import Project

    def too_large(self, case_id):
        raise MemoryError("Unable to allocate 12.0 GiB for an array with shape (600, 2048, 2048)")

    monkeypatch.setattr(Project, "_load_for_labelling", too_large)
    app = create_app(StudioSettings(data=data, project=tmp_path / "project"))
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as client:
        response = client.get("/api/slice", params={"case": "phantom_000", "z": 0})
        saved = put(client, painted())
    assert response.status_code == 503 and response.json()["detail"] == (
        "out of memory (Unable to allocate 12.0 GiB for an array with shape (600, 2048, 2048)); free memory (close "
        "other programs, or other jobs on the GPU), then try again"), response.json()
    assert saved.status_code == 503 and saved.json()["detail"].endswith("GPU), then press Save again"), saved.json()
