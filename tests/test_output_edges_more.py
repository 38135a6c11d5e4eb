"""What fewsam writes and how it finds what other tools wrote.

- ``fewsam evaluate`` finds predictions named as the dataset's labels (``x_mask.png`` for the image
  ``x.png``, ``<case>_gt.nii.gz``), as tools that write labels-style names leave them, and says the
  convention it used; nnU-Net's ``labelsTr`` names (``<case>.nii.gz`` for ``<case>_0000.nii.gz``) are
  its own. A label name and another tool's name for one case are refused naming both.
- MONAI's ``SaveImage`` with ``data_root_dir`` keeps the input's sub-folders
  (``<out>/imagesTr/<case>/<case>_trans.nii.gz``): evaluate finds those too, unless one case has two.
- ``python -m fewsam.distributed.bench`` wrote --json and --save straight into place (a crash left half a
  file) and over an existing file: both are written atomically, and follow ``fewsam``'s rules for output
  files (--overwrite to replace one, never a file of the dataset).
- The studio's export of a folder an index.csv lists wrote a label painted on a case listed without a
  mask where the index never named it: the export holds the index, naming each exported label; cases
  still unlabelled stay listed with an empty mask cell.
- A single-slice DICOM took z-spacing 1 whatever its SliceThickness, and its prediction that thickness:
  its SliceThickness (else SpacingBetweenSlices) is its z-spacing, and a default of 1 mm is said.
- A studio fit of grey PNG images read a NIfTI copy of the labelled slices, which holds no mask coding: the
  run recorded none. Grey 2D images are copied as a 2D image folder (float32 TIFF, bit for bit) whose
  coding the run records as ``fewsam fit`` does.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_one_line_error, write_lv_png_folder
from PIL import Image

from fewsam import progress
from fewsam.data import open_dataset
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import DataError
from fewsam.evaluate import evaluate


def write_busi_style(root: Path, n: int = 3) -> Path:
    """BUSI's layout: ``benign/b (i).png`` with its mask ``benign/b (i)_mask.png`` (0/255)."""
    folder = root / "benign"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(folder / f"b ({i}).png")
        mask = np.zeros((20, 24), np.uint8)
        mask[5:10, 5 + i:12 + i] = 255
        Image.fromarray(mask).save(folder / f"b ({i})_mask.png")
    return root


def evaluate_saying(pred: Path, data: Path, caplog, split: str = "all") -> tuple[dict, str]:
    """The evaluation and what it said (its notices afresh)."""
    progress._said.clear()
    with caplog.at_level(logging.INFO, logger="fewsam"):
        result = evaluate(pred, data, split=split, show_progress=False)
    return result, caplog.text


def test_evaluate_scores_png_predictions_named_as_the_masks_and_says_so(tmp_path, caplog):
    data = write_busi_style(tmp_path / "data")
    pred = tmp_path / "pred" / "benign"
    pred.mkdir(parents=True)
    for mask in sorted((data / "benign").glob("*_mask.png")):
        shutil.copy(mask, pred / mask.name)
    result, said = evaluate_saying(tmp_path / "pred", data, caplog)
    assert result["mean"]["dice"] == pytest.approx(1.0) and result["n_cases"] == 3
    assert "predictions named as the dataset's labels are scored" in said and "b (0)_mask.png" in said


def test_a_label_named_prediction_is_scored_against_its_own_case(tmp_path, caplog):
    """Each case's mask differs: scoring another case's file would not give Dice 1."""
    data = write_busi_style(tmp_path / "data")
    pred = tmp_path / "pred" / "benign"
    pred.mkdir(parents=True)
    shutil.copy(data / "benign" / "b (0)_mask.png", pred / "b (0)_mask.png")
    for i in (1, 2):
        shutil.copy(data / "benign" / "b (0)_mask.png", pred / f"b ({i})_mask.png")
    result, _ = evaluate_saying(tmp_path / "pred", data, caplog)
    dice = {row["case"]: row["per_class"] for row in result["cases"]}
    assert next(iter(dice["benign/b (0)"].values()))["dice"] == pytest.approx(1.0)
    assert next(iter(dice["benign/b (2)"].values()))["dice"] < 1.0


def test_a_label_name_and_a_monai_name_for_one_case_are_refused_naming_both(tmp_path):
    data = write_busi_style(tmp_path / "data", n=1)
    pred = tmp_path / "pred" / "benign"
    (pred / "b (0)").mkdir(parents=True)
    shutil.copy(data / "benign" / "b (0)_mask.png", pred / "b (0)_mask.png")
    shutil.copy(data / "benign" / "b (0)_mask.png", pred / "b (0)" / "b (0)_trans.png")
    with pytest.raises(DataError, match=r"two predictions for case benign/b \(0\): b \(0\)_mask.png and "
                                        r"b \(0\)/b \(0\)_trans.png"):
        evaluate(tmp_path / "pred", data, split="all", show_progress=False)


def test_a_fewsam_named_prediction_is_scored_before_a_label_named_one(tmp_path, caplog):
    data = write_busi_style(tmp_path / "data", n=1)
    pred = tmp_path / "pred" / "benign"
    pred.mkdir(parents=True)
    shutil.copy(data / "benign" / "b (0)_mask.png", pred / "b (0).png")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(pred / "b (0)_mask.png")
    result, said = evaluate_saying(tmp_path / "pred", data, caplog)
    assert result["mean"]["dice"] == pytest.approx(1.0)
    assert "is scored on b (0).png, not on b (0)_mask.png beside it (named as the dataset's labels)" in said


def test_nnunet_labels_names_are_the_predictions_own(tmp_path, caplog):
    """nnU-Net images are ``<case>_0000.nii.gz``, labels and predictions ``<case>.nii.gz``: no notice."""
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=2, slices=2, seed=2)
    (tmp_path / "pred").mkdir()
    for cid in open_dataset(data).split("val"):
        shutil.copy(data / "labelsTr" / f"{cid}.nii.gz", tmp_path / "pred" / f"{cid}.nii.gz")
    result, said = evaluate_saying(tmp_path / "pred", data, caplog, split="val")
    assert result["mean"]["dice"] == pytest.approx(1.0)
    assert "named as" not in said


def plain_volumes_with_gt_labels(tmp_path: Path) -> Path:
    """``images/<case>.nii.gz`` + ``labels/<case>_gt.nii.gz`` (ACDC's label names), from the phantom."""
    phantom = write_phantom_dataset(tmp_path / "phantom", n_train=2, n_val=1, slices=2, seed=2)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for image in sorted((phantom / "imagesTr").iterdir()):
        case = image.name.removesuffix("_0000.nii.gz")
        shutil.copy(image, data / "images" / f"{case}.nii.gz")
        shutil.copy(phantom / "labelsTr" / f"{case}.nii.gz", data / "labels" / f"{case}_gt.nii.gz")
    return data


def test_evaluate_scores_volume_predictions_named_as_gt_labels(tmp_path, caplog):
    data = plain_volumes_with_gt_labels(tmp_path)
    (tmp_path / "pred").mkdir()
    for label in sorted((data / "labels").iterdir()):
        shutil.copy(label, tmp_path / "pred" / label.name)
    result, said = evaluate_saying(tmp_path / "pred", data, caplog)
    assert result["mean"]["dice"] == pytest.approx(1.0) and result["n_cases"] == 3
    assert "predictions named as the dataset's labels are scored" in said


def monai_output_with_data_root_dir(data: Path, pred: Path, cases: list[str]) -> None:
    """As ``SaveImage(output_dir=pred, data_root_dir=data)`` names each case's output: the image's
    sub-folder kept, then MONAI's ``<image>/<image>_trans.nii.gz``."""
    for cid in cases:
        target = pred / "imagesTr" / f"{cid}_0000" / f"{cid}_0000_trans.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.load(data / "labelsTr" / f"{cid}.nii.gz"), target)


def test_evaluate_finds_monai_outputs_that_keep_the_inputs_sub_folder(tmp_path, caplog):
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=2, slices=2, seed=2)
    val = open_dataset(data).split("val")
    monai_output_with_data_root_dir(data, tmp_path / "pred", val)
    result, said = evaluate_saying(tmp_path / "pred", data, caplog, split="val")
    assert result["mean"]["dice"] == pytest.approx(1.0) and result["n_cases"] == len(val)
    assert "predictions named as MONAI's SaveImage output are scored" in said


def test_a_monai_output_in_the_sub_folder_and_at_the_top_for_one_case_is_refused(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=2, slices=2, seed=2)
    val = open_dataset(data).split("val")
    monai_output_with_data_root_dir(data, tmp_path / "pred", val)
    flat = tmp_path / "pred" / val[0] / f"{val[0]}_trans.nii.gz"
    flat.parent.mkdir()
    shutil.copy(data / "labelsTr" / f"{val[0]}.nii.gz", flat)
    with pytest.raises(DataError, match=rf"two predictions for case {val[0]}: {val[0]}/{val[0]}_trans.nii.gz and "
                                        rf"imagesTr/{val[0]}_0000/{val[0]}_0000_trans.nii.gz"):
        evaluate(tmp_path / "pred", data, split="val", show_progress=False)


def run_bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m fewsam.distributed.bench ...`` in a new process, as the docs run it (this fewsam's)."""
    import fewsam

    env = dict(os.environ, PYTHONPATH=str(Path(fewsam.__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "fewsam.distributed.bench", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("option", ["--json", "--save"])
def test_the_step_bench_keeps_an_existing_file_unless_told_to_overwrite(tmp_path, option):
    mine = tmp_path / "mine.out"
    mine.write_text("my notes")
    result = run_bench("step", "--data", str(tmp_path / "data"), "--cache", str(tmp_path / "cache"), option,
                       str(mine), cwd=tmp_path)
    assert_one_line_error(result, f"{option} {mine} exists; choose another {option} or pass --overwrite to replace it")
    assert mine.read_text() == "my notes"


def test_the_ray_bench_never_writes_its_json_into_the_dataset(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2, seed=2)
    listed = data / "dataset.json"
    before = listed.read_bytes()
    result = run_bench("ray", "--data", str(data), "--scratch", str(tmp_path / "s"), "--json", str(listed),
                       "--overwrite", cwd=tmp_path)
    assert_one_line_error(result, f"--json {listed} is in the dataset {data}; writing there would replace it")
    assert listed.read_bytes() == before


def bench_step_args(data: Path, tmp_path: Path) -> list[str]:
    return ["step", "--data", str(data), "--cache", str(tmp_path / "cache"), "--method", "supervised",
            "--steps", "4", "--batch-size", "1", "--labeled-slices", "2"]


def test_a_bench_that_fails_while_saving_keeps_the_earlier_weights(tmp_path, monkeypatch):
    """A save cut off (a full disk, a kill) left half a weights file in place of the earlier one."""
    import torch

    from fewsam.distributed import bench

    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"earlier weights")

    def cut_off(obj, target, *args, **kwargs) -> None:
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(b"half")
        else:
            target.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", cut_off)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    with pytest.raises(OSError):
        bench.main([*bench_step_args(data, tmp_path), "--save", str(weights), "--overwrite"])
    assert weights.read_bytes() == b"earlier weights"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_bench_replaces_its_json_with_overwrite(tmp_path, monkeypatch, capsys):
    from fewsam.distributed import bench

    monkeypatch.setattr(bench, "step_times", lambda args: {"seconds_per_step": 0.5})
    out = tmp_path / "one.json"
    out.write_text("{}")
    bench.main(["step", "--data", str(tmp_path / "data"), "--cache", str(tmp_path / "c"), "--json", str(out),
                "--overwrite"])
    assert json.loads(out.read_text()) == {"seconds_per_step": 0.5}


def index_listed_pngs(root: Path, masked: dict[str, bool]) -> Path:
    """``img/<case>.png`` listed in index.csv with ``msk/<case>.png`` where ``masked`` says, an empty mask
    cell (unlabelled) otherwise, and a site column."""
    (root / "img").mkdir(parents=True)
    (root / "msk").mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,mask,site"]
    for cid, has_mask in masked.items():
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(root / "img" / f"{cid}.png")
        if has_mask:
            mask = np.zeros((20, 24), np.uint8)
            mask[5:10, 5:12] = 255
            Image.fromarray(mask).save(root / "msk" / f"{cid}.png")
        rows.append(f"img/{cid}.png,{f'msk/{cid}.png' if has_mask else ''},A")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_studio_export_of_an_index_listed_folder_names_each_label_in_its_index(tmp_path):
    """A label painted on a case listed without a mask was exported as img/c_mask.png, which the index
    (the only place the reader looks) never named: copied into the dataset, it was not read."""
    from fewsam.studio.project import EXPORT_MANIFEST, Project

    data = index_listed_pngs(tmp_path / "data", {"a": True, "b": True, "c": False, "d": False})
    project = Project(data, tmp_path / "project")
    drawn = np.zeros((20, 24), np.uint8)
    drawn[2:9, 3:10] = 1
    for cid in ("img/a", "img/c"):
        project.save_slice(cid, 0, drawn)
    exported = Path(project.export()["folder"])
    back = tmp_path / "back"
    shutil.copytree(data, back)
    shutil.copytree(exported, back, dirs_exist_ok=True, ignore=shutil.ignore_patterns(EXPORT_MANIFEST))
    read = open_dataset(back)
    assert {cid: read.has_label(cid) for cid in read.entries} == {"img/a": True, "img/b": True, "img/c": True,
                                                                 "img/d": False}
    for cid in ("img/a", "img/c"):
        np.testing.assert_array_equal(read.load(cid).label[0], drawn)
    assert read.attributes_of("img/d")["site"] == "A"  # the unlabelled case stays listed, with its columns
    assert project.export()["cases"] == 2  # the export's own index does not block the next export


def single_slice_dicom(folder: Path, thickness: float | None) -> np.ndarray:
    """One DICOM file (a radiograph-like slice) with its SliceThickness, or without any tag that gives a
    z-spacing; returns its pixels (1, H, W)."""
    import SimpleITK as sitk

    pixels = np.random.default_rng(3).integers(0, 1000, (1, 5, 7)).astype(np.int16)
    image = sitk.GetImageFromArray(pixels[0])
    image.SetSpacing((0.7, 0.8))
    tags = {"0020|000e": "1.2.826.0.1.3680043.2.1125.9", "0020|000d": "1.2.826.0.1.3680043.2.1125.9.1",
            "0008|0060": "CR", "0020|0013": "1", "0020|0032": "-10\\5\\3", "0020|0037": "1\\0\\0\\0\\1\\0"}
    if thickness is not None:
        tags["0018|0050"] = str(thickness)
    for tag, value in tags.items():
        image.SetMetaData(tag, value)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "slice1.dcm"))
    writer.Execute(image)
    if thickness is None:
        blank_spacing_between_slices(folder / "slice1.dcm")
    return pixels


def blank_spacing_between_slices(path: Path) -> None:
    """ITK's writer may add SpacingBetweenSlices (0018,0088) of its own: its value blanked (an element with
    no value, as DICOM allows for it), so that no tag of the file gives a z-spacing."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x18\x00\x88\x00")  # the tag, little endian; then "DS" and a 2-byte length (explicit
    if at < 0:                             # VR) or a 4-byte length (implicit VR), then the value
        return
    explicit = data[at + 4:at + 6] == b"DS"
    length = int.from_bytes(data[at + 6:at + 8] if explicit else data[at + 4:at + 8], "little")
    data[at + 8:at + 8 + length] = b" " * length
    path.write_bytes(bytes(data))


def test_a_single_dicom_slice_keeps_its_slice_thickness_in_its_prediction(tmp_path, caplog):
    """ITK stacked one slice at 1 mm whatever its SliceThickness: the prediction written on that geometry
    was 1 mm thick where its image is 2.5."""
    import SimpleITK as sitk

    from fewsam.data import read_prediction, write_prediction

    single_slice_dicom(tmp_path / "data" / "xray", thickness=2.5)
    progress._said.clear()
    with caplog.at_level(logging.INFO, logger="fewsam"):
        case = open_dataset(tmp_path / "data").load("xray")
    assert case.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert "thickness is taken as" not in caplog.text
    pred = np.zeros(case.image.shape[:3], np.uint8)
    pred[0, 1:3, 2:5] = 1
    written = sitk.ReadImage(str(write_prediction(case, pred, tmp_path / "pred")))
    assert written.GetSpacing() == pytest.approx((0.7, 0.8, 2.5))
    assert written.GetOrigin() == pytest.approx((-10.0, 5.0, 3.0))
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), pred)


def test_a_single_dicom_slice_without_a_thickness_says_the_one_assumed(tmp_path, caplog):
    single_slice_dicom(tmp_path / "data" / "xray", thickness=None)
    progress._said.clear()
    with caplog.at_level(logging.INFO, logger="fewsam"):
        case = open_dataset(tmp_path / "data").load("xray")
    assert case.spacing == pytest.approx((1.0, 0.8, 0.7))
    assert "a single DICOM slice without SliceThickness or SpacingBetweenSlices; its thickness is taken as 1 mm" \
        in caplog.text


def test_a_studio_fit_of_grey_png_images_keeps_their_mask_coding(tmp_path):
    """The studio fitted grey 2D images from a NIfTI copy, which holds no PNG coding: the run recorded none
    and wrote its predictions of new, unlabelled images of a 0/1 dataset as 0/255."""
    from test_method_edges import TINY_STUDENT

    from fewsam import api
    from fewsam.predict import predict
    from fewsam.studio.fitdata import FIT_VAL_SPLIT, SLICES
    from fewsam.studio.project import Project

    data = write_lv_png_folder(tmp_path / "data", 3, foreground=1)
    project = Project(data, tmp_path / "project")
    source = open_dataset(data)
    for cid in source.split("all")[:2]:
        project.save_slice(cid, 0, source.load(cid).label[0])
    project.write_fit_dataset(tmp_path / "fit")
    fit_data = open_dataset(tmp_path / "fit")
    for new_id, (cid, z) in json.loads((tmp_path / "fit" / SLICES).read_text()).items():
        np.testing.assert_array_equal(fit_data.load(new_id).image[0], source.load(cid).image[z])  # cache hits
        np.testing.assert_array_equal(fit_data.load(new_id).label[0], source.load(cid).label[z])
    run = tmp_path / "run"  # as the studio's worker fits, with a student that needs no SAM
    api.fit("supervised", api.FitOptions(data=tmp_path / "fit", run=run, labeled_slices=2, val_split=FIT_VAL_SPLIT,
                                         cache=str(tmp_path / "cache"), show_progress=False),
            TINY_STUDENT)
    assert json.loads((run / "config.json").read_text())["mask_coding"]["to_pixel"] == {"0": 0, "1": 1}
    new = write_lv_png_folder(tmp_path / "new", 2, foreground=None)
    for path in predict(run, new, tmp_path / "pred", split="all", show_progress=False):
        assert set(np.unique(np.asarray(Image.open(path)))) <= {0, 1}
