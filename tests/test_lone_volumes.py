"""A folder holding one volume file is one image case to predict on, whatever its format; files and
folders named as labels stay labels. Also: the terminal line of a grouped evaluation shows the
95% bootstrap intervals of ES-Dice and of the worst-group gap where the report has them."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fewsam import progress
from fewsam.data import open_dataset
from fewsam.errors import DataError
from fewsam.predict import predict
from test_formats_end_to_end import run  # noqa: F401 - the fixture: a 2-step supervised run, no SAM weights

ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii.gz", ".nii")


@pytest.fixture
def notices(caplog, monkeypatch):
    """What ``say_once`` tells the user during a test (as if the process had said nothing yet)."""
    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level(logging.INFO, logger="fewsam")
    return caplog


def write_volume(path: Path, shape: tuple[int, int, int] = (3, 16, 20), label: bool = False) -> np.ndarray:
    """A tiny (z, y, x) volume at ``path``, through nibabel for NIfTI names and SimpleITK for the others."""
    rng = np.random.default_rng(0)
    array = (rng.random(shape) > 0.5).astype(np.uint8) if label else rng.random(shape).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith((".nii", ".nii.gz")):
        nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.eye(4)), str(path))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return array


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_lone_volume_is_one_image_case_and_no_stray_label(tmp_path, notices, ending):
    write_volume(tmp_path / f"a{ending}")
    dataset = open_dataset(tmp_path)
    assert list(dataset.entries) == ["a"] and not dataset.has_any_label()
    assert dataset.split("val") == ["a"]
    assert dataset.load("a").image.shape == (3, 16, 20)
    assert "match no image" not in notices.text


def test_beside_an_image_only_the_unpaired_label_is_named(tmp_path, notices):
    write_volume(tmp_path / "a.nrrd")
    write_volume(tmp_path / "b_seg.nrrd", label=True)
    dataset = open_dataset(tmp_path)
    assert list(dataset.entries) == ["a"]
    line = next(r.getMessage() for r in notices.records if "match no image" in r.getMessage())
    assert "1 label file(s)" in line and "(b_seg.nrrd)" in line


@pytest.mark.parametrize("label_file", ["a_seg.nrrd", "labels/a.nrrd", "masks/a.nii.gz"])
def test_a_lone_label_stays_a_label_and_is_refused_naming_it(tmp_path, label_file):
    write_volume(tmp_path / label_file, label=True)
    with pytest.raises(DataError, match=rf"holds label files only \({label_file}: named as labels"):
        open_dataset(tmp_path)


def test_a_lone_volume_is_predicted(run, tmp_path, notices):  # noqa: F811
    data = tmp_path / "data"
    write_volume(data / "a.mha", shape=(2, 64, 72))
    written = predict(run, data, tmp_path / "pred", show_progress=False)
    assert [p.name for p in written] == ["a.mha"]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(written[0]))).shape == (2, 64, 72)
    assert "match no image" not in notices.text
