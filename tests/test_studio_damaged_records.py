"""fewsam studio when a record of the project is half written or damaged, or a request comes at the wrong
time: a label save whose labelled.json a full disk refuses, a latest_run.json or an export manifest that
cannot be read, Resume pressed while a job runs. Each answer says what happened and what to do, and the
project is left as the user last saw it."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from fewsam.studio import project as project_module
from fewsam.studio.project import EXPORT, EXPORT_MANIFEST, LATEST_RUN, STATE
from test_studio_api import (CASE, H, SLEEPER, W, data, decode, make_client, painted,  # noqa: F401  (data: fixture)
                             python)

LABEL_FILE = Path("labels") / f"{CASE}.nii.gz"


def save(client, label: np.ndarray, z: int, base: str | None):
    """PUT /api/label as the page sends it: with the revision the slice had when the page loaded it."""
    params = {"case": CASE, "z": z, "h": H, "w": W, **({"base": base} if base is not None else {})}
    return client.put("/api/label", params=params, content=label.tobytes(),
                      headers={"Content-Type": "application/octet-stream"})


def loaded(client, z: int) -> dict:
    return client.get("/api/slice", params={"case": CASE, "z": z}).json()


def state_file_on_a_full_disk(monkeypatch) -> None:
    """labelled.json cannot be written from now on (the label file, written first, still can)."""
    written = project_module.atomic_write_bytes

    def full_for_the_state(path, content):
        if Path(path).name == STATE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return written(path, content)

    monkeypatch.setattr(project_module, "atomic_write_bytes", full_for_the_state)


# --- a label save is all or nothing ------------------------------------------------------------------------------

def without_hard_links(monkeypatch) -> None:
    """A file system without hard links (FAT, some network shares)."""
    def refused(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(project_module.os, "link", refused)


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_save_whose_state_file_the_disk_refuses_leaves_the_label_file_as_it_was(monkeypatch, data, tmp_path,
                                                                                  hard_links):
    """The new pixels stayed in the label file while the slice stayed unmarked, so the page's next Save, sent
    with the revision it had loaded, was refused as "saved in another tab or window"."""
    if not hard_links:
        without_hard_links(monkeypatch)
    project = tmp_path / "project"
    with make_client(data, project) as client:
        assert save(client, painted(), 0, None).status_code == 200
        before = (project / LABEL_FILE).read_bytes()
        page = loaded(client, 1)
        with monkeypatch.context() as patch:
            state_file_on_a_full_disk(patch)
            assert save(client, painted((3, 2, 1)), 1, page["revision"]).status_code == 507
        assert (project / LABEL_FILE).read_bytes() == before
        again = loaded(client, 1)
        assert again["revision"] == page["revision"] and not decode(again["label"], "u1", (H, W)).any()
        response = save(client, painted((3, 2, 1)), 1, page["revision"])
        assert response.status_code == 200, response.json()
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0, 1]
    assert [p.name for p in (project / LABEL_FILE).parent.iterdir()] == [LABEL_FILE.name]  # nothing kept aside


def test_a_first_save_whose_state_file_the_disk_refuses_leaves_no_label_file(monkeypatch, data, tmp_path):
    project = tmp_path / "project"
    with make_client(data, project) as client:
        state_file_on_a_full_disk(monkeypatch)
        assert save(client, painted(), 0, loaded(client, 0)["revision"]).status_code == 507
    assert not (project / "labels").exists() or list((project / "labels").iterdir()) == []


def test_a_save_whose_old_label_file_a_full_disk_cannot_copy_aside_changes_nothing(monkeypatch, data, tmp_path):
    """Without hard links the old label file is copied aside first; a disk too full for that copy refuses the save
    before anything is written, and leaves no part of the copy."""
    project = tmp_path / "project"
    with make_client(data, project) as client:
        assert save(client, painted(), 0, None).status_code == 200
        before = (project / LABEL_FILE).read_bytes()
        without_hard_links(monkeypatch)

        def full(source, target):
            Path(target).write_bytes(b"part of a copy")
            raise OSError(errno.ENOSPC, "No space left on device", str(target))

        monkeypatch.setattr(project_module.shutil, "copy2", full)
        assert save(client, painted((3, 2, 1)), 1, loaded(client, 1)["revision"]).status_code == 507
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0]
    assert (project / LABEL_FILE).read_bytes() == before
    assert [p.name for p in (project / LABEL_FILE).parent.iterdir()] == [LABEL_FILE.name]


# --- damaged records ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, why", [(b'{"fit": "fit-00', "Unterminated string"), (b"\xff\xfe", "codec"),
                                          (b'["fit-0001"]', "it does not name a fit")])
def test_predict_with_a_damaged_latest_run_record_names_it_and_what_to_do(data, tmp_path, content, why):
    """It said "no fit has finished yet; fit first", though one had."""
    project = tmp_path / "project"
    with make_client(data, project):  # a project the studio has served
        pass
    (project / LATEST_RUN).write_bytes(content)
    with make_client(data, project, worker_argv=python(SLEEPER)) as client:
        response = client.post("/api/predict", json={"cases": [CASE]})
        assert client.get("/api/info").json()["latest_fit"] is None  # browsing goes on without predictions
    detail = response.json()["detail"]
    assert response.status_code == 400 and detail.startswith(
        f"the record of the latest finished fit, {project / LATEST_RUN}, cannot be read ("), detail
    assert why in detail and detail.endswith("restore it from a backup, or press Fit to fit again (a finished fit "
                                             "writes it anew), then predict"), detail
    assert "no fit has finished yet" not in detail


def test_predict_without_any_finished_fit_still_says_to_fit_first(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        response = client.post("/api/predict", json={"cases": [CASE]})
    assert response.status_code == 400
    assert response.json()["detail"] == "no fit has finished yet; fit first, then predict"


@pytest.mark.parametrize("manifest", [b"{not json", b'{"data": "x", "cases": [1]}', b"[]"])
def test_export_over_an_export_whose_manifest_is_damaged_says_so_and_overwrites_nothing(data, tmp_path, manifest):
    """It refused, listing the earlier export's own label files as files "an export did not write"."""
    project = tmp_path / "project"
    with make_client(data, project) as client:
        assert save(client, painted(), 0, None).status_code == 200
        assert client.post("/api/export").status_code == 200
        (project / EXPORT / EXPORT_MANIFEST).write_bytes(manifest)
        before = {p: p.read_bytes() for p in (project / EXPORT).rglob("*") if p.is_file()}
        response = client.post("/api/export")
    detail = response.json()["detail"]
    assert response.status_code == 409 and detail.startswith(
        f"the earlier export's manifest {project / EXPORT / EXPORT_MANIFEST} cannot be read ("), detail
    assert detail.endswith("move the folder away (or delete it if it holds only the earlier export), then export "
                           "again") and "did not write" not in detail, detail
    assert {p: p.read_bytes() for p in (project / EXPORT).rglob("*") if p.is_file()} == before


# --- Resume while a job runs -------------------------------------------------------------------------------------

def test_resume_while_a_job_runs_is_refused_as_a_conflict_naming_it(data, tmp_path):
    """It answered 404 "no interrupted fit or prediction ... to resume", as if nothing ran."""
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        assert save(client, painted(), 0, None).status_code == 200
        assert client.post("/api/fit", json={"steps": 80}).status_code == 202
        response = client.post("/api/job/resume")
        assert client.get("/api/job").json()["state"] == "running"
    assert response.status_code == 409 and response.json()["detail"].startswith("a fit is already running (started ")


# --- a restart on a project an interrupted studio left -----------------------------------------------------------

def labelled_project(data: Path, folder: Path) -> Path:
    """A project with slice 0 of CASE labelled, which a studio has served."""
    with make_client(data, folder) as client:
        assert save(client, painted(), 0, None).status_code == 200
    return folder


def test_a_job_folder_left_without_its_job_does_not_hide_the_interrupted_job_before_it(data, tmp_path):
    """A studio killed between making job-0002 and writing its job.json left an empty folder, read back as the
    newest job: the interrupted fit in job-0001 was shown as no job at all, and Resume said there was none."""
    project = labelled_project(data, tmp_path / "project")
    job = project / "jobs" / "job-0001"
    job.mkdir(parents=True)
    (project / "fits" / "fit-0001" / "data").mkdir(parents=True)
    spec = {"kind": "fit", "fit_dir": str(project / "fits" / "fit-0001"), "project": str(project), "steps": 80,
            "status": str(job / "status.json")}
    (job / "job.json").write_text(json.dumps(spec), encoding="utf-8")
    (job / "status.json").write_text(json.dumps({"state": "interrupted", "phase": "fit"}), encoding="utf-8")
    (project / "jobs" / "job-0002").mkdir()
    (project / "jobs" / "job-0002" / ".job.json.0123abcd.tmp").write_text('{"kind', encoding="utf-8")
    with make_client(data, project, worker_argv=python(SLEEPER)) as client:
        shown = client.get("/api/job").json()
        assert (shown["state"], shown["id"], shown["resumable"]) == ("interrupted", "job-0001", True), shown
        assert client.post("/api/job/resume").status_code == 202


def test_temporaries_a_killed_save_left_among_the_labels_are_removed_and_nothing_else(data, tmp_path):
    project = labelled_project(data, tmp_path / "project")
    label = (project / LABEL_FILE).read_bytes()
    leftovers = [project / "labels" / f".{CASE}.nii.gz.{middle}.tmp" for middle in ("previous", "0123abcd")]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")
    (project / "labels" / "notes.txt").write_text("mine", encoding="utf-8")
    with make_client(data, project) as client:
        assert client.get("/api/info").json()["cases"][0]["labelled"] == [0]
    assert not any(leftover.exists() for leftover in leftovers)
    assert (project / LABEL_FILE).read_bytes() == label
    assert (project / "labels" / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_a_studio_that_is_not_serving_leaves_the_temporaries_of_the_one_that_is(data, tmp_path):
    """A second studio on a project opens it before the project lock refuses it: removing temporaries then
    would pull a half-written label file, or the previous one kept aside, from under the serving studio."""
    project = labelled_project(data, tmp_path / "project")
    in_use = project / "labels" / f".{CASE}.nii.gz.0123abcd.tmp"
    in_use.write_bytes(b"being written")
    make_client(data, project)  # made, never served (not entered)
    assert in_use.read_bytes() == b"being written"


def folder_at_the_label_file(project: Path) -> Path:
    (project / LABEL_FILE).unlink()
    (project / LABEL_FILE).mkdir()
    return project / LABEL_FILE


def file_at(name: str):
    def put_a_file(project: Path) -> Path:
        target = project / name
        if target.is_dir():
            for path in sorted(target.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            target.rmdir()
        target.write_text("mine", encoding="utf-8")
        return target
    return put_a_file


@pytest.mark.parametrize("request_kind, make, kind", [
    ("save", folder_at_the_label_file, "a folder where the studio writes a file"),
    ("save", file_at("labels"), "a file where the studio keeps a folder"),
    ("fit", file_at("jobs"), "a file where the studio keeps a folder"),
    ("fit", file_at("fits"), "a file where the studio keeps a folder"),
])
def test_a_file_or_folder_in_the_way_of_the_studios_writes_is_named_not_a_server_error(data, tmp_path, request_kind,
                                                                                        make, kind):
    """Each answered 500 "could not read or write a file ...; check that the project folder is writable"."""
    project = labelled_project(data, tmp_path / "project")
    with make_client(data, project, worker_argv=python(SLEEPER)) as client:
        blocker = make(project)
        response = client.post("/api/fit", json={"steps": 2}) if request_kind == "fit" else save(client, painted(), 0,
                                                                                                 None)
    button = {"save": "Save", "fit": "Fit"}[request_kind]
    assert response.status_code == 409 and response.json()["detail"] == (
        f"{blocker} is {kind}; the studio did not put it there: move it out of the project folder, then press "
        f"{button} again"), response.json()
    assert blocker.exists()
