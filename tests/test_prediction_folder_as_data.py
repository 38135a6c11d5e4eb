"""A folder of predictions given as data (``fewsam info PRED``, ``evaluate --data PRED``) is named as one, by
what the prediction tool left beside its predictions: read as data, its label maps were images to segment.
A dataset holding a ``dataset.json``, or a prediction folder that no reader enters, is still data."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewsam.data import open_dataset, write_prediction
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import DataError
from fewsam.runs import PREDICT_LOG
from conftest import assert_one_line_error, run_fewsam

NNUNET_OUTPUT_FILES = ("plans.json", "dataset.json", "predict_from_raw_data_args.json")


def fewsam_predictions(data: Path, out: Path) -> Path:
    """``out`` as ``fewsam predict`` leaves it: a prediction per case of ``data`` and its predict.log."""
    dataset = open_dataset(data)
    for case_id in dataset.split("all"):
        case = dataset.load(case_id)
        write_prediction(case, np.zeros(case.image.shape[:3], np.uint8), out)
    (out / PREDICT_LOG).write_text("fewsam predict RUN --data DATA --out PRED\ndone: predictions\n", encoding="utf-8")
    return out


def picture_folder(root: Path, names: list[str]) -> Path:
    """``images/<name>.png`` + ``masks/<name>.png``: a 2D dataset read whole."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((16, 20), np.uint8)
    mask[3:9, 4:12] = 255
    for name in names:
        Image.fromarray(rng.integers(0, 256, (16, 20)).astype(np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


@pytest.fixture
def phantom(tmp_path) -> Path:
    return write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2, seed=3)


def test_fewsams_volume_predictions_given_as_data_are_named_as_predictions(phantom, tmp_path):
    pred = fewsam_predictions(phantom, tmp_path / "pred")
    expected = (rf"{re.escape(str(pred))} is a folder of predictions \(predict.log of `fewsam predict`\), not data; "
                r"give the data folder as --data and this folder as --pred")
    with pytest.raises(DataError, match=expected):
        open_dataset(pred)


def test_fewsams_png_masks_given_as_data_are_named_as_predictions(tmp_path):
    pred = fewsam_predictions(picture_folder(tmp_path / "data", ["c0", "c1"]), tmp_path / "pred")
    assert any(pred.rglob("*.png"))
    with pytest.raises(DataError, match=r"is a folder of predictions \(predict.log of `fewsam predict`\)"):
        open_dataset(pred)


@pytest.mark.parametrize("files, found", [
    (NNUNET_OUTPUT_FILES, "nnU-Net's predict_from_raw_data_args.json"),
    (("plans.json", "dataset.json"), "nnU-Net's plans.json and dataset.json"),
])
def test_nnunet_predictions_given_as_data_are_named_as_predictions(phantom, tmp_path, files, found):
    """nnUNetv2_predict writes <case>.nii.gz flat, beside its plans, dataset.json and arguments."""
    pred = tmp_path / "nnunet_pred"
    pred.mkdir()
    for label in (phantom / "labelsTr").iterdir():
        shutil.copy(label, pred / label.name)
    for name in files:
        (pred / name).write_text(json.dumps({}), encoding="utf-8")
    with pytest.raises(DataError, match=rf"is a folder of predictions \({found}\), not data"):
        open_dataset(pred)


def test_an_nnunet_raw_dataset_with_its_prediction_folder_inside_is_still_data(phantom):
    """dataset.json alone is a raw dataset's; DATA/imagesTs_pred (nnU-Net users' habit) is no reader's folder."""
    fewsam_predictions(phantom, phantom / "imagesTs_pred")
    assert open_dataset(phantom).split("all") == ["phantom_000", "phantom_001"]


def test_a_prediction_folder_inside_a_folder_read_whole_is_named_where_its_files_became_cases(tmp_path):
    data = picture_folder(tmp_path / "data", ["c0", "c1"])
    shutil.copytree(data / "masks", data / "preds" / "images")
    (data / "preds" / PREDICT_LOG).write_text("done\n", encoding="utf-8")
    expected = (rf"{re.escape(str(data / 'preds'))} inside the data folder {re.escape(str(data))} is a folder of "
                r"predictions \(predict.log of `fewsam predict`\), and its files were read as cases")
    with pytest.raises(DataError, match=expected):
        open_dataset(data)


def test_fewsam_info_on_a_prediction_folder_says_so_in_one_line(phantom, tmp_path):
    pred = fewsam_predictions(phantom, tmp_path / "pred")
    result = run_fewsam("info", str(pred), cwd=tmp_path)
    assert_one_line_error(result, f"{pred} is a folder of predictions (predict.log of `fewsam predict`), not data; "
                                  f"give the data folder as --data and this folder as --pred: "
                                  f"`fewsam evaluate --data DATA --pred {pred}`")
