"""A folder holding one volume file is one image case to predict on, whatever its format; files and
folders named as labels stay labels. Also: the terminal line of a grouped evaluation shows the
95% bootstrap intervals of ES-Dice and of the worst-group gap where the report has them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fewsam.data import open_dataset
from fewsam.errors import DataError
from fewsam.predict import predict
from conftest import write_png_cases
from test_formats_end_to_end import run  # noqa: F401 - the fixture: a 2-step supervised run, no SAM weights

ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii.gz", ".nii")


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


# ---------------------------------------------------------------- intervals on the grouped evaluation line


def grouped_evaluation_output(tmp_path: Path, cases: dict) -> tuple[str, dict]:
    """(terminal output, JSON) of ``fewsam evaluate --group-by site`` on generated PNG cases."""
    from typer.testing import CliRunner

    from fewsam.cli import app

    label = np.zeros((10, 10), np.uint8)
    label[:2] = 1
    half = np.zeros((10, 10), np.uint8)
    half[0] = 1
    root, pred = write_png_cases(tmp_path, label, {name: ({"site": site}, label if good else half)
                                                   for name, (site, good) in cases.items()})
    saved = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--data", str(root), "--split", "test",
                                      "--group-by", "site", "--json", str(saved), "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(saved.read_text(encoding="utf-8"))


def test_the_grouped_line_shows_the_intervals_of_es_dice_and_the_gap_where_the_report_has_them(tmp_path):
    output, saved = grouped_evaluation_output(tmp_path / "two", {"a1": ("A", True), "a2": ("A", False),
                                                                 "b1": ("B", False), "b2": ("B", False)})
    (es_lo, es_hi), (gap_lo, gap_hi) = saved["es_dice_ci95"], saved["worst_group_gap_ci95"]
    line = next(ln for ln in output.splitlines() if ln.startswith("ES-Dice"))
    assert line.startswith(f"ES-Dice {saved['es_dice']:.4f} [{es_lo:.3f}, {es_hi:.3f}]  ES-IoU ")
    assert f"worst-group gap {saved['worst_group_gap']:.4f} [{gap_lo:.3f}, {gap_hi:.3f}] (alpha" in line
    assert len(line) <= 110
    # a group of one subject has no spread to draw: the intervals are null, and the line shows none
    output, saved = grouped_evaluation_output(tmp_path / "one", {"a1": ("A", True), "a2": ("A", False),
                                                                 "b1": ("B", False)})
    assert saved["es_dice_ci95"] is None and saved["worst_group_gap_ci95"] is None
    line = next(ln for ln in output.splitlines() if ln.startswith("ES-Dice"))
    assert line.startswith(f"ES-Dice {saved['es_dice']:.4f}  ES-IoU ") and "[" not in line
