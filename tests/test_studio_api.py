"""fewsam studio's HTTP API without a browser (FastAPI's TestClient): every endpoint, and every refusal.

Fits are run by stand-in workers (a Python one-liner given as the studio's worker command) so
these tests take seconds: one that sleeps (a fit in progress), one that crashes, and one that
writes what the real worker writes (status, fit log, predictions). The real worker is driven by
the browser test and tested on its own in test_studio_worker.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import assert_one_line_error, run_fewsam
from fewsam.data import open_dataset, select_labelled
from fewsam.data.phantom import write_phantom_dataset
from fewsam.studio import StudioSettings, create_app
from fewsam.studio.errors import StudioError
from fewsam.studio.fitdata import FIT_VAL_SPLIT, SLICES
from fewsam.studio.project import Project

CASE, H, W, D = "phantom_000", 144, 176, 3
LOCAL = "http://127.0.0.1:8765"
SLEEPER = "import time; time.sleep(120)"
CRASHER = "import os, sys; print('worker: simulated crash while fitting', flush=True); os._exit(3)"
FINISHER = """
import json, pathlib, sys
import numpy as np
from fewsam.atomic import atomic_write_bytes
from fewsam.studio.project import LATEST_RUN, PREDICTIONS, case_key, encode_prediction
spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
project = pathlib.Path(spec["project"])
if spec["kind"] == "fit":
    fit = pathlib.Path(spec["fit_dir"]).name
    run = pathlib.Path(spec["fit_dir"]) / "run"
    run.mkdir(parents=True)
    (run / "fit_log.jsonl").write_text('{"step": 1, "loss": 0.9}\\n{"step": 2, "loss": 0.5}\\n'
                                       '{"step": 2, "validation": {"score": 0.75, "dice": 0.75}}\\n')
    atomic_write_bytes(project / LATEST_RUN, json.dumps({"fit": fit, "run": str(run)}).encode())
else:
    fit = spec["fit"]
for case in spec["cases"]:
    labels = np.zeros((3, 144, 176), np.uint8)
    labels[:, 60:80, 80:100] = 3
    entropy = np.array([0.2, 0.9, 0.5], np.float32)
    atomic_write_bytes(project / PREDICTIONS / fit / f"{case_key(case)}.npz",
                       encode_prediction(case, fit, labels, entropy))
atomic_write_bytes(pathlib.Path(spec["status"]),
                   json.dumps({"state": "done", "phase": "done", "result": {"predicted": spec["cases"]}}).encode())
"""


def python(code: str):
    """A worker command that runs ``code`` (with the job spec path as its argument) in a new Python."""
    return lambda spec: [sys.executable, "-c", code, str(spec)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("studio") / "data", n_train=1, n_val=1, slices=D, seed=0)


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def make_client(data: Path, project: Path, **settings) -> TestClient:
    return TestClient(create_app(StudioSettings(data=data, project=project, **settings)), base_url=LOCAL)


@pytest.fixture
def studio(data: Path, tmp_path: Path):
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        yield client


def painted(values=(1, 2, 3)) -> np.ndarray:
    label = np.zeros((H, W), np.uint8)
    for i, value in enumerate(values):
        label[10 + 20 * i: 20 + 20 * i, 10:30] = value
    return label


def put(client: TestClient, label: np.ndarray, case: str = CASE, z: int = 0, **headers):
    h, w = label.shape
    return client.put("/api/label", params={"case": case, "z": z, "h": h, "w": w}, content=label.tobytes(),
                      headers={"Content-Type": "application/octet-stream", **headers})


def decode(text: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape)


def wait_for_job(client: TestClient, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get("/api/job").json()
        if job["state"] not in ("running",):
            return job
        time.sleep(0.1)
    raise AssertionError("the job did not end")


# --- browsing --------------------------------------------------------------------------------


def test_info_lists_cases_slices_and_class_names(studio):
    info = studio.get("/api/info").json()
    assert [c["id"] for c in info["cases"]] == ["phantom_000", "phantom_001"]
    assert all(c["slices"] == D and c["labelled"] == [] and c["has_label"] for c in info["cases"])
    assert info["classes"] == [{"value": 1, "name": "RV"}, {"value": 2, "name": "Myo"}, {"value": 3, "name": "LV"}]
    assert info["layout"] == "nifti" and info["job"] == {"state": "idle"} and info["latest_fit"] is None


def test_slice_sends_the_image_and_dataset_label_as_stored(studio, data):
    got = studio.get("/api/slice", params={"case": CASE, "z": 1}).json()
    image = np.asarray(nib.load(data / "imagesTr" / f"{CASE}_0000.nii.gz").dataobj).transpose(2, 1, 0)
    truth = np.asarray(nib.load(data / "labelsTr" / f"{CASE}.nii.gz").dataobj).transpose(2, 1, 0)
    assert (got["height"], got["width"], got["channels"], got["slices"]) == (H, W, 1, D)
    np.testing.assert_array_equal(decode(got["image"], "<f4", (H, W)), image[1])
    np.testing.assert_array_equal(decode(got["dataset_label"], "u1", (H, W)), truth[1])
    assert not decode(got["label"], "u1", (H, W)).any() and got["labelled"] is False and got["prediction"] is None
    lo, hi = got["window"]
    assert image.min() <= lo < hi <= image.max()


@pytest.mark.parametrize("params, status, words", [
    ({"case": CASE, "z": 3}, 404, "numbered 0 to 2"),
    ({"case": CASE, "z": -1}, 404, "no slice -1"),
    ({"case": "phantom_999", "z": 0}, 404, "no case 'phantom_999'"),
    ({"case": "../../etc/passwd", "z": 0}, 404, "no case"),
    ({"case": CASE}, 422, "z"),
])
def test_slice_requests_naming_nothing_here_are_refused(studio, params, status, words):
    response = studio.get("/api/slice", params=params)
    assert response.status_code == status and words in response.json()["detail"]


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                                  "/static/%2e%2e/%2e%2e/studio/app.py", "/static//etc/passwd",
                                  "/static/%2fetc%2fpasswd", "/static/../../../../etc/passwd"])
def test_static_files_never_leave_their_folder(studio, path):
    response = studio.get(path)
    assert response.status_code in (400, 404), path
    assert "StudioSettings" not in response.text and "root:" not in response.text


def test_page_and_its_assets_are_served_without_a_cdn(studio):
    page = studio.get("/")
    assert page.status_code == 200 and 'src="/static/studio.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text
    script = studio.get("/static/studio.js")
    assert script.status_code == 200 and "https://" not in script.text and "fetch(" in script.text


# --- labels ----------------------------------------------------------------------------------


def test_saved_label_is_written_atomically_in_nifti_beside_not_into_the_dataset(studio, data, tmp_path):
    before = folder_digest(data)
    response = put(studio, painted(), z=2)
    assert response.status_code == 200 and response.json()["labelled"] == [2]
    assert folder_digest(data) == before  # the user's dataset is never written
    stored = nib.load(tmp_path / "project" / "labels" / f"{CASE}.nii.gz")
    source = nib.load(data / "imagesTr" / f"{CASE}_0000.nii.gz")
    np.testing.assert_allclose(stored.affine, source.affine)
    volume = np.asarray(stored.dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(volume[2], painted())
    assert not volume[[0, 1]].any()
    assert not list((tmp_path / "project").rglob("*.tmp"))
    got = studio.get("/api/slice", params={"case": CASE, "z": 2}).json()
    assert got["labelled"] is True
    np.testing.assert_array_equal(decode(got["label"], "u1", (H, W)), painted())


def test_labels_survive_a_restart(data, tmp_path):
    with make_client(data, tmp_path / "project") as first:
        assert put(first, painted(), z=1).status_code == 200
        assert put(first, painted((3, 2, 1)), case="phantom_001", z=0).status_code == 200
    with make_client(data, tmp_path / "project") as second:
        cases = {c["id"]: c["labelled"] for c in second.get("/api/info").json()["cases"]}
        assert cases == {"phantom_000": [1], "phantom_001": [0]}
        got = second.get("/api/slice", params={"case": "phantom_001", "z": 0}).json()
        np.testing.assert_array_equal(decode(got["label"], "u1", (H, W)), painted((3, 2, 1)))


def test_unmark_takes_a_slice_out_of_the_labelled_set(studio):
    put(studio, painted(), z=0)
    put(studio, painted(), z=1)
    response = studio.delete("/api/label", params={"case": CASE, "z": 0})
    assert response.status_code == 200 and response.json()["labelled"] == [1]


@pytest.mark.parametrize("label, h, w, words", [
    (np.zeros((10, 10), np.uint8), 10, 10, "is 10x10 but slice 0 of phantom_000 is 144x176"),
    (np.zeros((H, W), np.uint8)[:-1], H, W, "a 144x176 slice needs 25344"),
    (np.full((H, W), 7, np.uint8), H, W, "label values [7] are not classes of this dataset"),
    (np.full((H, W), 255, np.uint8), H, W, "label values [255]"),
])
def test_bad_label_uploads_are_refused_with_the_reason_and_nothing_written(studio, tmp_path, label, h, w, words):
    response = studio.put("/api/label", params={"case": CASE, "z": 0, "h": h, "w": w}, content=label.tobytes(),
                          headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 422
    assert words in response.json()["detail"]
    assert not (tmp_path / "project" / "labels").exists()
    assert studio.get("/api/info").json()["cases"][0]["labelled"] == []


def test_an_upload_above_the_cap_is_refused_before_it_is_read(data, tmp_path):
    with make_client(data, tmp_path / "project", max_upload=1000) as client:
        response = put(client, painted())
        assert response.status_code == 413 and "cap of 1000 bytes" in response.json()["detail"]

        def chunks():  # no Content-Length: the body is counted as it arrives
            for _ in range(30):
                yield b"\0" * 100

        response = client.put("/api/label", params={"case": CASE, "z": 0, "h": 1, "w": 3000}, content=chunks(),
                              headers={"Content-Type": "application/octet-stream"})
        assert response.status_code == 413
    assert not (tmp_path / "project" / "labels").exists()


# --- who may connect -------------------------------------------------------------------------


def test_a_non_loopback_binding_needs_the_token_on_every_request(data, tmp_path):
    with make_client(data, tmp_path / "project", host="0.0.0.0", token="s3cret") as client:
        for path in ("/", "/static/studio.js", "/api/info", "/api/slice?case=phantom_000&z=0"):
            refused = client.get(path)
            assert refused.status_code == 401 and "token" in refused.json()["detail"], path
        assert client.get("/api/info", headers={"X-Fewsam-Token": "wrong"}).status_code == 401
        assert put(client, painted()).status_code == 401
        assert client.get("/api/info", headers={"X-Fewsam-Token": "s3cret"}).status_code == 200
        assert client.get("/api/info", params={"token": "s3cret"}).status_code == 200
        page = client.get("/", params={"token": "s3cret"})
        assert 'src="/static/studio.js?token=s3cret"' in page.text
        assert client.get("/static/studio.js", params={"token": "s3cret"}).status_code == 200
        assert put(client, painted(), **{"X-Fewsam-Token": "s3cret"}).status_code == 200


def test_a_non_loopback_binding_without_a_token_does_not_start(data, tmp_path):
    with pytest.raises(ValueError, match="needs a token"):
        create_app(StudioSettings(data=data, project=tmp_path / "project", host="0.0.0.0"))


def test_loopback_studio_refuses_foreign_host_names_and_cross_site_changes(studio):
    assert studio.get("/api/info", headers={"Host": "attacker.example:8765"}).status_code == 403
    assert studio.get("/api/info", headers={"Host": "localhost:8765"}).status_code == 200
    response = put(studio, painted(), Origin="http://attacker.example")
    assert response.status_code == 403 and "another site" in response.json()["detail"]
    assert put(studio, painted(), Origin=LOCAL).status_code == 200


# --- fits, jobs, predictions -----------------------------------------------------------------


def test_fit_is_refused_without_labels_or_without_every_class(studio, tmp_path):
    response = studio.post("/api/fit", json={"steps": 4, "views": 1})
    assert response.status_code == 400 and "no slice is labelled" in response.json()["detail"]
    put(studio, painted((1, 3)))
    response = studio.post("/api/fit", json={"steps": 4, "views": 1})
    assert response.status_code == 400 and "no labelled slice shows class Myo" in response.json()["detail"]
    assert not (tmp_path / "project" / "fits").exists()  # nothing left of a refused fit
    assert studio.get("/api/job").json() == {"state": "idle"}


@pytest.mark.parametrize("body, words", [({"steps": 0}, "steps"), ({"views": 9}, "views"),
                                         ({"cases": ["nope"]}, "no case 'nope'"),
                                         ({"steps": True}, "steps"), ({"steps": "5"}, "steps"),
                                         ({"all_cases": "yes"}, "all_cases")])
def test_fit_options_are_checked_before_anything_starts(studio, body, words):
    put(studio, painted())
    response = studio.post("/api/fit", json=body)
    assert response.status_code in (404, 422) and words in response.json()["detail"]
    assert studio.get("/api/job").json() == {"state": "idle"}


def test_a_second_fit_while_one_runs_is_refused_with_409(studio):
    put(studio, painted())
    first = studio.post("/api/fit", json={"steps": 4, "views": 1, "cases": [CASE]})
    assert first.status_code == 202 and first.json()["state"] == "running"
    second = studio.post("/api/fit", json={"steps": 4, "views": 1})
    assert second.status_code == 409 and "already running" in second.json()["detail"]
    assert studio.post("/api/predict", json={"cases": [CASE]}).status_code in (400, 409)
    job = studio.get("/api/job").json()
    assert job["state"] == "running" and job["kind"] == "fit" and job["steps"] == 4


def test_the_fit_reads_the_labelled_slices_as_a_dataset_fewsam_opens(studio, data, tmp_path):
    put(studio, painted(), z=0)
    put(studio, painted((3, 2, 1)), case="phantom_001", z=2)
    assert studio.post("/api/fit", json={"steps": 5, "views": 2, "cases": [CASE]}).status_code == 202
    fit_dir = tmp_path / "project" / "fits" / "fit-0001"
    spec = json.loads((tmp_path / "project" / "jobs" / "job-0001" / "job.json").read_text())
    assert (spec["kind"], spec["steps"], spec["views"], spec["labelled_slices"], spec["cases"]) == \
        ("fit", 5, 2, 2, [CASE])
    assert spec["fit_dir"] == str(fit_dir) and spec["data"] == str(data)
    fit_data = open_dataset(fit_dir / "data")
    assert fit_data.class_map.names == {1: "RV", 2: "Myo", 3: "LV"}
    refs = select_labelled(fit_data, n_slices=spec["labelled_slices"])
    assert [r.case_id for r in refs] == ["s0000", "s0001"] and fit_data.split(FIT_VAL_SPLIT) == ["s0000", "s0001"]
    sources = json.loads((fit_dir / "data" / SLICES).read_text())
    assert sources == {"s0000": [CASE, 0], "s0001": ["phantom_001", 2]}
    source = open_dataset(data)
    for new_id, (case_id, z) in sources.items():
        case = fit_data.load(new_id)
        np.testing.assert_array_equal(case.image[0], source.load(case_id).image[z])  # bit for bit: cache hits
    np.testing.assert_array_equal(fit_data.load("s0000").label[0], painted())
    np.testing.assert_array_equal(fit_data.load("s0001").label[0], painted((3, 2, 1)))


def test_a_crashed_worker_is_reported_and_leaves_the_labels_intact(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(CRASHER)) as client:
        put(client, painted(), z=1)
        labels = tmp_path / "project" / "labels"
        before = folder_digest(labels)
        assert client.post("/api/fit", json={"steps": 4, "views": 1}).status_code == 202
        job = wait_for_job(client)
        assert job["state"] == "failed"
        assert "exit code 3" in job["error"] and "simulated crash" in job["error"]
        assert "labels are unchanged" in job["error"]
        assert folder_digest(labels) == before
        got = client.get("/api/slice", params={"case": CASE, "z": 1}).json()
        np.testing.assert_array_equal(decode(got["label"], "u1", (H, W)), painted())
        assert client.post("/api/fit", json={"steps": 4, "views": 1}).status_code == 202  # not stuck


def test_a_finished_fit_shows_progress_predictions_and_suggests_the_least_sure_slice(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(FINISHER)) as client:
        put(client, painted(), z=0)
        assert client.get("/api/suggest").status_code == 404  # nothing predicted yet
        assert client.post("/api/accept", params={"case": CASE, "z": 1}).status_code == 404
        assert client.post("/api/predict", json={"cases": [CASE]}).status_code == 400  # no fit yet
        assert client.post("/api/fit", json={"steps": 2, "views": 1, "cases": [CASE]}).status_code == 202
        job = wait_for_job(client)
        assert (job["state"], job["step"], job["loss"], job["dice"]) == ("done", 2, 0.5, 0.75)
        info = client.get("/api/info").json()
        assert info["latest_fit"]["fit"] == "fit-0001"
        assert [c["predicted"] for c in info["cases"]] == [True, False]
        got = client.get("/api/slice", params={"case": CASE, "z": 1}).json()
        assert got["fit"] == "fit-0001" and got["entropy"] == pytest.approx(0.9)
        assert decode(got["prediction"], "u1", (H, W))[70, 90] == 3
        # Slice 1 is the least sure (0.9) of the unlabelled predicted slices 1 and 2.
        assert client.get("/api/suggest").json() == {"case": CASE, "z": 1, "entropy": pytest.approx(0.9)}
        accepted = client.post("/api/accept", params={"case": CASE, "z": 1})
        assert accepted.status_code == 200 and accepted.json()["labelled"] == [0, 1]
        assert client.get("/api/suggest").json()["z"] == 2
        got = client.get("/api/slice", params={"case": CASE, "z": 1}).json()
        assert decode(got["label"], "u1", (H, W))[70, 90] == 3 and got["labelled"]
        # More cases with the latest fit.
        assert client.post("/api/predict", json={"cases": []}).status_code == 400
        started = client.post("/api/predict", json={"cases": ["phantom_001"]})
        assert started.status_code == 202 and started.json()["kind"] == "predict"
        assert wait_for_job(client)["state"] == "done"
        assert [c["predicted"] for c in client.get("/api/info").json()["cases"]] == [True, True]


# --- export ----------------------------------------------------------------------------------


def test_export_writes_the_labelled_set_in_nifti_with_the_source_geometry(studio, data, tmp_path):
    assert studio.post("/api/export").status_code == 400  # nothing labelled
    put(studio, painted(), z=0)
    put(studio, painted((2,)), z=2)
    put(studio, painted((3,)), z=1)
    studio.delete("/api/label", params={"case": CASE, "z": 1})  # unmarked: exported as unannotated
    result = studio.post("/api/export").json()
    export = tmp_path / "project" / "export"
    # named as the dataset's labels (labelsTr/), so the export reads back as them
    assert result == {"folder": str(export), "cases": 1, "slices": 2, "files": [f"labelsTr/{CASE}.nii.gz"]}
    written = nib.load(export / "labelsTr" / f"{CASE}.nii.gz")
    source = nib.load(data / "imagesTr" / f"{CASE}_0000.nii.gz")
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.header.get_zooms() == source.header.get_zooms() and written.get_data_dtype() == np.uint8
    volume = np.asarray(written.dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(volume[0], painted())
    np.testing.assert_array_equal(volume[2], painted((2,)))
    assert (volume[1] == 4).all()  # nnU-Net's ignore label, which the exported dataset.json declares
    assert json.loads((export / "dataset.json").read_text())["labels"]["ignore"] == 4
    manifest = json.loads((export / "labelled_slices.json").read_text())
    assert manifest["cases"] == {CASE: {"file": f"labelsTr/{CASE}.nii.gz", "slices": [0, 2]}}
    put(studio, painted(), case="phantom_001", z=1)
    assert studio.post("/api/export").json()["cases"] == 2  # a new export replaces the old one whole
    assert sorted(p.relative_to(export).as_posix() for p in export.rglob("*")) == [
        "dataset.json", "labelled_slices.json", "labelsTr", "labelsTr/phantom_000.nii.gz",
        "labelsTr/phantom_001.nii.gz"]


# --- 2D colour images ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_pngs(tmp_path_factory) -> Path:
    """A folder of RGB images with 0/255 masks (the generic 2D layout: images/ + masks/)."""
    root = tmp_path_factory.mktemp("studio") / "colour"
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB").save(root / "images" / f"{name}.png")
        mask = np.zeros((20, 24), np.uint8)
        mask[5:12, 6:15] = 255
        Image.fromarray(mask, "L").save(root / "masks" / f"{name}.png")
    return root


def test_colour_2d_images_are_labelled_in_png_and_fitted_from_exact_rgb_copies(colour_pngs, tmp_path):
    label = np.zeros((20, 24), np.uint8)
    label[2:8, 3:9] = 1
    with make_client(colour_pngs, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        got = client.get("/api/slice", params={"case": "images/b", "z": 0}).json()
        assert (got["channels"], got["height"], got["width"], got["slices"]) == (3, 20, 24, 1)
        assert put(client, label, case="images/b").status_code == 200
        assert client.post("/api/fit", json={"steps": 2, "views": 1}).status_code == 202
        assert client.post("/api/export").json()["files"] == ["masks/b.png"]  # named as the reader finds masks
    stored = np.asarray(Image.open(tmp_path / "project" / "labels" / "images" / "b.png"))
    np.testing.assert_array_equal(stored, label * 255)  # the dataset's own mask coding (0/255)
    fit_data = open_dataset(tmp_path / "project" / "fits" / "fit-0001" / "data")
    case = fit_data.load(fit_data.split(FIT_VAL_SPLIT)[0])
    np.testing.assert_array_equal(case.image, open_dataset(colour_pngs).load("images/b").image)  # RGB, bit for bit
    assert json.loads((fit_data.root / SLICES).read_text()) == {"images/s0000": ["images/b", 0]}
    np.testing.assert_array_equal(case.label[0], label)
    assert fit_data.class_map.names == {1: "foreground"} and fit_data.split("train") == ["images/s0000"]


# --- the project folder and the command line -------------------------------------------------


def test_demo_writes_the_phantom_into_the_project_once(tmp_path):
    from fewsam.studio.server import resolve_paths

    data, project = resolve_paths(None, tmp_path / "demo", demo=True)
    assert project == tmp_path / "demo" and data == project / "phantom"
    assert (data / "dataset.json").is_file()
    stamp = (data / "dataset.json").stat().st_mtime_ns
    assert resolve_paths(None, tmp_path / "demo", demo=True)[0] == data
    assert (data / "dataset.json").stat().st_mtime_ns == stamp
    assert resolve_paths(tmp_path / "x", None, demo=False) == (tmp_path / "x", tmp_path / "x-studio")


def test_a_port_in_use_is_refused_and_the_address_names_the_token():
    import socket

    from fewsam.studio.server import check_port, studio_url

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(StudioError, match="pass another --port"):
            check_port("127.0.0.1", taken.getsockname()[1])
    assert studio_url("127.0.0.1", 8765, None) == "http://127.0.0.1:8765/"
    assert studio_url("::1", 9, "t0k").endswith("[::1]:9/?token=t0k")
    assert studio_url("0.0.0.0", 9, "t0k") == f"http://{socket.gethostname()}:9/?token=t0k"


@pytest.mark.parametrize("host, says", [("no-such-host.invalid", "not an address of this machine"),
                                         ("192.0.2.1", "no interface of this machine has that address")])
def test_a_host_this_machine_cannot_listen_on_is_named_as_such(host, says):
    """Not "is a studio already running there?": nothing runs there, the address is not this machine's."""
    from fewsam.studio.server import check_port

    with pytest.raises(StudioError, match=f"--host {host}: {says}"):
        check_port(host, 8765)


def test_unlabelled_data_takes_its_classes_from_the_project(data, tmp_path):
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    image = nib.load(data / "imagesTr" / f"{CASE}_0000.nii.gz")
    nib.save(image, plain / "images" / "scan.nii.gz")
    with pytest.raises(StudioError, match="names no classes"):
        Project(plain, tmp_path / "project")
    (tmp_path / "project" / "classes.json").write_text('{"1": "liver", "2": "tumour"}')
    with make_client(plain, tmp_path / "project") as client:
        assert client.get("/api/info").json()["classes"] == [{"value": 1, "name": "liver"},
                                                            {"value": 2, "name": "tumour"}]
        assert put(client, painted((1, 2)), case="scan").status_code == 200
        assert put(client, painted((3,)), case="scan").status_code == 422


def test_the_project_may_not_lie_inside_the_dataset(data):
    with pytest.raises(StudioError, match="inside the dataset"):
        Project(data, data / "studio")
    with pytest.raises(StudioError, match="inside the dataset"):
        Project(data, data)


def test_a_project_made_for_other_data_is_refused(data, tmp_path):
    other = write_phantom_dataset(tmp_path / "other", n_train=1, n_val=1, slices=2, seed=1)
    Project(other, tmp_path / "project").save_slice("phantom_000", 0, np.zeros((H, W), np.uint8))
    with pytest.raises(StudioError, match="holds labels of"):
        Project(data, tmp_path / "project")


def test_cli_studio_mistakes_are_one_error_line(data, tmp_path):
    assert_one_line_error(run_fewsam("studio", cwd=tmp_path), "say which data to label")
    assert_one_line_error(run_fewsam("studio", "--data", str(data), "--project", str(data / "labels"), cwd=tmp_path),
                          "inside the dataset")
