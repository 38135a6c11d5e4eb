"""``fewsam info DATA``: layout, classes, splits, attributes and defaults, without loading a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.data.phantom import write_phantom_dataset
from fewsam.info import dataset_info

from conftest import shared_data


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("info") / "phantom", n_train=4, n_val=2, slices=6)


def test_phantom(phantom):
    info = dataset_info(phantom)
    assert info["layout"] == "nifti" and info["format"] == "nifti"
    assert [(c["value"], c["name"], c["stored_as"]) for c in info["classes"]] == [
        (0, "background", 0), (1, "RV", 1), (2, "Myo", 2), (3, "LV", 3)]
    assert info["splits"]["train"] == {"cases": 4, "slices": 24, "labelled": 4}
    assert info["splits"]["val"] == {"cases": 2, "slices": 12, "labelled": 2}
    assert info["attributes"]["columns"] == {}
    defaults = info["defaults"]
    assert defaults["predict"] == {"split": "val", "cases": 2, "slices": 12, "labelled": 2}
    assert defaults["evaluate"]["split"] == "val" and defaults["fit"]["val_split"] == "val"
    assert defaults["fit"]["budget_order"] == {"slices": 24, "subjects": 4, "first": "phantom_000:0"}


def test_cli_text_and_json(phantom, tmp_path):
    result = CliRunner().invoke(app, ["info", str(phantom), "--json", str(tmp_path / "info.json")])
    assert result.exit_code == 0, result.output
    assert "layout   nifti" in result.output
    assert "1 RV (stored as 1)" in result.output
    assert "val            2 cases, 12 slices, 2 labelled" in result.output
    assert "predict   split 'val' when --split is omitted: 2 cases" in result.output
    assert json.loads((tmp_path / "info.json").read_text()) == dataset_info(phantom)


def test_existing_json_needs_overwrite(phantom, tmp_path):
    target = tmp_path / "info.json"
    target.write_text("mine")
    env = dict(os.environ, FEWSAM_NO_REEXEC="1")
    refused = subprocess.run([sys.executable, "-m", "fewsam", "info", str(phantom), "--json", str(target)],
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("error: --json") and "--overwrite" in refused.stderr
    assert target.read_text() == "mine"
    assert CliRunner().invoke(app, ["info", str(phantom), "--json", str(target), "--overwrite"]).exit_code == 0
    assert json.loads(target.read_text())["layout"] == "nifti"


def test_no_model_and_no_torch(phantom):
    """info reads headers only: torch is never imported, so it answers in a second."""
    code = ("import sys; from typer.testing import CliRunner; from fewsam.cli import app; "
            f"r = CliRunner().invoke(app, ['info', {str(phantom)!r}]); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_acdc():
    info = dataset_info(shared_data("acdc"))
    assert info["layout"] == "acdc-h5" and [c["name"] for c in info["classes"]] == ["background", "RV", "Myo", "LV"]
    splits = info["splits"]
    assert splits["train"] == {"cases": 1312, "slices": 1312, "labelled": 1312}
    assert splits["val"]["cases"] == 20 and splits["val"]["slices"] > 20
    assert "train.list names 140 case(s) with no file" in splits["train_volumes"]["error"]
    columns = info["attributes"]["columns"]
    assert columns["group"]["kind"] == "text" and columns["group"]["values"] == ["DCM", "HCM", "MINF", "NOR", "RV"]
    assert columns["bmi"]["kind"] == "numeric" and columns["bmi"]["default_bins"] == ["<25", "25-30", ">=30"]
    budget = info["defaults"]["fit"]["budget_order"]
    assert budget["slices"] == 1312 and budget["subjects"] == 70
    assert budget["first"].startswith("patient099_")
    assert info["defaults"]["predict"]["cases"] == 20


def test_a_dataset_without_val_says_which_split_to_give():
    info = dataset_info(shared_data("multisite") / "Fundus")
    assert [c["stored_as"] for c in info["classes"]] == [255, 128, 0]
    assert "no 'val' split; pass --split with one of test, train, all" in info["defaults"]["predict"]["error"]
    assert "pass --val-split" in info["defaults"]["fit"]["val"]["error"]


def test_a_2d_nnunet_set_is_said_to_get_png_predictions(tmp_path):
    """``info`` said an nnU-Net set of PNGs gets <case>.nii.gz predictions; predict writes <case>.png."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "Dataset003"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    mask = np.zeros((8, 9), np.uint8)
    mask[2:5, 3:7] = 1
    Image.fromarray(mask * 200).save(root / "imagesTr" / "a_0000.png")
    Image.fromarray(mask).save(root / "labelsTr" / "a.png")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "x"}, "labels": {"background": 0, "a": 1},
                                                   "numTraining": 1, "file_ending": ".png"}))
    assert ".png, .tif for a 2D set's" in dataset_info(root)["storage"]
