"""fewsam studio against clumsy or hostile input: the user's own files beside the project, damaged
project files, bodies without a length, bodies that are not JSON, files that cannot be written.
Each answer is an HTTP error with a readable message (or a one-line StudioError at start), never a
500 with a Python exception, and nothing of the user's is overwritten or deleted."""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fewsam.errors import DataError
from fewsam.studio.errors import StudioError
from fewsam.studio.project import LATEST_RUN, LOG, STATE, Project, _swap_in, case_key, encode_prediction
from test_studio_api import CASE, H, SLEEPER, W, data, make_client, painted, put, python  # noqa: F401  (data: fixture)


def labelled_project(data: Path, folder: Path) -> Path:
    """A project with slice 0 of CASE labelled (every class), written without a server."""
    Project(data, folder).save_slice(CASE, 0, painted())
    return folder


def unlabelled_scan(data: Path, folder: Path) -> Path:
    """A NIfTI folder holding CASE's image alone, as case "scan": data whose classes PROJECT/classes.json names."""
    (folder / "images").mkdir(parents=True)
    nib.save(nib.load(data / "imagesTr" / f"{CASE}_0000.nii.gz"), folder / "images" / "scan.nii.gz")
    return folder


def chunks(total: int, size: int = 100):
    """A body sent without Content-Length (chunked), as a client that streams it does."""
    for _ in range(total // size):
        yield b" " * size


# --- export never replaces what it did not write ---------------------------------------------


def test_export_refuses_a_folder_holding_the_users_own_files(data, tmp_path):
    project = labelled_project(data, tmp_path / "project")
    mine = project / "export" / "notes" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my notes")
    with make_client(data, project) as client:
        response = client.post("/api/export")
        assert response.status_code == 409 and "notes/mine.txt" in response.json()["detail"]
        assert mine.read_text() == "my notes"
        assert sorted(p.name for p in project.iterdir() if p.name.startswith(".export")) == []  # nothing partial
        mine.unlink()
        assert client.post("/api/export").status_code == 200  # an empty folder (or an old export) is replaced
        assert client.post("/api/export").status_code == 200
        (project / "export" / "extra.csv").write_text("a,b")  # added by the user to a finished export
        response = client.post("/api/export")
        assert response.status_code == 409 and "extra.csv" in response.json()["detail"]
        assert (project / "export" / "extra.csv").read_text() == "a,b"
        assert (project / "export" / "labelsTr" / f"{CASE}.nii.gz").is_file()


def test_export_refuses_a_file_or_link_where_its_folder_goes(data, tmp_path):
    project = labelled_project(data, tmp_path / "project")
    (project / "export").write_text("a file of mine")
    with make_client(data, project) as client:
        response = client.post("/api/export")
        assert response.status_code == 409 and "not a folder an export wrote" in response.json()["detail"]
        assert (project / "export").read_text() == "a file of mine"
        (project / "export").unlink()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (project / "export").symlink_to(elsewhere)
        assert client.post("/api/export").status_code == 409
        assert (project / "export").is_symlink() and elsewhere.is_dir()


def test_exports_at_once_take_turns_and_leave_one_complete_export(data, tmp_path, monkeypatch):
    project = Project(data, tmp_path / "project")
    project.save_slice(CASE, 0, painted())
    write, inside, most = Project._write_export, [0], [0]

    def slow_write(self, folder, labelled):  # long enough for every thread to arrive while one writes
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        try:
            return write(self, folder, labelled)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(Project, "_write_export", slow_write)
    results: list[object] = []

    def export() -> None:
        try:
            results.append(project.export()["files"])
        except Exception as err:  # noqa: BLE001  (any failure is the finding)
            results.append(err)

    threads = [threading.Thread(target=export) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and results == [[f"labelsTr/{CASE}.nii.gz"]] * 3
    assert sorted(p.name for p in project.folder.iterdir()) == ["export", "labelled.json", "labels"]
    assert sorted(p.relative_to(project.folder / "export").as_posix() for p in (project.folder / "export").rglob("*")
                  if p.is_file()) == ["dataset.json", "labelled_slices.json", f"labelsTr/{CASE}.nii.gz"]


def test_a_failed_swap_puts_the_previous_export_back(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.nii.gz").write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        _swap_in(tmp_path / "staging-that-vanished", target)
    assert (target / "old.nii.gz").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


# --- the project folder and its files --------------------------------------------------------


def test_a_folder_holding_someone_elses_labels_is_not_taken_as_a_project(data, tmp_path):
    folder = tmp_path / "mine"
    (folder / "labels").mkdir(parents=True)
    (folder / "labels" / f"{CASE}.nii.gz").write_bytes(b"someone else's labels")
    with pytest.raises(StudioError, match="not a studio project but already holds labels"):
        Project(data, folder)
    assert (folder / "labels" / f"{CASE}.nii.gz").read_bytes() == b"someone else's labels"
    (folder / "unrelated.txt").write_text("x")
    Project(data, tmp_path / "other")  # a new folder, or one with only unrelated files, is fine
    (folder / "labels" / f"{CASE}.nii.gz").unlink()
    (folder / "labels").rmdir()
    Project(data, folder)


@pytest.mark.parametrize("slices, words", [
    ([0, 7], "lists slice(s) [7] of phantom_000, which has 3 slice(s)"),
    ([-1], "lists slice(s) [-1]"),
    ([True], "whole numbers"),
    ([1.5], "whole numbers"),
    ("[1e400]", "whole numbers"),
    ('"0"', "whole numbers"),
])
def test_a_state_file_naming_slices_that_are_not_there_is_refused(data, tmp_path, slices, words):
    project = labelled_project(data, tmp_path / "project")
    text = (project / STATE).read_text()
    state = json.loads(text)
    state["slices"][CASE] = "__SLICES__"
    raw = slices if isinstance(slices, str) else json.dumps(slices)
    (project / STATE).write_text(json.dumps(state).replace('"__SLICES__"', raw))
    with pytest.raises(StudioError, match="restore") as refused:
        Project(data, project)
    assert words in str(refused.value)


def test_a_state_path_that_is_a_folder_is_refused_at_start(data, tmp_path):
    (tmp_path / "project" / STATE).mkdir(parents=True)
    with pytest.raises(StudioError, match="cannot read .*Is a directory"):
        Project(data, tmp_path / "project")


def test_a_log_that_cannot_be_written_does_not_stop_the_studio(data, tmp_path):
    (tmp_path / "project" / LOG).mkdir(parents=True)  # e.g. a studio.log another user owns
    with make_client(data, tmp_path / "project") as client:
        assert put(client, painted()).status_code == 200
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0]


@pytest.mark.parametrize("record", [{"fit": 5, "run": "x"}, {"fit": ["fit-0001"], "run": "x"},
                                    {"fit": "../../outside", "run": "x"}, {"fit": "..", "run": "x"},
                                    {"fit": "fit-0001", "run": None}, ["fit-0001"]])
def test_a_latest_run_record_that_names_no_plain_fit_is_ignored(data, tmp_path, record):
    project = labelled_project(data, tmp_path / "project")
    (project / LATEST_RUN).write_text(json.dumps(record))
    with make_client(data, project) as client:
        assert client.get("/api/info").json()["latest_fit"] is None
        assert client.get("/api/slice", params={"case": CASE, "z": 0}).json()["prediction"] is None
        assert client.get("/api/suggest").status_code == 404


@pytest.mark.parametrize("content, words", [
    (b"PK\x03\x04 not a zip", "cannot read prediction"),
    (encode_prediction(CASE, "fit-0001", np.zeros((1, H, W)), np.zeros(1)), "but phantom_000 has 3 slice(s)"),
])
def test_a_damaged_prediction_is_a_clear_error(data, tmp_path, content, words):
    project = labelled_project(data, tmp_path / "project")
    (project / "predictions" / "fit-0001").mkdir(parents=True)
    (project / LATEST_RUN).write_text(json.dumps({"fit": "fit-0001", "run": str(project / "run")}))
    (project / "predictions" / "fit-0001" / f"{case_key(CASE)}.npz").write_bytes(content)
    with make_client(data, project) as client:
        for response in (client.get("/api/slice", params={"case": CASE, "z": 2}),
                         client.post("/api/accept", params={"case": CASE, "z": 2}), client.get("/api/suggest")):
            assert response.status_code == 400
            assert words in response.json()["detail"] and "predict this case again" in response.json()["detail"]
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0]


def test_accepting_a_prediction_of_another_slice_size_is_a_clear_error(data, tmp_path):
    project = labelled_project(data, tmp_path / "project")
    (project / "predictions" / "fit-0001").mkdir(parents=True)
    (project / LATEST_RUN).write_text(json.dumps({"fit": "fit-0001", "run": str(project / "run")}))
    wrong = encode_prediction(CASE, "fit-0001", np.ones((3, H + 2, W)), np.zeros(3))
    (project / "predictions" / "fit-0001" / f"{case_key(CASE)}.npz").write_bytes(wrong)
    with make_client(data, project) as client:
        response = client.post("/api/accept", params={"case": CASE, "z": 2})
        assert response.status_code == 400
        assert "does not fit slice 2" in response.json()["detail"]
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0]


def test_accepting_a_prediction_of_classes_this_project_lacks_is_refused_and_the_labels_stay_readable(data, tmp_path):
    """A fit made before a class was taken out of the project predicts that class's value: accepted, the value
    went into the case's label file, which the studio then refused to read, every slice of the case with it."""
    project = labelled_project(data, tmp_path / "project")
    (project / "predictions" / "fit-0001").mkdir(parents=True)
    (project / LATEST_RUN).write_text(json.dumps({"fit": "fit-0001", "run": str(project / "run")}))
    foreign = np.zeros((3, H, W), np.uint8)
    foreign[:, 5:9, 5:9] = 9
    (project / "predictions" / "fit-0001" / f"{case_key(CASE)}.npz").write_bytes(
        encode_prediction(CASE, "fit-0001", foreign, np.zeros(3)))
    with make_client(data, project) as client:
        response = client.post("/api/accept", params={"case": CASE, "z": 1})
        assert response.status_code == 400, response.json()
        assert "values [9]" in response.json()["detail"] and "predict this case again" in response.json()["detail"]
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0]
        assert client.get("/api/slice", params={"case": CASE, "z": 0}).status_code == 200
        assert client.post("/api/export").status_code == 200


def predicted(project: Path, entropy: list[float]) -> None:
    """CASE predicted (all background) by fit-0001, the latest fit, with ``entropy`` per slice."""
    (project / "predictions" / "fit-0001").mkdir(parents=True, exist_ok=True)
    (project / LATEST_RUN).write_text(json.dumps({"fit": "fit-0001", "run": str(project / "run")}))
    (project / "predictions" / "fit-0001" / f"{case_key(CASE)}.npz").write_bytes(
        encode_prediction(CASE, "fit-0001", np.zeros((3, H, W)), np.array(entropy)))


def test_suggest_passes_over_slices_whose_entropy_is_not_a_number(data, tmp_path):
    """A NaN entropy, met first, compared below every other value and was suggested ("entropy": null)."""
    project = labelled_project(data, tmp_path / "project")
    predicted(project, [0.9, float("nan"), 0.2])  # slice 0 is labelled
    with make_client(data, project) as client:
        answer = client.get("/api/suggest").json()
    assert (answer["case"], answer["z"]) == (CASE, 2) and answer["entropy"] == pytest.approx(0.2), answer


def test_suggest_while_a_newer_fit_is_named_latest_is_not_a_server_error(data, tmp_path, monkeypatch):
    """The cases predicted were listed from one PROJECT/latest_run.json and read from the next, written by a fit
    finishing in between, which has not predicted them yet: an assertion failed with a 500."""
    project = labelled_project(data, tmp_path / "project")
    predicted(project, [0.1, 0.5, 0.2])
    monkeypatch.setattr(Project, "prediction", lambda self, case_id: None)  # what that newer fit has of them
    with make_client(data, project) as client:
        response = client.get("/api/suggest")
        assert response.status_code == 404 and "nothing to suggest" in response.json()["detail"], response.json()


@pytest.mark.parametrize("code, status, words", [(errno.ENOSPC, 507, "No space left on device writing"),
                                                 (errno.EACCES, 500, "is writable")])
def test_a_file_the_studio_cannot_write_is_a_clear_error(data, tmp_path, monkeypatch, code, status, words):
    def refuse(case, volume, folder):
        raise OSError(code, "refused", str(folder / "x.nii.gz"))

    monkeypatch.setattr("fewsam.studio.project.write_prediction", refuse)
    with make_client(data, tmp_path / "project") as client:
        response = put(client, painted())
        detail = response.json()["detail"]
        assert response.status_code == status and words in detail and "x.nii.gz" in detail
        assert "internal error" not in detail and "OSError" not in detail
        assert client.get("/api/info").json()["cases"][0]["labelled"] == []


@pytest.mark.parametrize("classes, said", [
    ('{"1": "liver", "01": "tumour"}', "'1' and '01' both give class 1"),
    ('{"1": "liver", "1": "tumour"}', "'1' appears twice"),
], ids=["one-value-two-spellings", "one-key-twice"])
def test_a_project_classes_json_naming_one_class_twice_is_refused(data, tmp_path, classes, said):
    """The later entry silently replaced the earlier: the studio offered one class where the user wrote two."""
    plain = unlabelled_scan(data, tmp_path / "plain")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "classes.json").write_text(classes)
    with pytest.raises(DataError, match=said):
        Project(plain, tmp_path / "project")


def test_a_class_taken_out_of_the_project_while_labels_hold_it_is_refused_at_start(data, tmp_path):
    """Every case whose labels held the class became unreadable, and the refusal advised throwing those labels
    away ("move it away and label this case again") where naming the class again is all it takes."""
    plain, project = unlabelled_scan(data, tmp_path / "plain"), tmp_path / "project"
    project.mkdir()
    (project / "classes.json").write_text('{"1": "liver", "2": "tumour", "3": "vessel", "4": "cyst"}')
    Project(plain, project).save_slice("scan", 0, painted((1, 2, 3)))
    (project / "classes.json").write_text('{"1": "liver", "2": "tumour"}')
    with pytest.raises(StudioError, match="no longer names class 3 'vessel', which the labels of scan hold"):
        Project(plain, project)
    (project / "classes.json").write_text('{"1": "liver", "2": "tumour", "3": "vessel"}')  # cyst: painted nowhere
    assert Project(plain, project).labelled() == {"scan": [0]}


def test_a_dataset_file_the_studio_may_not_read_is_named_as_the_datasets(data, tmp_path, monkeypatch):
    """A scan made unreadable while the studio runs was answered "check that the project folder ... is
    writable": the advice for the folder the studio writes, not for the dataset it reads."""
    scan = data / "imagesTr" / f"{CASE}_0000.nii.gz"

    refusals = ((PermissionError(errno.EACCES, "Permission denied", str(scan)), "give the studio read access"),
                (FileNotFoundError(errno.ENOENT, "No such file or directory", str(scan)), "restore it"))
    for error, advice in refusals:
        def refuse(self, case_id, with_label=True, error=error):
            raise error

        with make_client(data, tmp_path / "project") as client:
            monkeypatch.setattr(type(client.app.state.project.dataset), "load", refuse)
            response = client.get("/api/slice", params={"case": CASE, "z": 0})
        detail = response.json()["detail"]
        assert response.status_code == 500 and f"could not read {scan} of the dataset" in detail, detail
        assert advice in detail and "writable" not in detail, detail


def test_a_dataset_label_the_studio_may_not_read_leaves_its_image_open_for_labelling(data, tmp_path, monkeypatch):
    """A label file the user may not read (another user's, on a shared dataset) failed every request on its case,
    where a label that cannot be decoded leaves the image open to be labelled here."""
    with make_client(data, tmp_path / "project") as client:
        dataset = client.app.state.project.dataset
        load = type(dataset).load
        refused = data / "labelsTr" / f"{CASE}.nii.gz"

        def without_access_to_labels(self, case_id, with_label=True):
            if with_label:
                raise PermissionError(errno.EACCES, "Permission denied", str(refused))
            return load(self, case_id, with_label=False)

        monkeypatch.setattr(type(dataset), "load", without_access_to_labels)
        answer = client.get("/api/slice", params={"case": CASE, "z": 0})
        assert answer.status_code == 200, answer.json()
        assert answer.json()["dataset_label"] is None and str(refused) in answer.json()["dataset_label_error"]
        assert put(client, painted()).status_code == 200


# --- request bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/fit", "/api/predict"])
def test_a_body_without_length_is_capped_on_every_endpoint(data, tmp_path, path):
    with make_client(data, tmp_path / "project", max_upload=1000, worker_argv=python(SLEEPER)) as client:
        put_small = client.put("/api/label", params={"case": CASE, "z": 0, "h": H, "w": W}, content=chunks(900))
        assert put_small.status_code == 422  # under the cap: read, then judged by its size
        response = client.post(path, content=chunks(3000), headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "cap of 1000 bytes" in response.json()["detail"]
        assert client.get("/api/job").json() == {"state": "idle"}


@pytest.mark.parametrize("body", [b"{bad", b"\xff\xfe", b'{"steps": 4,}'])
def test_a_body_that_is_not_json_says_so(studio_client, body):
    response = studio_client.post("/api/fit", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "the request body is not valid JSON" in response.json()["detail"]


@pytest.fixture
def studio_client(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        yield client


def test_the_demo_does_not_write_its_phantom_into_a_folder_of_the_users(tmp_path):
    from fewsam.studio.server import DEMO_DATA, resolve_paths

    mine = tmp_path / DEMO_DATA
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(StudioError, match="in the way of the demo's phantom"):
        resolve_paths(None, tmp_path, demo=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def _left_running_worker(jobs: Path, status: dict | None = None) -> tuple[Path, "subprocess.Popen"]:
    """A process standing in for a worker that outlived its studio: its command line names the job's
    spec file, as ``fewsam.studio.worker``'s does, and status.json holds its pid."""
    import subprocess
    import sys

    job = jobs / "job-0003"
    job.mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"kind": "fit", "fit_dir": str(jobs.parent / "fit")}))
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(job / "job.json")],
                               process_group=0)
    (job / "status.json").write_text(json.dumps({"kind": "fit", "pid": process.pid, "phase": "fitting",
                                                 **(status or {})}))
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    while cmdline.exists() and not cmdline.read_bytes():  # a process just started has no command line yet
        time.sleep(0.01)
    return job, process


def test_a_worker_left_running_by_a_killed_studio_is_adopted_and_blocks_a_second_fit(tmp_path):
    from fewsam.studio.errors import Conflict
    from fewsam.studio.jobs import JobRunner

    _, process = _left_running_worker(tmp_path / "jobs")
    try:
        runner = JobRunner(tmp_path / "jobs")
        assert runner.running()
        assert runner.status()["state"] == "running" and runner.status()["phase"] == "fitting"
        with pytest.raises(Conflict, match="a fit is already running"):
            runner.start("fit", {})
        runner.stop()  # the server shutting down stops it, as it stops its own workers
        assert process.wait(timeout=10) != 0
        assert not runner.running()
        assert "ended while the studio was not running" in runner.status()["error"]
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("case", ["finished", "another program holds the pid"])
def test_a_finished_job_or_a_reused_pid_is_not_adopted(tmp_path, case):
    from fewsam.studio.jobs import JobRunner

    job, process = _left_running_worker(tmp_path / "jobs", {"state": "done"} if case == "finished" else None)
    try:
        if case != "finished":
            process.kill()
            process.wait()
            import subprocess
            import sys

            process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            (job / "status.json").write_text(json.dumps({"kind": "fit", "pid": process.pid}))
        runner = JobRunner(tmp_path / "jobs")
        assert not runner.running()
        if case == "finished":
            assert runner.status() == {"state": "idle"}
        else:  # its worker is gone unfinished: shown as interrupted (test_studio_restart.py), never adopted
            assert runner.status()["state"] == "interrupted"
    finally:
        process.kill()
        process.wait()
