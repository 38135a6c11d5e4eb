"""Mistakes and damage around ``fewsam studio``, the Ray and torchrun scale-out and the reporting
commands, each answered in one line (or a 4xx answer) without losing or overwriting the user's work:

- studio: a project whose label file went missing or was truncated, a labelled case the dataset no
  longer holds, a start refused for its port (nothing written), a port the user may not open, two
  tabs saving one slice (the stale one is refused with 409);
- Ray: a ``--ray`` address where nothing listens, or that is not an address, refused in seconds;
- torchrun: commands other than ``fit`` refused once instead of running in every process;
- the command line: messages and output print the user's text as written (no emoji codes);
- report: the distance unit of HD95 / ASD as a reader expects it, and every run's classes plotted.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import assert_one_line_error, main_raising
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import FewsamError
from fewsam.studio.errors import StudioError
from fewsam.studio.project import STATE, Project
from test_studio_api import (CASE, H, SLEEPER, W, data, decode, make_client, painted, put,  # noqa: F401  (data: fixture)
                             python)

OTHER = "phantom_001"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- studio: the project folder damaged by hand ------------------------------------------------


def test_a_missing_label_file_is_never_exported_or_fitted_as_background(data, tmp_path):
    """Slices marked labelled whose label file was deleted read as zeros: export and fit would hand on
    background as the user's labels, and a save of another slice would zero them in the new file."""
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        assert put(client, painted(), z=0).status_code == 200
        assert put(client, painted(), z=1).status_code == 200
        next((tmp_path / "project" / "labels").iterdir()).unlink()
        for answer in (client.post("/api/export"), client.post("/api/fit", json={"steps": 5}),
                       put(client, painted(), z=2)):
            assert answer.status_code == 400, answer.text
            assert "[0, 1] of phantom_000 are marked labelled" in answer.json()["detail"]
            assert "missing; restore it, or unmark those slices" in answer.json()["detail"]
        assert not (tmp_path / "project" / "export").exists()
        assert not list((tmp_path / "project").glob("fits/fit-*")) and client.get("/api/job").json()["state"] == "idle"
        assert not any((tmp_path / "project" / "labels").iterdir())
        assert client.delete("/api/label", params={"case": CASE, "z": 1}).status_code == 200
        assert put(client, painted(), z=0).status_code == 200  # relabelling the last marked slice is fine
        assert client.post("/api/export").status_code == 200


def test_a_truncated_label_file_is_named_as_the_studios_labels(data, tmp_path):
    with make_client(data, tmp_path / "project") as client:
        assert put(client, painted()).status_code == 200
        path = next((tmp_path / "project" / "labels").iterdir())
        path.write_bytes(path.read_bytes()[:100])
        answer = client.get("/api/slice", params={"case": CASE, "z": 0})
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert detail.startswith(f"the studio's labels of case {CASE} cannot be read: ") and str(path) in detail
    assert "move it away and label this case again" in detail


def test_labels_of_a_case_the_data_no_longer_holds_survive_the_next_save(tmp_path):
    """A labelled case moved out of the dataset for a while: its label file stays in the project, and
    labelled.json must keep naming its slices, or they come back unlabelled."""
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=0, slices=3, seed=0)
    project = Project(data, tmp_path / "project")
    project.save_slice(CASE, 0, painted())
    project.save_slice(OTHER, 2, painted())
    aside = tmp_path / "aside"
    aside.mkdir()
    moved = sorted(data.rglob(f"{OTHER}*"))
    for path in moved:
        path.rename(aside / path.name)
    splits = json.loads((data / "splits_final.json").read_text())
    (data / "splits_final.json").write_text(json.dumps([{k: [c for c in v if c != OTHER] for k, v in fold.items()}
                                                        for fold in splits]))

    without = Project(data, tmp_path / "project")
    assert OTHER not in without.labelled()
    without.save_slice(CASE, 1, painted())
    assert json.loads((tmp_path / "project" / STATE).read_text())["slices"] == {CASE: [0, 1], OTHER: [2]}

    for path in moved:
        (aside / path.name).rename(path)
    (data / "splits_final.json").write_text(json.dumps(splits))
    assert Project(data, tmp_path / "project").labelled() == {CASE: [0, 1], OTHER: [2]}


@pytest.mark.parametrize("damage", ["truncated", "unreadable"])
def test_one_damaged_scan_leaves_the_other_cases_to_label(tmp_path, monkeypatch, damage):
    """The case list read every case's header: one truncated or unreadable scan failed /api/info, and
    the page could not show (or label) any case at all."""
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=0, slices=3, seed=0)
    broken = data / "imagesTr" / f"{OTHER}_0000.nii.gz"
    if damage == "truncated":
        broken.write_bytes(broken.read_bytes()[:200])
    else:  # as a file of another user reads to this one (tests may run as root, which reads anything)
        from fewsam.studio.project import Project as Studied

        real = Studied.num_slices

        def num_slices(self, case_id):
            if case_id == OTHER:
                raise PermissionError(errno.EACCES, "Permission denied", str(broken))
            return real(self, case_id)

        monkeypatch.setattr(Studied, "num_slices", num_slices)
    with make_client(data, tmp_path / "project") as client:
        info = client.get("/api/info")
        assert info.status_code == 200, info.text
        cases = {c["id"]: c for c in info.json()["cases"]}
        assert cases[CASE]["slices"] == 3 and "error" not in cases[CASE]
        assert cases[OTHER]["slices"] == 0 and str(broken) in cases[OTHER]["error"]
        assert put(client, painted()).status_code == 200
        if damage == "truncated":
            refused = client.get("/api/slice", params={"case": OTHER, "z": 0})
            assert refused.status_code == 400 and str(broken) in refused.json()["detail"]


# --- studio: the start -------------------------------------------------------------------------


@pytest.mark.parametrize("demo", [False, True])
def test_a_start_refused_for_its_port_writes_nothing(data, tmp_path, demo):
    from fewsam.studio.server import run_studio

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(StudioError, match="pass another --port"):
            run_studio(None if demo else data, tmp_path / "project", port=taken.getsockname()[1], demo=demo,
                       cache=str(tmp_path / "cache"), echo=lambda line: None)
    assert not (tmp_path / "project").exists()


def test_a_port_this_user_may_not_open_is_not_taken_for_a_running_studio(monkeypatch):
    from fewsam.studio import server

    class Refusing(socket.socket):
        def bind(self, address):
            raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(server.socket, "socket", Refusing)
    with pytest.raises(StudioError) as refused:
        server.check_port("127.0.0.1", 80)
    assert "may not open port 80" in str(refused.value) and "already running" not in str(refused.value)


# --- Ray: an address where no cluster is ---------------------------------------------------------


def test_ray_init_is_not_reached_for_an_address_where_nothing_listens(monkeypatch):
    """ray.init retries such an address for minutes, printing warnings; the connection is tried first."""
    from fewsam.distributed import ray_jobs

    class Cluster:
        calls: list[dict] = []

        @staticmethod
        def is_initialized():
            return False

        @classmethod
        def init(cls, **kwargs):
            cls.calls.append(kwargs)
            raise ConnectionError("Failed to connect to Ray cluster")

    monkeypatch.setattr(ray_jobs, "import_ray", lambda: Cluster)
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(FewsamError) as refused:
        with ray_jobs.ray_cluster(f"127.0.0.1:{port}"):
            pass
    assert time.monotonic() - started < 6 and Cluster.calls == []
    assert str(refused.value).startswith(f"--ray 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port} "
                                         "(Connection refused); start one with `ray start --head")


def test_auto_checks_the_address_ray_address_names(monkeypatch):
    from fewsam.distributed.ray_jobs import check_cluster_reachable

    port = closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(FewsamError, match=rf"--ray auto \(RAY_ADDRESS=127.0.0.1:{port}\): no Ray cluster answers"):
        check_cluster_reachable("auto")
    monkeypatch.delenv("RAY_ADDRESS")
    check_cluster_reachable("auto")  # Ray looks for a cluster on this machine: nothing to check here


@pytest.mark.parametrize("address", ["local", "HOST"])
def test_ray_address_left_in_the_environment_does_not_override_the_cluster_named(monkeypatch, address):
    """Ray reads RAY_ADDRESS over ``--ray local`` and an explicit HOST:PORT: the job went to the
    cluster a shell profile named. auto still means RAY_ADDRESS, as in Ray."""
    from fewsam.distributed import ray_jobs

    seen: list[str | None] = []

    class Cluster:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kwargs):
            seen.append(os.environ.get("RAY_ADDRESS"))

        @staticmethod
        def shutdown():
            pass

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    named = "local" if address == "local" else f"127.0.0.1:{listening.getsockname()[1]}"
    monkeypatch.setattr(ray_jobs, "import_ray", lambda: Cluster)
    monkeypatch.setenv("RAY_ADDRESS", "other-cluster:6379")
    with ray_jobs.ray_cluster(named):
        pass
    listening.close()
    assert seen == [None] and os.environ["RAY_ADDRESS"] == "other-cluster:6379"


@pytest.mark.parametrize("address", ["127.0.0.1", "head-node:abc", "head-node:99999", "ray://head-node",
                                     "head-node:6379/x"])
def test_a_ray_address_that_is_not_one_is_refused(address):
    from fewsam.distributed.ray_jobs import cluster_endpoint

    with pytest.raises(FewsamError, match="is not a cluster address; give auto, local or the cluster's HOST:PORT"):
        cluster_endpoint(address)


@pytest.mark.parametrize("address, endpoint", [("auto", None), ("local", None), ("10.0.0.5:6379", ("10.0.0.5", 6379)),
                                               ("ray://head:10001", ("head", 10001)), ("[::1]:6379", ("::1", 6379))])
def test_cluster_addresses_name_their_endpoint(address, endpoint):
    from fewsam.distributed.ray_jobs import cluster_endpoint

    assert cluster_endpoint(address) == endpoint


def test_the_command_refuses_a_dead_ray_address_in_seconds(tmp_path):
    write_phantom_dataset(tmp_path / "data", n_train=1, n_val=0, slices=1)
    port = closed_port()
    command = [sys.executable, "-m", "fewsam", "embed", "--data", str(tmp_path / "data"), "--cache",
               str(tmp_path / "cache"), "--ray", f"127.0.0.1:{port}"]
    env = {**os.environ, "FEWSAM_NO_REEXEC": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("fewsam embed --ray with nothing at the address was still waiting after 60 s")
    assert_one_line_error(result, f"no Ray cluster answers at 127.0.0.1:{port} (Connection refused)")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npz"))


# --- torchrun: only fit runs data-parallel -------------------------------------------------------


@pytest.mark.parametrize("rank, says", [("0", True), ("1", False)])
def test_commands_other_than_fit_refuse_torchrun_once(monkeypatch, capsys, rank, says):
    """``torchrun --nproc-per-node 2 -m fewsam predict ...`` ran predict twice into one --out: one copy
    wrote, the other failed with "p1 was filled by something else while writing into it"."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", rank)
    monkeypatch.setattr(sys, "argv", ["fewsam", "predict", "run", "--data", "d", "--out", "p1"])
    code, lines = main_raising(monkeypatch, capsys, AssertionError("predict ran"))
    assert code == 2
    if says:
        assert len(lines) == 1 and lines[0].startswith("error: fewsam predict runs as one process, but was started "
                                                       "as one of 2 (WORLD_SIZE=2")
        assert "or with --ray to spread its cases over processes" in lines[0]
    else:
        assert lines == []


def test_fit_and_commands_outside_torchrun_are_not_refused(monkeypatch, capsys):
    from fewsam.cli import check_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    check_launch(["fewsam", "fit", "fewshot", "--data", "d"])
    check_launch(["fewsam", "--help"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(["fewsam", "predict", "run"])
    monkeypatch.setenv("WORLD_SIZE", "two")  # not torchrun's: left to fit to name
    check_launch(["fewsam", "info", "d"])


# --- the command line prints the user's text as written ------------------------------------------


def test_error_lines_and_output_keep_emoji_codes_as_text(monkeypatch, capsys):
    """rich turns ":ok:" into an emoji: a path or a --ray address holding one was misprinted."""
    from fewsam import cli

    code, lines = main_raising(monkeypatch, capsys, FewsamError("data folder /scans/a:ok:b does not exist"))
    assert code == 2 and lines == ["error: data folder /scans/a:ok:b does not exist"]
    cli.out.print('{"cache": "/scans/x:cd:y"}')
    assert capsys.readouterr().out == '{"cache": "/scans/x:cd:y"}\n'


# --- report ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit, says", [("mm", "distances in mm)"), ("pixel", "distances in pixels)"),
                                        ("mixed", "distances in mm or pixels")])
def test_the_report_names_the_distance_unit_as_written(tmp_path, unit, says):
    from fewsam.metrics import group_summary
    from fewsam.report import write_group_report

    cases = [{"case": f"c{i}", "group": "F" if i % 2 else "M",
              "per_class": {"LV": {"dice": 0.5 + 0.1 * i, "iou": 0.4, "hd95": 2.0, "asd": 1.0}}} for i in range(4)]
    result = {**group_summary(cases, n_boot=20), "group_by": "sex", "distance_unit": unit}
    (tmp_path / "e.json").write_text(json.dumps(result))
    md = write_group_report([tmp_path / "e.json"], tmp_path / "rep")["markdown"].read_text()
    assert says in md and "mms" not in md and "pixels" + "s" not in md and "mixeds" not in md


# --- studio: two tabs on one slice --------------------------------------------------------------


def put_on(client, label: np.ndarray, base: str | None = None):
    """PUT a label of slice 0 of CASE, as the page does, painted on revision ``base``."""
    params = {"case": CASE, "z": 0, "h": H, "w": W, **({} if base is None else {"base": base})}
    return client.put("/api/label", params=params, content=label.tobytes(),
                      headers={"Content-Type": "application/octet-stream"})


def test_a_save_from_a_tab_that_loaded_the_slice_before_another_tab_saved_it_is_refused(data, tmp_path):
    """Two tabs open one slice; the first saves. The second's save, painted on the older version, would
    silently replace the first's work: it is refused with 409 until the user saves again on purpose."""
    with make_client(data, tmp_path / "project") as client:
        first_tab = second_tab = client.get("/api/slice", params={"case": CASE, "z": 0}).json()["revision"]
        mine, theirs = painted((1, 2, 3)), painted((3, 2, 1))
        saved = put_on(client, mine, first_tab)
        assert saved.status_code == 200
        refused = put_on(client, theirs, second_tab)
        assert refused.status_code == 409
        assert "saved in another tab or window after this one loaded it" in refused.json()["detail"]
        shown = client.get("/api/slice", params={"case": CASE, "z": 0}).json()
        assert shown["revision"] == saved.json()["revision"] != first_tab
        assert np.array_equal(decode(shown["label"], "u1", (H, W)), mine)  # the first tab's work is kept
        assert client.delete("/api/label", params={"case": CASE, "z": 0}).status_code == 200
        assert client.get("/api/slice", params={"case": CASE, "z": 0}).json()["revision"] == shown["revision"]
        again = put_on(client, theirs, shown["revision"])  # saved again, knowingly
        assert again.status_code == 200 and again.json()["revision"] != shown["revision"]
        assert put_on(client, mine).status_code == 200  # without a base (a script): saved as before


def test_runs_scoring_other_classes_each_get_their_class_plots(tmp_path):
    """Side by side, the per-class plots followed the first run's classes alone: the second run's were
    missing from the report without a word."""
    from fewsam.metrics import group_summary
    from fewsam.report import write_group_report

    for name, classes in (("optic", ["rim", "cup"]), ("heart", ["LV", "RV"])):
        cases = [{"case": f"{name}{i}", "group": "F" if i % 2 else "M",
                  "per_class": {c: {"dice": 0.5 + 0.1 * i, "iou": 0.4, "hd95": 2.0, "asd": 1.0} for c in classes}}
                 for i in range(4)]
        (tmp_path / f"{name}.json").write_text(json.dumps({**group_summary(cases, n_boot=20), "group_by": "sex",
                                                           "distance_unit": "pixel"}))
    paths = write_group_report([tmp_path / "optic.json", tmp_path / "heart.json"], tmp_path / "rep")
    assert sorted(p.name for p in (tmp_path / "rep").glob("group_dice_*.png")) == [
        "group_dice_LV.png", "group_dice_RV.png", "group_dice_cup.png", "group_dice_rim.png"]
    assert "RV: mean Dice per group" in paths["markdown"].read_text()
