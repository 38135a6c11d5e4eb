"""What fewsam writes and how it names and finds files.

- A run fitted on 2D PNG masks coded 0/1 wrote 0/255 predictions for a folder of new, unlabelled
  images (no masks to show their coding): the run now keeps its masks' coding in config.json and
  a folder without masks or classes.json is written in it; a folder with masks keeps its own. A studio
  fit of colour images keeps the source dataset's coding too (its PNG copy held class indices).
- The studio's export named a BUSI-style dataset's labels as its images (``x.png`` for the image
  ``x.png`` with mask ``x_mask.png``; ``images/x.png`` for ``masks/x.png``): the export read back as
  images, not labels; a volume's labels went flat to ``<case>.nii.gz``, where no reader looks. Labels are
  now named as the dataset's reader finds them (``labelsTr/``, ``labels/``, DICOM's ``labels/<series>``).
- ``fewsam evaluate`` did not find predictions named by MONAI's ``SaveImage`` (``<case>/<case>_trans.nii.gz``
  by default, ``_seg`` as its tutorials set it, flat with ``separate_folder=False``); it now does, and
  two files for one case are refused naming both.
- ``--out ""`` (a variable left unset) was taken as the working folder "."; an empty value of any path
  option or argument (``--out``, ``--pred``, ``--data``, ``--cache``, ``--json``, DATA, ...) is now a
  usage error naming it, and the Python API refuses an empty path argument likewise.
- ``fewsam demo`` wrote its overlay PNGs straight into place, after eval.json (which marks a demo
  finished): a demo stopped while drawing them left a cut-off PNG and refused to run again. Overlays
  are written atomically, and eval.json last. Its phantom wrote dataset.json (which marks the phantom
  whole) before splits_final.json: a demo stopped between them fitted on other splits when run again.
- ``fewsam fit --out`` inside the data folder wrote the run (checkpoints, logs) into the user's data, as
  no other command does (--cache, predict's --out and the studio's project are refused there); refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_lv_png_folder
from PIL import Image

from fewsam import api
from fewsam.data import open_dataset
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import DataError
from fewsam.evaluate import evaluate
from fewsam.methods import supervised
from fewsam.predict import predict

TINY_STUDENT = dict(image_size=32, channels=(4, 8, 16, 32), num_res_units=1, batch_size=1, steps=1, val_every=1)


def fit_tiny_student(data: Path, run: Path) -> Path:
    opts = api.FitOptions(data=data, run=run, labeled_cases=1, cache=str(run.parent / "cache"), show_progress=False)
    api.fit("supervised", opts, supervised.SupervisedConfig(**TINY_STUDENT))
    return run


def test_a_run_fitted_on_zero_one_masks_writes_new_images_predictions_as_zero_one(tmp_path):
    run = fit_tiny_student(write_lv_png_folder(tmp_path / "data", 5, foreground=1), tmp_path / "run")
    new = write_lv_png_folder(tmp_path / "new", 2, foreground=None)
    written = predict(run, new, tmp_path / "pred", split="all", show_progress=False)
    assert len(written) == 2
    for path in written:
        assert set(np.unique(np.asarray(Image.open(path)))) <= {0, 1}
    assert json.loads((run / "config.json").read_text())["mask_coding"]["to_pixel"] == {"0": 0, "1": 1}
    # a folder with masks of its own (0/255) keeps its own coding
    from fewsam.predict import open_for_run

    own = write_lv_png_folder(tmp_path / "own", 3, foreground=255)
    written = predict(run, own, tmp_path / "pred_own", split="all", show_progress=False)
    values = set().union(*(np.unique(np.asarray(Image.open(p))).tolist() for p in written))
    assert values <= {0, 255} and open_for_run(own, json.loads((run / "config.json").read_text())
                                               ).style.to_pixel == {0: 0, 1: 255}


def test_a_studio_fit_of_colour_images_keeps_the_datasets_mask_coding(tmp_path):
    """The studio fits colour images from a PNG copy of the labelled slices whose masks held class
    indices: the run kept 0/1 as its coding, and predicted new images of a 0/255 dataset as 0/1."""
    from fewsam.studio.project import Project

    data, rng = tmp_path / "data", np.random.default_rng(0)
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB").save(data / "images" / f"{name}.png")
        Image.fromarray(np.pad(np.full((6, 8), 255, np.uint8), ((3, 11), (4, 12)))).save(data / "masks" / f"{name}.png")
    project = Project(data, tmp_path / "project")
    label = np.zeros((20, 24), np.uint8)
    label[2:9, 5:15] = 1
    project.save_slice("images/a", 0, label)
    project.write_fit_dataset(tmp_path / "fit")
    fit_data = open_dataset(tmp_path / "fit")
    assert fit_data.mask_coding()["to_pixel"] == {"0": 0, "1": 255}
    np.testing.assert_array_equal(fit_data.load(fit_data.split("all")[0]).label[0], label)


@pytest.mark.parametrize("images, masks", [
    (["a.png", "b.png"], {"a.png": "a_mask.png"}),  # BUSI-style pairs; b has no mask yet
    (["images/a.png", "images/b.png"], {"images/a.png": "masks/a.png"}),
])
def test_a_studio_export_reads_back_as_the_same_dataset_with_the_same_labels(tmp_path, images, masks):
    from fewsam.studio.project import EXPORT_MANIFEST, Project

    data, rng = tmp_path / "data", np.random.default_rng(0)
    for name in images:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(data / name)
    for name in masks.values():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.pad(np.full((6, 8), 255, np.uint8), ((3, 11), (4, 12)))).save(data / name)
    project = Project(data, tmp_path / "project")
    drawn = {}
    for i, case_id in enumerate(project.case_ids()):
        drawn[case_id] = np.zeros((20, 24), np.uint8)
        drawn[case_id][2 + i:9 + i, 5:15] = 1
        project.save_slice(case_id, 0, drawn[case_id])
    export = Path(project.export()["folder"])
    back = tmp_path / "back"  # the images, with the export's files beside them
    for name in images:
        (back / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / name, back / name)
    shutil.copytree(export, back, dirs_exist_ok=True, ignore=shutil.ignore_patterns(EXPORT_MANIFEST))
    read = open_dataset(back)
    assert sorted(read.entries) == sorted(drawn)
    for case_id, label in drawn.items():
        np.testing.assert_array_equal(read.load(case_id).label[0], label)


def unlabelled_volumes(root: Path, layout: str) -> Path:
    """Two phantom volumes without labels: nnU-Net's imagesTr/, a plain images/ folder, or DICOM series."""
    nn = write_phantom_dataset(root / "nn", n_train=2, n_val=0, slices=2)
    shutil.rmtree(nn / "labelsTr")
    (nn / "splits_final.json").unlink()
    if layout == "nnunet":
        return nn
    data = root / layout
    if layout == "plain":
        (data / "images").mkdir(parents=True)
        for path in (nn / "imagesTr").iterdir():
            shutil.copy(path, data / "images" / path.name.replace("_0000", ""))
    else:
        from test_dicom import write_series

        for i, path in enumerate(sorted((nn / "imagesTr").iterdir())):
            volume = (np.asarray(nib.load(path).dataobj).transpose(2, 1, 0) * 1000).astype(np.int16)
            write_series(data / "images" / f"p{i}" / "ct", volume, uid=f"1.2.3.{i}")
    (data / "classes.json").write_text('{"1": "RV", "2": "Myo", "3": "LV"}')
    return data


@pytest.mark.parametrize("layout", ["nnunet", "plain", "dicom"])
def test_a_studio_export_of_volumes_reads_back_as_their_labels(tmp_path, layout):
    """Volume labels were exported flat as <case>.nii.gz, where no reader looks for labels: they are
    named labelsTr/<case>.nii.gz (nnU-Net), labels/<case>.nii.gz, labels/<patient>/<series>.nii.gz (DICOM)."""
    from fewsam.studio.project import EXPORT_MANIFEST, Project

    data = unlabelled_volumes(tmp_path, layout)
    project = Project(data, tmp_path / "project")
    case_id = project.case_ids()[0]
    drawn = np.zeros(project.load_case(case_id).image.shape[1:3], np.uint8)
    drawn[2:9, 5:15] = 2
    project.save_slice(case_id, 1, drawn)
    back = tmp_path / "back"
    shutil.copytree(data, back)
    shutil.copytree(project.export()["folder"], back, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(EXPORT_MANIFEST))
    read = open_dataset(back)
    assert read.has_label(case_id)
    np.testing.assert_array_equal(read.load(case_id).label[1], drawn)


@pytest.mark.parametrize("layout", ["{c}/{c}_trans.nii.gz", "{c}/{c}_seg.nii.gz", "{c}_seg.nii.gz",
                                    "{c}_0000/{c}_0000_trans.nii.gz", "{c}/{c}_seg.nii"])
def test_evaluate_finds_predictions_named_by_monai_save_image(tmp_path, layout):
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=2, slices=2, seed=2)
    val = open_dataset(data).split("val")
    pred = tmp_path / "pred"
    for cid in val:
        target = pred / layout.format(c=cid)
        target.parent.mkdir(parents=True, exist_ok=True)
        label = nib.load(data / "labelsTr" / f"{cid}.nii.gz")
        nib.save(label, target)  # MONAI writes through nibabel or ITK: either reads back on the grid
    assert evaluate(pred, data, split="val", show_progress=False)["mean"]["dice"] == pytest.approx(1.0)
    other = layout.replace("_seg", "_x").replace("_trans", "_seg").replace("_x", "_trans")  # the other postfix
    second = pred / other.format(c=val[0])
    shutil.copy(data / "labelsTr" / f"{val[0]}.nii.gz", second)  # a second file named as MONAI names it
    with pytest.raises(DataError, match=rf"two predictions for case {val[0]}: "):
        evaluate(pred, data, split="val", show_progress=False)


def test_a_prediction_named_as_fewsam_names_it_is_scored_before_a_monai_name_and_the_other_said(tmp_path, caplog):
    """Cases x and x_seg: x_seg.nii.gz is x_seg's own prediction, not a second one of x."""
    import logging

    from fewsam import progress

    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=2, slices=2, seed=2)
    val = open_dataset(data).split("val")
    (tmp_path / "pred").mkdir()
    for cid in val:
        shutil.copy(data / "labelsTr" / f"{cid}.nii.gz", tmp_path / "pred" / f"{cid}.nii.gz")
    empty = nib.load(data / "labelsTr" / f"{val[0]}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(empty.shape, np.uint8), empty.affine), tmp_path / "pred" / f"{val[0]}_seg.nii.gz")
    progress._said.clear()
    with caplog.at_level(logging.INFO, logger="fewsam"):
        result = evaluate(tmp_path / "pred", data, split="val", show_progress=False)
    assert result["mean"]["dice"] == pytest.approx(1.0)
    assert f"case {val[0]} is scored on {val[0]}.nii.gz, not on {val[0]}_seg.nii.gz" in caplog.text


def test_finding_thousands_of_predictions_in_one_folder_lists_it_once(tmp_path):
    """Each case's lookup of the other tools' names listed its whole folder: 3,000 PNG predictions took
    15 s to find, 10,000 npz files minutes. A settled folder is listed once; a fresh one still sees a
    file added right after a lookup."""
    import os
    import time

    from fewsam.data.writers import _as_found

    pred = tmp_path / "pred"
    pred.mkdir()
    for i in range(3000):
        (pred / f"case{i}.png").write_bytes(b"")
    os.utime(pred, (time.time() - 60, time.time() - 60))
    start = time.perf_counter()
    assert all(_as_found(pred / f"case{i}.png", str(i)).name == f"case{i}.png" for i in range(3000))
    assert time.perf_counter() - start < 5
    assert not _as_found(pred / "new.png").is_file()
    (pred / "new.png").write_bytes(b"")
    assert _as_found(pred / "new.png").is_file()


SPLIT = "; give a split (train, val, test, ...) or a list file"


@pytest.mark.parametrize("args, says", [
    (["predict", "run", "--data", "d", "--out", ""], "fewsam predict: --out is empty"),
    (["predict", "run", "--data", "d", "--out="], "fewsam predict: --out is empty"),
    (["evaluate", "--pred", "", "--data", "d"], "fewsam evaluate: --pred is empty"),
    (["evaluate", "--pred", "p", "--data", "d", "--json", ""], "fewsam evaluate: --json is empty"),
    (["fit", "supervised", "--data", "", "--out", "r", "--labeled-cases", "1"],
     "fewsam fit supervised: --data is empty"),
    (["fit", "fewshot", "--data", "d", "--out", "r", "--cache", ""], "fewsam fit fewshot: --cache is empty"),
    (["report", "a.json", "", "--out", "r"], "fewsam report: EVALUATIONS is empty"),
    (["info", ""], "fewsam info: DATA is empty"),
    # ``--split "$SPLIT"`` with the variable unset was read as the option left out: evaluate scored 'val', unsaid
    (["evaluate", "--pred", "p", "--data", "d", "--split", ""], "fewsam evaluate: --split is empty ('')" + SPLIT),
    (["predict", "run", "--data", "d", "--out", "o", "--split= "], "fewsam predict: --split is empty (' ')" + SPLIT),
    (["fit", "fewshot", "--data", "d", "--out", "r", "--val-split", ""],
     "fewsam fit fewshot: --val-split is empty ('')" + SPLIT),
    (["fit", "fewmatch", "--data", "d", "--out", "r", "--unlabeled-split", ""],
     "fewsam fit fewmatch: --unlabeled-split is empty ('')" + SPLIT),
])
def test_an_empty_path_or_split_is_a_usage_error_not_a_default(args, says, capsys, tmp_path, monkeypatch):
    from fewsam.cli import run_app

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        run_app(args)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), lines
    assert list(tmp_path.iterdir()) == []  # nothing written in the working folder


def test_the_python_api_refuses_an_empty_path(tmp_path):
    from fewsam.config import ConfigError

    with pytest.raises(ConfigError, match="out must be a path, not ''"):
        predict(tmp_path, tmp_path, "")
    with pytest.raises(ConfigError, match=r"^run \(--out\) must be a path, not ''"):
        api.FitOptions(data=tmp_path, run="")


def test_a_cut_off_overlay_is_never_left_in_place(tmp_path, monkeypatch):
    from fewsam.report import save_overlay

    def cut_off(image, fp, *args, **kwargs):
        (fp.write if hasattr(fp, "write") else Path(fp).write_bytes)(b"\x89PNG half")
        raise KeyboardInterrupt  # Ctrl-C while the file is written

    monkeypatch.setattr(Image.Image, "save", cut_off)
    path = tmp_path / "overlays" / "c_z00.png"
    with pytest.raises(KeyboardInterrupt):
        save_overlay(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8), None, path)
    assert not path.exists()


def test_a_demo_stopped_while_drawing_overlays_is_not_taken_for_a_finished_one(tmp_path, monkeypatch):
    from fewsam import demo

    monkeypatch.setattr(demo, "write_phantom_dataset", lambda data: None)
    for step in ("fit", "predict"):
        monkeypatch.setattr(demo, step, lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "evaluate", lambda *args, **kwargs: {"n_cases": 1})

    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_write_overlays", stopped)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(tmp_path / "demo", show_progress=False)
    assert not (tmp_path / "demo" / "eval.json").exists()


def test_a_phantom_stopped_before_its_splits_is_not_taken_for_a_whole_one(tmp_path, monkeypatch):
    from fewsam.data import phantom

    def stopped_at_the_splits(value, **kwargs):
        if isinstance(value, list):  # splits_final.json's content
            raise KeyboardInterrupt
        return json.dumps(value, **kwargs)

    monkeypatch.setattr(phantom, "json", type("J", (), {"dumps": staticmethod(stopped_at_the_splits)}))
    with pytest.raises(KeyboardInterrupt):
        phantom.write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2)
    assert not (tmp_path / "data" / "dataset.json").exists()  # the demo writes the phantom again


def test_a_run_folder_inside_the_data_folder_is_refused_before_anything_is_written(tmp_path):
    from fewsam.errors import RunError

    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    opts = api.FitOptions(data=data, run=data / "runs" / "r1", labeled_cases=1, cache=str(tmp_path / "cache"),
                          show_progress=False)
    with pytest.raises(RunError, match="is inside the data folder"):
        api.fit("supervised", opts, supervised.SupervisedConfig(**TINY_STUDENT))
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
