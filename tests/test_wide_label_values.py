"""Label maps whose values are above 255 (MM-WHS's 205-850, FreeSurfer's aseg / aparc+aseg 1000-2035):
their values are their classes, read as they are stored (16-bit), learnt, predicted back in the same
values and scored; values no 16-bit label holds, and more classes than fewsam segments, stay refused."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from conftest import assert_one_line_error, run_fewsam
from test_resume_every_method import TRAINED, fit_command
from fewsam.cli import app
from fewsam.data import open_dataset, write_prediction
from fewsam.data.phantom import phantom_volume
from fewsam.data.types import SliceRef
from fewsam.embedded import EmbeddedSlice, frame_label, frame_region
from fewsam.evaluate import evaluate, label_fingerprint
from fewsam.labels import IGNORE, index_lut, value_lut
from fewsam.methods.fewshot import remap_labels
from fewsam.models.sam import PreprocessInfo

MMWHS = {1: 600, 2: 205, 3: 500}  # the phantom's RV, Myo and LV as MM-WHS numbers them


def wide(label: np.ndarray, coding: dict[int, int] = MMWHS) -> np.ndarray:
    out = np.zeros(label.shape, np.uint16)
    for value, stored in coding.items():
        out[label == value] = stored
    return out


def write_wide_folder(root: Path, cases: int = 3, ending: str = ".nii.gz", slices: int = 2) -> Path:
    """images/ and labels/ of ``cases`` phantom volumes, labels in MM-WHS's values (uint16)."""
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        image, label = phantom_volume(rng, slices, (40, 48))
        for folder, array in (("images", (image * 1000).astype(np.float32)), ("labels", wide(label))):
            path = root / folder / f"case{i}{ending}"
            if ending == ".nii.gz":
                nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.diag([1.5, 1.5, 5.0, 1.0])), path)
            else:
                sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return root


def test_labels_above_255_are_read_as_their_values(tmp_path):
    dataset = open_dataset(write_wide_folder(tmp_path))
    assert dataset.class_map.labels == [205, 500, 600]
    label = dataset.load("case0").label
    assert label.dtype == np.uint16 and set(np.unique(label)) <= {0, 205, 500, 600}
    assert set(np.unique(label)) > {0}


def test_value_and_index_look_ups_reach_16_bit_values():
    values = [0, 205, 500, 2035]
    lut = value_lut(values)
    assert [int(lut[v]) for v in values] == [0, 1, 2, 3] and int(lut[7]) == 0
    back = index_lut(values)
    assert back.dtype == np.uint16 and back.tolist() == values
    assert index_lut([0, 1, 2]).dtype == np.uint8  # narrow labels stay 8-bit, as their files are


def test_a_16_bit_label_fingerprint_keeps_its_values_apart():
    """Cast to 8 bits, 205 and 461 (205 + 256) hashed alike: compare would pair different labels."""
    a, b = np.full((1, 2, 2), 205, np.uint16), np.full((1, 2, 2), 461, np.uint16)
    assert label_fingerprint(a) != label_fingerprint(b)
    assert label_fingerprint(np.ones((1, 2, 2), np.uint8)) == label_fingerprint(np.ones((1, 2, 2), np.uint16))


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_a_prediction_is_written_in_the_labels_values_and_scores_back(tmp_path, ending):
    data = write_wide_folder(tmp_path / "data", ending=ending)
    dataset = open_dataset(data)
    for case_id in dataset.entries:
        case = dataset.load(case_id)
        path = write_prediction(case, case.label, tmp_path / "pred")
        stored = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert stored.max() == case.label.max() and set(np.unique(stored)) == set(np.unique(case.label))
    scores = evaluate(tmp_path / "pred", data, "all", show_progress=False)
    assert {k: v["dice"] for k, v in scores["cases"][0]["per_class"].items()} == \
        {"class205": 1.0, "class500": 1.0, "class600": 1.0}


def test_freesurfer_aseg_values_in_an_mgz_are_classes(tmp_path):
    rng = np.random.default_rng(1)
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    image, label = phantom_volume(rng, 2, (24, 28))
    aseg = wide(label, {1: 17, 2: 1035, 3: 2035})
    nib.save(nib.MGHImage(image.transpose(2, 1, 0).astype(np.float32), np.eye(4)), tmp_path / "images" / "s.mgz")
    nib.save(nib.MGHImage(aseg.transpose(2, 1, 0).astype(np.int32), np.eye(4)), tmp_path / "labels" / "s.mgz")
    dataset = open_dataset(tmp_path)
    assert dataset.class_map.labels == [17, 1035, 2035]
    case = dataset.load("s")
    path = write_prediction(case, case.label, tmp_path / "pred")
    assert set(np.unique(np.asarray(nib.load(str(path)).dataobj))) == {0, 17, 1035, 2035}


@pytest.mark.parametrize("value, message", [(70000, "70000"), (-3, "-3")])
def test_values_no_16_bit_label_holds_are_refused(tmp_path, value, message):
    data = write_wide_folder(tmp_path / "data", cases=1)
    path = data / "labels" / "case0.nii.gz"
    label = np.asarray(nib.load(str(path)).dataobj).astype(np.int32)
    label[0, 0, 0] = value
    nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    assert_one_line_error(run_fewsam("info", str(data), cwd=tmp_path), message)


def test_dataset_json_may_name_values_above_255(tmp_path):
    data = write_wide_folder(tmp_path / "data", cases=2)
    (data / "imagesTr").mkdir()
    (data / "labelsTr").mkdir()
    for i in range(2):
        (data / "images" / f"case{i}.nii.gz").rename(data / "imagesTr" / f"case{i}_0000.nii.gz")
        (data / "labels" / f"case{i}.nii.gz").rename(data / "labelsTr" / f"case{i}.nii.gz")
    (data / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "numTraining": 2, "file_ending": ".nii.gz",
        "labels": {"background": 0, "myocardium": 205, "left ventricle": 500, "right ventricle": 600}}))
    dataset = open_dataset(data)
    assert dataset.class_map.names == {205: "myocardium", 500: "left ventricle", 600: "right ventricle"}
    assert dataset.load("case1").label.max() in (500, 600)


@pytest.mark.parametrize("method", TRAINED)
def test_every_method_fits_predicts_and_scores_labels_above_255(tiny_sam_phantom, tmp_path, method):
    """Each method's tiny recipe on MM-WHS's values: predictions hold those values (16-bit) and score back."""
    data = write_wide_folder(tmp_path / "wide", cases=4)  # train: case0-case2 (a pool beside 2 labelled slices)
    run, pred = tmp_path / "run", tmp_path / "pred"
    result = CliRunner().invoke(app, [*fit_command(method, data, tmp_path), "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["predict", str(run), "--data", str(data), "--split", "all", "--cache",
                                      str(tmp_path / "cache"), "--precision", "fp32", "--out", str(pred)])
    assert result.exit_code == 0, result.output
    stored = np.concatenate([np.asarray(nib.load(str(path)).dataobj).ravel() for path in pred.glob("*.nii.gz")])
    assert stored.dtype == np.uint16 and set(np.unique(stored)) <= {0, 205, 500, 600}
    scores = evaluate(pred, data, "all", show_progress=False)
    assert set(scores["cases"][0]["per_class"]) == {"class205", "class500", "class600"}


# ------------------------------------------------- a class stored as 255 is a class, not the frame's padding


def framed_slice(label: np.ndarray) -> EmbeddedSlice:
    """A slice of ``label`` in a 32-pixel model frame that pads its right half (a 16 x 8 image)."""
    info = PreprocessInfo(original_hw=label.shape, resized_hw=(32, 16), image_size=32)
    return EmbeddedSlice(SliceRef("c", 0), np.zeros((256, 2, 2), np.float16), info, frame_label(label, info), label)


def test_a_class_stored_as_255_keeps_its_pixels_in_the_model_frame():
    """A 0/255 mask's class was mapped to the ignored pixels with the padding: few-shot SAM found no pixel
    of it, and SAM-Match taught SAM the padding as the class."""
    label = np.zeros((16, 8), np.uint8)
    label[4:12, 2:6] = 255
    sample = framed_slice(label)
    region = frame_region(sample.label_frame, sample.info, 255)
    assert region.sum() == 4 * 8 * 4 and not region[:, 16:].any()
    sample = remap_labels([sample], [0, 255])[0]
    assert (sample.label_frame[:, 16:] == IGNORE).all()
    assert (sample.label_frame[8:24, 4:12] == 1).all() and (sample.label_frame[:, :16] != IGNORE).all()


@pytest.mark.parametrize("method", ["fewshot", "samatch"])
def test_a_nifti_folder_of_0_255_masks_fits(tiny_sam_phantom, tmp_path, method):
    data = write_wide_folder(tmp_path / "binary", cases=4)
    for path in (data / "labels").iterdir():
        label = np.asarray(nib.load(str(path)).dataobj)
        nib.save(nib.Nifti1Image(np.where(label == 500, 255, 0).astype(np.uint8), np.eye(4)), path)
    result = CliRunner().invoke(app, [*fit_command(method, data, tmp_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output


def test_the_studio_refuses_classes_it_cannot_paint_when_the_project_opens(tmp_path):
    """Its labels are one byte a pixel: class 600 would be painted and saved as 88."""
    data = write_wide_folder(tmp_path / "wide", cases=2)
    assert_one_line_error(run_fewsam("studio", "--data", str(data), "--project", str(tmp_path / "project"),
                                     cwd=tmp_path),
                          "stores classes as values above 255 (500, 600), and the studio labels classes 1-255")
    assert not (tmp_path / "project").exists()
