"""Files a reader took that were not the dataset's, chatter it let through, and slices it put out of order: a
link inside --data pointing above its root (the parent's other dataset read as this one's), nibabel's header
repairs printed on stderr when a prediction is read back, and a DICOM series without positions or numbers
ordered by its file names as plain text."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fewsam.data import open_dataset
from test_data_path_faults import sform_only_dataset
from test_dicom_series_faults import mr_slice, save_part10


@pytest.fixture
def notices(caplog, monkeypatch):
    """What ``say_once`` tells the user during a test (as if the process had said nothing yet)."""
    from fewsam import progress

    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level(logging.INFO, logger="fewsam")
    return caplog


def png_cases(root: Path, names: list[str]) -> Path:
    """images/NAME.png + masks/NAME.png (8 x 8) for each name, a folder of 2D cases."""
    from PIL import Image

    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((8, 8), 50, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{name}.png")
    return root


# ---------------------------------------------------------------- links inside --data


def test_a_link_above_the_data_root_is_not_walked_and_is_said(tmp_path, notices):
    """data/up -> .. took the parent folder's other dataset (other/images/*.png) as this dataset's cases."""
    data = png_cases(tmp_path / "data", ["a0", "a1"])
    png_cases(tmp_path / "other", ["b0", "b1", "b2"])
    (data / "up").symlink_to("..")
    assert open_dataset(data).split("all") == ["images/a0", "images/a1"]
    said = [r.getMessage() for r in notices.records if "up" in r.getMessage() and "link" in r.getMessage()]
    assert len(said) == 1 and str(data / "up") in said[0]


def test_links_inside_the_tree_and_to_folders_elsewhere_still_read(tmp_path, notices):
    """Images linked in from another disk, as users link large files, stay read, without a note."""
    data = png_cases(tmp_path / "data", ["a0"])
    elsewhere = png_cases(tmp_path / "disk2" / "more", ["e0"])
    (data / "images" / "e0.png").symlink_to(elsewhere / "images" / "e0.png")
    (data / "masks" / "e0.png").symlink_to(elsewhere / "masks" / "e0.png")
    assert open_dataset(data).split("all") == ["images/a0", "images/e0"]
    assert not [r for r in notices.records if "link" in r.getMessage()]


# ---------------------------------------------------------------- nibabel's repairs on reading back


def test_reading_a_prediction_back_says_nibabels_repairs_once_not_on_stderr(tmp_path, notices, monkeypatch):
    """evaluate read each prediction of pixdim 0 with nibabel printing its repair on stderr, once a file."""
    from fewsam.data import prediction_path, read_prediction

    printed = io.StringIO()  # what nibabel's own handler would print on stderr
    for handler in nib.imageglobals.logger.handlers:
        monkeypatch.setattr(handler, "stream", printed)
    case = open_dataset(sform_only_dataset(tmp_path / "data", 1.0)).load("c0")
    path = prediction_path(case, tmp_path / "pred")
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.zeros((6, 6, 3), np.uint8), np.diag([0.5, 0.5, 3.0, 1.0]))
    img.set_qform(None, code=0)
    img.header["pixdim"][1:4] = 0.0
    img.to_filename(path)
    for _ in range(2):
        read_prediction(case, tmp_path / "pred")
    assert printed.getvalue() == ""
    assert [r.getMessage() for r in notices.records if "should be non-zero" in r.getMessage()] == [
        f"{path}: pixdim[1,2,3] should be non-zero; setting 0 dims to 1 (nibabel's repair of its header; said for "
        "the first such file)"]


# ---------------------------------------------------------------- DICOM slices without position or number


def test_dicom_slices_without_position_or_number_are_in_natural_file_order(tmp_path):
    """slice10.dcm came before slice2.dcm: GDCM falls back to the names as plain text."""
    for n in range(1, 13):
        ds = mr_slice(n, (0.0, 0.0, 2.0 * n))
        del ds.ImagePositionPatient, ds.InstanceNumber
        ds.PixelData = np.full((4, 5), n * 10, "<u2").tobytes()
        save_part10(ds, tmp_path / "s" / f"slice{n}.dcm")
    case = open_dataset(tmp_path).load("s")
    assert [int(v) for v in case.image[:, 0, 0]] == [n * 10 for n in range(1, 13)]
