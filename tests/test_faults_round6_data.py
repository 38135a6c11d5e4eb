"""Data folders, list files and prediction folders as users bring them from other tools: folders that
Jupyter, desktops and macOS keep below the data, list files naming cases by their image files (nnU-Net's
``_0000`` names, absolute paths, MONAI's JSON datalists), predictions written into the data folder or by
another tool (``.mha``, other names), an image and mask of different sizes, masks without an image, and
reports of runs scored on different cases.
"""

from __future__ import annotations

import json
import logging
import shutil
import unicodedata
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from fewsam import progress
from fewsam.data import open_dataset
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import DataError, RunError
from fewsam.evaluate import evaluate
from fewsam.predict import predict
from fewsam.report import write_group_report
from test_dicom import write_series
from test_formats_end_to_end import run  # noqa: F401 - the fixture: a 2-step supervised run, no SAM weights


@pytest.fixture
def notices(caplog, monkeypatch):
    """What ``say_once`` tells the user during a test (as if the process had said nothing yet)."""
    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level(logging.INFO, logger="fewsam")
    return caplog


def image_mask_folder(root: Path, names: list[str], shape: tuple[int, int] = (20, 24)) -> Path:
    """``images/<name>.png`` + ``masks/<name>.png`` (0/255) for each name."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros(shape, np.uint8)
    mask[3:9, 4:12] = 255
    for name in names:
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


# ---------------------------------------------------------------- folders tools keep below the data


def test_images_in_folders_that_tools_keep_below_the_data_are_not_cases(tmp_path):
    """Jupyter's checkpoint copies, a desktop's trash on a USB drive and macOS's zip metadata were cases."""
    root = image_mask_folder(tmp_path / "data", ["c0", "c1", "c2"])
    picture = np.zeros((20, 24), np.uint8)
    for junk in ("images/.ipynb_checkpoints/c0-checkpoint.png", ".Trash-1000/files/old.png", "__MACOSX/images/c1.png"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(root / junk)
    assert open_dataset(root).split("all") == ["images/c0", "images/c1", "images/c2"]


def test_a_dicom_series_in_a_hidden_folder_is_not_a_case(tmp_path):
    series = (np.arange(3 * 8 * 9).reshape(3, 8, 9) % 50).astype(np.int16)
    write_series(tmp_path / "data" / "patient1" / "cine", series)
    write_series(tmp_path / "data" / ".Trash-1000" / "files" / "patient2" / "cine", series)
    assert open_dataset(tmp_path / "data").split("all") == ["patient1/cine"]


# ---------------------------------------------------------------- pairs and masks


def test_an_image_and_mask_of_different_sizes_are_both_named(tmp_path):
    root = image_mask_folder(tmp_path / "data", ["c0", "c1"])
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "c1.png")
    with pytest.raises(DataError, match=r"differ for image .*images/c1.png and label .*masks/c1.png: "
                                        r"image \(1, 20, 24\), label \(1, 10, 12\)"):
        open_dataset(root).load("images/c1")


def test_a_mask_without_an_image_of_its_name_is_said(tmp_path, notices):
    """images/c 1.png beside masks/c1.png: the mask was left out and its image unlabelled, unsaid."""
    root = image_mask_folder(tmp_path / "data", ["c0", "c1", "c2"])
    (root / "images" / "c1.png").rename(root / "images" / "c 1.png")
    ds = open_dataset(root)
    assert not ds.has_label("images/c 1")
    assert "1 mask(s) have no image of their name and are left out: masks/c1.png" in notices.text


def test_masks_paired_with_their_images_say_nothing(tmp_path, notices):
    open_dataset(image_mask_folder(tmp_path / "data", ["c0", "c1"]))
    assert "no image of their name" not in notices.text
