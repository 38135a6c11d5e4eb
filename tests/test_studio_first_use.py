"""fewsam studio as a researcher meets it on the first day: labelling real-world layouts through the
HTTP API (FastAPI's TestClient), and reading the export back as the dataset it is copied into.

- BUSI keeps a second lesion in ``x_mask_1.png``, merged with ``x_mask.png``: an image relabelled in
  the studio was exported as ``x_mask.png`` alone, and copied into the dataset it read back merged
  with the old second outline (listed by its index.csv, or paired by name without one);
- the page, opened on a project that holds a fit (a studio restarted after fitting), said "no fit yet"
  beside that fit's predictions; and an image over 4x wider than the view (a 4000 px scan) opened at
  100% zoom, one corner of it, instead of the smallest zoom;
- after the last training step the fit chooses its post-processing on the labelled slices (mirrored
  views encode each slice 8 times: minutes), and the page sat at "step 80/80" under the worker's
  "encoding ..., then fitting" with no sign of progress;
- a folder of 2D images without masks (new data) offered only the reader's guessed "foreground": the
  classes written into PROJECT/classes.json, as the studio asks for unlabelled volumes, were ignored;
- "Cancel" while a fit predicted its cases said "the fit was cancelled", but its training had finished
  and it was already the latest fit, whose predictions replaced the earlier fit's on the page;
- an image whose dataset mask cannot be read (blurred edges outside the coding, another size) could not
  be opened at all, though a broken mask is the very reason to label it again; now it opens without
  that mask, and the page says why it is not shown;
- a volume's zero-padded end slice, labelled as background, failed the fit after its worker started
  ("labelled case s0000 of PROJECT/fits/fit-0001/data is a constant image"), though a fit accepts blank
  slices inside a case with content: it is left out of the fit, and a case blank throughout is refused
  before any worker starts, by its own name;
- a finished fit showed the Dice of its last validation as "Dice on labelled slices", though the model
  it kept (and predicts with) is its best step's, which scored higher;
- with the server stopped (Ctrl+C, a restart), a save (S) or a fit from the page did nothing and said
  nothing;
- a mask named with a ';' (``semi;colon.png``, paired by name without an index) was split at it and
  paired with no image: its image opened as unlabelled.
"""

from __future__ import annotations

import json
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fewsam.data import open_dataset
from fewsam.studio import StudioSettings, create_app
from fewsam.studio.project import EXPORT_MANIFEST, LATEST_RUN, Project
from test_studio_api import SLEEPER, data, decode, make_client, painted, put, python  # noqa: F401  (data: fixture)
from test_studio_browser import Page, browser, free_port, wait_until  # noqa: F401  (browser: fixture)

SIZE = (24, 32)


def busi_folder(root: Path, with_index: bool) -> Path:
    """A BUSI-like folder: ``benign/benign (1).png`` with its lesion in ``_mask.png`` and a second one in
    ``_mask_1.png``, and ``benign (2).png`` with one mask; listed in index.csv (as BUSI's copy here), or
    not (as BUSI is published, paired by the names)."""
    (root / "benign").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in (1, 2):
        Image.fromarray(rng.integers(0, 255, SIZE, dtype=np.uint8)).save(root / "benign" / f"benign ({n}).png")
        mask = np.zeros(SIZE, np.uint8)
        mask[2:8, 2:8] = 255
        Image.fromarray(mask).save(root / "benign" / f"benign ({n})_mask.png")
    second = np.zeros(SIZE, np.uint8)
    second[14:20, 20:28] = 255
    Image.fromarray(second).save(root / "benign" / "benign (1)_mask_1.png")
    if with_index:
        (root / "index.csv").write_text(
            "image,masks,pathology\n"
            "benign/benign (1).png,benign/benign (1)_mask.png;benign/benign (1)_mask_1.png,benign\n"
            "benign/benign (2).png,benign/benign (2)_mask.png,benign\n")
    return root


def test_a_relabelled_busi_image_reads_back_as_labelled_not_merged_with_its_old_second_mask(tmp_path):
    drawn = np.zeros(SIZE, np.uint8)
    drawn[3:9, 10:16] = 1  # the second lesion (rows 14-20) was erased: it was not one
    for with_index in (True, False):
        data = busi_folder(tmp_path / f"busi-{with_index}", with_index)
        assert open_dataset(data).load("benign/benign (1)").label.sum() == 36 + 48  # both masks merged
        with make_client(data, tmp_path / f"project-{with_index}") as client:
            assert put(client, drawn, case="benign/benign (1)").status_code == 200
            exported = client.post("/api/export")
            assert exported.status_code == 200, exported.text
            assert client.post("/api/export").status_code == 200  # the blank masks are the export's own
        back = tmp_path / f"back-{with_index}"
        shutil.copytree(data, back)
        shutil.copytree(exported.json()["folder"], back, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(EXPORT_MANIFEST))
        read = open_dataset(back)
        np.testing.assert_array_equal(read.load("benign/benign (1)").label[0], drawn)
        assert read.load("benign/benign (2)").label.sum() == 36  # not exported: as it was
        assert Project(back, tmp_path / f"again-{with_index}").case_ids() == ["benign/benign (1)", "benign/benign (2)"]


def test_unlabelled_images_take_the_classes_of_the_project(tmp_path):
    data = tmp_path / "frames"
    (data / "images").mkdir(parents=True)
    for n in (1, 2):
        Image.fromarray(np.full(SIZE, 60 * n, np.uint8)).save(data / "images" / f"frame{n}.png")
    project = tmp_path / "project"
    project.mkdir()
    (project / "classes.json").write_text('{"1": "liver", "2": "tumour"}')
    drawn = np.zeros(SIZE, np.uint8)
    drawn[2:8, 2:8], drawn[12:20, 10:30] = 1, 2
    with make_client(data, project) as client:
        assert client.get("/api/info").json()["classes"] == [{"value": 1, "name": "liver"},
                                                            {"value": 2, "name": "tumour"}]
        assert put(client, drawn, case="images/frame1").status_code == 200
        exported = client.post("/api/export").json()
    back = tmp_path / "back"
    shutil.copytree(data, back)
    shutil.copytree(exported["folder"], back, dirs_exist_ok=True, ignore=shutil.ignore_patterns(EXPORT_MANIFEST))
    np.testing.assert_array_equal(open_dataset(back).load("images/frame1").label[0], drawn)


def blurred_mask(data: Path, name: str, shape: tuple[int, int]) -> None:
    """``images/<name>.png`` whose mask has anti-aliased edges (value 77), outside the 0/255 coding."""
    Image.fromarray(np.full(shape, 90, np.uint8)).save(data / "images" / f"{name}.png")
    mask = np.zeros(shape, np.uint8)
    mask[2:6, 2:6], mask[6, 2:6] = 255, 77
    Image.fromarray(mask).save(data / "masks" / f"{name}.png")


def test_an_image_whose_mask_cannot_be_read_opens_for_labelling(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    blurred_mask(data, "blurred", SIZE)
    with make_client(data, tmp_path / "project") as client:
        opened = client.get("/api/slice", params={"case": "images/blurred", "z": 0})
        assert opened.status_code == 200, opened.text
        assert opened.json()["dataset_label"] is None
        assert opened.json()["dataset_label_error"].startswith("the dataset's own label of images/blurred cannot "
                                                               "be read, so it is not shown; label the image here")
        assert "mask values [77]" in opened.json()["dataset_label_error"]
        drawn = np.zeros(SIZE, np.uint8)
        drawn[2:7, 2:6] = 1
        assert put(client, drawn, case="images/blurred").status_code == 200


def padded_volumes(root: Path) -> Path:
    """Two 3-slice NIfTI cases: ``padded`` (slice 0 zero everywhere, as a volume padded at its end) and
    ``empty`` (zero throughout)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0,
                                                   "heart": 1}, "numTraining": 2, "file_ending": ".nii.gz"}))
    padded = np.random.default_rng(0).random((24, 20, 3)).astype(np.float32)
    padded[:, :, 0] = 0
    for case, image in (("padded", padded), ("empty", np.zeros_like(padded))):
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    return root


def test_a_blank_end_slice_labelled_as_background_is_left_out_of_the_fit(tmp_path):
    data = padded_volumes(tmp_path / "data")
    heart = np.zeros((20, 24), np.uint8)
    heart[5:12, 6:14] = 1
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        assert put(client, np.zeros((20, 24), np.uint8), case="padded", z=0).status_code == 200
        assert put(client, heart, case="padded", z=1).status_code == 200
        started = client.post("/api/fit", json={"steps": 2})
        assert started.status_code == 202, started.text
        spec = json.loads((tmp_path / "project" / "jobs" / "job-0001" / "job.json").read_text())
        assert (spec["labelled_slices"], spec["blank_slices_left_out"]) == (1, ["padded slice 0"])
        client.delete("/api/job")
        assert put(client, heart, case="empty", z=1).status_code == 200
        refused = client.post("/api/fit", json={"steps": 2})
        assert refused.status_code == 400
        assert refused.json()["detail"].startswith("case empty is a constant image (every pixel 0), nothing to segment")


def test_a_mask_named_with_a_semicolon_stays_paired_with_its_image(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(np.full(SIZE, 90, np.uint8)).save(data / "images" / "semi;colon.png")
    mask = np.zeros(SIZE, np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(data / "masks" / "semi;colon.png")
    with make_client(data, tmp_path / "project") as client:
        assert client.get("/api/info").json()["cases"][0]["has_label"]
        opened = client.get("/api/slice", params={"case": "images/semi;colon", "z": 0}).json()
        assert decode(opened["dataset_label"], "u1", SIZE).sum() == 16


CHOOSING = """
import json, pathlib, sys, time
spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
run = pathlib.Path(spec["fit_dir"]) / "run"
run.mkdir(parents=True)
(run / "fit_log.jsonl").write_text(json.dumps({"step": 80, "loss": 0.1}) + "\\n")
(run / "fit.log").write_text("2026-01-01 12:00:00 fit 80/80 (100%) loss 0.100, 1:00 elapsed\\n"
                             "2026-01-01 12:00:05 validation at step 80: score 0.9\\n"
                             "2026-01-01 12:00:26 mirror val 3/10 (30%), 0:21 elapsed, ~0:50 left\\n")
pathlib.Path(spec["status"]).write_text(json.dumps({"state": "running", "phase": "fit",
                                                    "message": "encoding 1 labelled slice(s), then fitting"}))
time.sleep(120)
"""


def test_the_fit_shows_what_it_does_after_its_last_step(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(CHOOSING)) as client:
        assert put(client, painted()).status_code == 200
        assert client.post("/api/fit", json={"steps": 80}).status_code == 202
        job = wait_until(lambda: (j := client.get("/api/job").json())["phase"] == "fit" and j, 10, "the fit")
        assert job["state"] == "running" and job["step"] == 80
        assert job["message"] == "mirror val 3/10 (30%), 0:21 elapsed, ~0:50 left"
        client.delete("/api/job")


def test_the_encodings_last_line_is_not_shown_once_the_training_loop_runs(tmp_path):
    """The loop's first progress line comes at 5% of its steps: until then the newest line is the
    encoding's, which says nothing about the steps the page shows running."""
    from fewsam.studio.jobs import fit_activity

    (tmp_path / "fit.log").write_text("2026-01-01 12:00:00 embed labelled 16/16 (100%), 0:12 elapsed\n")
    assert fit_activity(tmp_path, 0, 80) == "embed labelled 16/16 (100%), 0:12 elapsed"  # before the loop
    assert fit_activity(tmp_path, 2, 80) is None


PREDICTING = """
import json, pathlib, sys, time
spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
latest = {"fit": pathlib.Path(spec["fit_dir"]).name, "run": str(pathlib.Path(spec["fit_dir"]) / "run")}
(pathlib.Path(spec["project"]) / "latest_run.json").write_text(json.dumps(latest))
pathlib.Path(spec["status"]).write_text(json.dumps({"state": "running", "phase": "predict", "cases_done": 1,
                                                    "cases_total": 3, "message": "predicting"}))
time.sleep(120)
"""


def test_cancelling_a_fit_that_is_predicting_says_it_is_the_latest_fit_now(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(PREDICTING)) as client:
        assert put(client, painted()).status_code == 200
        assert client.post("/api/fit", json={"steps": 2, "all_cases": True}).status_code == 202
        wait_until(lambda: client.get("/api/job").json()["phase"] == "predict", 10, "the predictions")
        job = client.delete("/api/job").json()
        assert job["state"] == "cancelled" and client.get("/api/info").json()["latest_fit"]["fit"] == "fit-0001"
        assert job["message"].startswith("the fit had finished and fit-0001 is now the latest fit; predicting its "
                                         "cases was cancelled after 1 of 3")


KEEPS_BEST = """
import json, pathlib, sys
spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
run = pathlib.Path(spec["fit_dir"]) / "run"
run.mkdir(parents=True)
(run / "fit_log.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in [
    {"step": 1, "loss": 0.9}, {"step": 1, "validation": {"score": 0.75}},
    {"step": 2, "loss": 0.8}, {"step": 2, "validation": {"score": 0.5}}]))
pathlib.Path(spec["status"]).write_text(json.dumps({"state": "done", "phase": "done", "result": {
    "fit": "fit-0001", "best_score": 0.75, "best_step": 1, "predicted": []}}))
"""


def test_a_finished_fit_shows_the_dice_of_the_model_it_kept(data, tmp_path):
    with make_client(data, tmp_path / "project", worker_argv=python(KEEPS_BEST)) as client:
        assert put(client, painted()).status_code == 200
        assert client.post("/api/fit", json={"steps": 2}).status_code == 202
        job = wait_until(lambda: (j := client.get("/api/job").json())["state"] != "running" and j, 10, "the fit")
        assert (job["state"], job["step"], job["dice"]) == ("done", 2, 0.75)


@contextmanager
def serving(data: Path, project: Path) -> Iterator[str]:
    """The studio app served by uvicorn in a thread (as ``fewsam studio`` serves it, without starting a
    second Python); yields its address."""
    import uvicorn

    port = free_port()
    app = create_app(StudioSettings(data=data, project=project, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "the studio server")
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.slow
def test_the_page_names_the_fit_held_fits_a_wide_scan_and_says_why_a_mask_is_not_shown(tmp_path, browser):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(np.full((40, 4000), 100, np.uint8)).save(data / "images" / "long.png")
    mask = np.zeros((40, 4000), np.uint8)
    mask[10:20, 10:40] = 255
    Image.fromarray(mask).save(data / "masks" / "long.png")
    labelled = Project(data, tmp_path / "project")  # a studio project with a label, then a fit
    labelled.save_slice("images/long", 0, (mask > 0).astype(np.uint8))
    project = labelled.folder
    (project / LATEST_RUN).write_text(json.dumps({"fit": "fit-0001", "run": str(project / "fits/fit-0001/run"),
                                                  "best_score": 0.75, "best_step": 3, "labelled_slices": 2}))
    blurred_mask(data, "blurred", (20, 30))
    with serving(data, project) as url:
        page = Page(browser, url)
        assert page.js("return document.getElementById('job-status').textContent") == \
            "latest fit fit-0001 - 2 labelled slice(s) - Dice on labelled slices 0.750"
        assert page.js("return studio.state.zoom") == 0.25
        page.js("return studio.openSlice('images/blurred', 0)")
        assert page.message().startswith("the dataset's own label of images/blurred cannot be read")
        page.js("return studio.openSlice('images/long', 0)")
        assert page.message() == ""  # said of the other case: gone with it
    page.js("return studio.save().catch(() => null)")  # the server has stopped: said, not silently dropped
    assert page.message().startswith("the studio server does not answer (stopped, or restarting?), so this was "
                                     "not done")
