"""fewsam studio against clumsy or hostile input: the user's own files beside the project.
Each answer is an HTTP error with a readable message, and nothing of the user's is overwritten or deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewsam.studio.project import Project, _swap_in
from test_studio_api import CASE, data, make_client, painted  # noqa: F401  (data: fixture)


def labelled_project(data: Path, folder: Path) -> Path:
    """A project with slice 0 of CASE labelled (every class), written without a server."""
    Project(data, folder).save_slice(CASE, 0, painted())
    return folder


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
        assert (project / "export" / f"{CASE}.nii.gz").is_file()


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


def test_a_failed_swap_puts_the_previous_export_back(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.nii.gz").write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        _swap_in(tmp_path / "staging-that-vanished", target)
    assert (target / "old.nii.gz").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
