"""Readers' wrong answers on files as users give them: a retinal test folder's field-of-view masks, cine
DICOM's time points, 16-bit mask codings, 2D NRRD headers and ITK-SNAP labels of flipped NIfTI images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewsam.data import open_dataset


def fundus_test_folder(root: Path, n: int = 2) -> Path:
    """DRIVE's ``test/`` alone: photographs dark outside the camera's round field of view (images/), and
    that field of view as a mask per image (mask/), without the drawn vessels (1st_manual/)."""
    yy, xx = np.mgrid[:16, :18]
    field = (yy - 7.5) ** 2 + (xx - 8.5) ** 2 < 7.5 ** 2
    for d in ("images", "mask"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        photo = (np.random.default_rng(i).random((16, 18, 3)) * 200 + 40).astype(np.uint8) * field[..., None]
        Image.fromarray(photo).save(root / "images" / f"{i:02d}_test.tif")
        Image.fromarray(field.astype(np.uint8) * 255).save(root / "mask" / f"{i:02d}_test_mask.gif")
    return root


def test_a_drive_test_folder_alone_has_no_labels_its_field_of_view_masks_are_not_read(tmp_path, caplog):
    caplog.set_level("INFO", logger="fewsam")
    ds = open_dataset(fundus_test_folder(tmp_path / "test"))
    assert list(ds.entries) == ["images/01_test", "images/02_test"]
    assert not any(map(ds.has_label, ds.entries))
    assert "its masks mark each picture's field of view" in caplog.text


def test_a_large_lesion_mask_in_mask_folder_stays_a_label(tmp_path):
    """A label covering most of a picture that is bright around it is no field of view."""
    for d in ("images", "mask"):
        (tmp_path / d).mkdir()
    label = np.zeros((16, 18), np.uint8)
    label[1:15, 1:16] = 255
    for name in ("a", "b"):
        Image.fromarray(np.full((16, 18), 120, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray(label).save(tmp_path / "mask" / f"{name}.png")
    ds = open_dataset(tmp_path)
    assert all(map(ds.has_label, ds.entries))
