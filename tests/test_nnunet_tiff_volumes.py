"""nnU-Net datasets of 3D (multi-page) TIFF volumes, as nnU-Net's ``Tiff3DIO`` reads and writes them: TIFF keeps
no slice spacing, so each volume's spacing is in a JSON file beside it (``imagesTr/<case>.json`` for the channel
files ``<case>_0000.tif``, ``labelsTr/<case>.json`` for the label, ``{"spacing": [z, y, x]}`` in the order of the
pages, rows and columns). Volumes are read on that spacing, and a prediction gets its ``<case>.json`` beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewsam.data import open_dataset, read_prediction, write_prediction
from fewsam.info import dataset_info
from fewsam.predict import case_files, companions

from conftest import assert_one_line_error, run_fewsam

SHAPE = (5, 12, 10)  # pages, rows, columns


def _tiff(path: Path, pages: np.ndarray) -> None:
    frames = [Image.fromarray(page) for page in pages]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def _spacing_file(path: Path, spacing: object) -> None:
    path.write_text(json.dumps({"spacing": spacing}))


def tiff_dataset(root: Path, spacing: list[float], cases: int = 2) -> Path:
    """An nnU-Net set of 3D TIFF volumes and labels, each with nnU-Net's spacing file beside it."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(cases):
        _tiff(root / "imagesTr" / f"case{i}_0000.tif", rng.integers(0, 4000, SHAPE).astype(np.uint16))
        _tiff(root / "labelsTr" / f"case{i}.tif", rng.integers(0, 3, SHAPE).astype(np.uint8))
        _spacing_file(root / "imagesTr" / f"case{i}.json", spacing)
        _spacing_file(root / "labelsTr" / f"case{i}.json", spacing)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "EM"}, "file_ending": ".tif",
                                                   "labels": {"background": 0, "a": 1, "b": 2},
                                                   "numTraining": cases}))
    return root


def test_a_3d_tiff_is_read_on_the_spacing_its_json_gives(tmp_path, notices):
    case = open_dataset(tiff_dataset(tmp_path / "data", [3.0, 0.8, 0.7])).load("case0")
    assert case.spacing == pytest.approx((3.0, 0.8, 0.7))
    assert case.image.shape == SHAPE and case.label.shape == SHAPE
    assert "voxel for voxel" not in notices.text  # the label lies on its image's grid


def test_a_3d_tiff_thickest_along_its_columns_is_cut_along_them(tmp_path):
    """The slice axis follows the spacing: ten slices of 5 x 12 voxels, as nnU-Net's spacing places them."""
    case = open_dataset(tiff_dataset(tmp_path / "data", [0.7, 0.8, 3.0])).load("case0")
    assert case.spacing[0] == pytest.approx(3.0) and sorted(case.spacing[1:]) == pytest.approx([0.7, 0.8])
    assert case.image.shape[0] == SHAPE[2]


def test_a_3d_tiff_prediction_gets_its_spacing_file_and_reads_back_on_its_image(tmp_path, notices):
    case = open_dataset(tiff_dataset(tmp_path / "data", [3.0, 0.8, 0.7])).load("case1")
    written = write_prediction(case, case.label, tmp_path / "pred")
    assert json.loads((tmp_path / "pred" / "case1.json").read_text()) == {"spacing": [3.0, 0.8, 0.7]}
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), case.label)
    assert "voxel for voxel" not in notices.text
    assert case_files(tmp_path / "pred", written.relative_to(tmp_path / "pred"), False, False) == [
        Path("case1.tif"), Path("case1.json")]
    assert "case1.json" in companions(Path("case1.tif"), False)
    assert ".tif and its <case>.json spacing for a 3D TIFF's" in dataset_info(tmp_path / "data")["storage"]


@pytest.mark.parametrize("spacing", [[3.0, 0.8], [3.0, 0.0, 0.7], "3 0.8 0.7", [3.0, "0.8", 0.7]])
def test_a_spacing_file_that_gives_no_spacing_is_refused_naming_it(tmp_path, spacing):
    data = tiff_dataset(tmp_path / "data", [3.0, 0.8, 0.7])
    _spacing_file(data / "imagesTr" / "case0.json", spacing)
    result = run_fewsam("fit", "fewshot", "--data", str(data), "--labeled-cases", "1", "--steps", "1",
                        "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    assert_one_line_error(result, f"{data / 'imagesTr' / 'case0.json'}: 'spacing' must be three voxel sizes")
    assert not (tmp_path / "run").exists()
