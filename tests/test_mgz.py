"""FreeSurfer's MGH volumes (``.mgz``, ``.mgh``) are read as NIfTI is, through nibabel, and a case read
from one gets its prediction back as ``.mgz`` on the image's affine and header."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fewsam.data import open_dataset
from fewsam.data.writers import read_prediction, write_prediction

AFFINE = np.array([[-1.0, 0, 0, 10], [0, 0, 1.5, -20], [0, -1.2, 0, 30], [0, 0, 0, 1]])  # FreeSurfer's LIA-like
SHAPE = (8, 6, 4)  # x, y, z


def _write_mgh(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.MGHImage(array, AFFINE), str(path))


def _case_arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random(SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:5, 1:4, 1:3] = 17  # aseg values (17: left hippocampus) stay below 256
    return image, label


@pytest.mark.parametrize("layout", ["folders", "side_by_side"])
@pytest.mark.parametrize("ending", [".mgz", ".mgh"])
def test_mgh_case_reads_and_its_prediction_is_mgz_on_the_image_grid(tmp_path, layout, ending):
    image, label = _case_arrays()
    if layout == "folders":
        _write_mgh(tmp_path / "images" / f"a{ending}", image)
        _write_mgh(tmp_path / "labels" / f"a{ending}", label)
    else:
        _write_mgh(tmp_path / f"a{ending}", image)
        _write_mgh(tmp_path / f"a_seg{ending}", label)

    dataset = open_dataset(tmp_path)
    assert list(dataset.entries) == ["a"]
    case = dataset.load("a")
    np.testing.assert_allclose(case.image, image.transpose(2, 1, 0), rtol=1e-6)
    np.testing.assert_array_equal(case.label, label.transpose(2, 1, 0))
    assert dict(dataset.class_map.names) == {17: "class17"}
    assert case.rel_path == "a.mgz"

    written = write_prediction(case, case.label, tmp_path / "pred")
    assert written.name == "a.mgz"
    back = nib.load(str(written))
    assert isinstance(back, nib.MGHImage)
    assert back.shape == SHAPE
    np.testing.assert_allclose(back.affine, AFFINE, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back.dataobj), label)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), case.label)
