"""Files and settings as users bring them, odd but valid or plainly mistaken: valid ones are read as
their values say and get predictions in their own coding; mistakes end in one line naming the file
or entry to fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewsam.data import open_dataset, write_prediction


def busi_folder(root: Path, foreground: int, dtype: type = np.uint8) -> Path:
    """BUSI's layout (``benign/`` and ``malignant/``, ``X.png`` + ``X_mask.png``) with masks whose
    lesion is stored as ``foreground``: many converters save BUSI's masks as 0/1."""
    rng = np.random.default_rng(0)
    for pathology in ("benign", "malignant"):
        (root / pathology).mkdir(parents=True)
        for i in range(1, 3):
            mask = np.zeros((20, 24), dtype)
            mask[5:10, 4 + i:12 + i] = foreground
            Image.fromarray(rng.integers(0, 255, mask.shape, dtype=np.uint8)).save(root / pathology / f"{pathology} ({i}).png")
            Image.fromarray(mask).save(root / pathology / f"{pathology} ({i})_mask.png")
    return root


@pytest.mark.parametrize("foreground, dtype", [(1, np.uint8), (255, np.uint8), (65535, np.uint16)])
def test_busi_masks_get_predictions_in_the_value_they_store_the_lesion_as(tmp_path, foreground, dtype):
    """BUSI's own masks are 0/255; a copy converted to 0/1 (or saved 16-bit) was written predictions in 0/255,
    which the user's comparison with their masks reads as no match."""
    ds = open_dataset(busi_folder(tmp_path / "busi", foreground, dtype))
    case = ds.load("benign/benign (1)")
    written = np.asarray(Image.open(write_prediction(case, case.label, tmp_path / "pred")))
    stored = np.asarray(Image.open(tmp_path / "busi" / "benign" / "benign (1)_mask.png"))
    np.testing.assert_array_equal(written, stored)
