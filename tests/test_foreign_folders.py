"""Data folders, list files and prediction folders as users bring them from other tools: folders that
Jupyter, desktops and macOS keep below the data, list files and attribute tables naming cases by their
image files (nnU-Net's ``_0000`` names, absolute paths, MONAI's JSON datalists), an index.csv of absolute
paths, a run folder given as data, predictions written into the data folder or by another tool (``.mha``,
other names), an image and mask of different sizes, masks without an image, and reports of runs scored
on different cases.
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

from fewsam.data import open_dataset
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import DataError, RunError
from fewsam.evaluate import evaluate
from fewsam.predict import predict
from fewsam.report import write_group_report
from conftest import assert_one_line_error, run_fewsam, write_tiny_acdc
from test_dicom import write_series
from test_formats_end_to_end import run  # noqa: F401 - the fixture: a 2-step supervised run, no SAM weights


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


# ---------------------------------------------------------------- predictions inside the data folder


def test_predict_refuses_an_out_folder_inside_a_png_folder_that_is_read_whole(run, tmp_path):  # noqa: F811
    """Every image below a scanned 2D folder is a case: DATA/preds became 3 more unlabelled cases."""
    data = image_mask_folder(tmp_path / "data", ["c0", "c1", "c2"], shape=(64, 72))
    with pytest.raises(RunError, match="every image below it is read as a case"):
        predict(run, data, data / "preds", split="all", show_progress=False)
    assert not (data / "preds").exists()
    assert open_dataset(data).split("all") == ["images/c0", "images/c1", "images/c2"]


def test_evaluate_refuses_predictions_inside_a_png_folder_that_is_read_whole(tmp_path):
    data = image_mask_folder(tmp_path / "data", ["c0", "c1"])
    shutil.copytree(data / "masks", data / "preds" / "images")
    with pytest.raises(DataError, match="lies in the dataset's own folder"):
        evaluate(data / "preds", data, split="all", show_progress=False)


def test_a_sibling_prediction_folder_of_an_nnunet_dataset_stays_allowed(run, tmp_path):  # noqa: F811
    """nnU-Net reads only its own folders: DATA/imagesTs_pred (nnU-Net users' habit) is no case."""
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2, seed=3)
    written = predict(run, data, data / "imagesTs_pred", split="all", show_progress=False)
    assert len(written) == 2 and all(p.is_file() for p in written)


def test_a_run_folder_given_as_data_is_named_as_a_run(run, tmp_path):  # noqa: F811
    """`fewsam info RUN`, or RUN and DATA swapped: "no known data layout" and every layout's description."""
    result = run_fewsam("info", str(run), cwd=tmp_path)
    assert_one_line_error(result, f"{run} is a fewsam run folder (config.json, fit.log), not a data folder")


# ---------------------------------------------------------------- list files naming image files


def test_list_files_name_nnunet_cases_by_their_image_files(tmp_path):
    """``ls imagesTr > val.list`` gives phantom_000_0000.nii.gz, which is no case id."""
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=0)
    lines = ["imagesTr/phantom_000_0000.nii.gz", "phantom_001_0000.nii.gz", "imagesTr\\phantom_002_0000",
             str((data / "labelsTr" / "phantom_001.nii.gz").resolve()).replace("phantom_001", "phantom_002")]
    (data / "mine.list").write_text("\n".join(lines[:3]) + "\n")
    assert open_dataset(data).split("mine.list") == ["phantom_000", "phantom_001", "phantom_002"]
    (data / "absolute.list").write_text(lines[3] + "\n")
    assert open_dataset(data).split("absolute.list") == ["phantom_002"]


def test_list_files_name_2d_images_by_their_stem_and_refuse_a_name_two_cases_share(tmp_path):
    root = image_mask_folder(tmp_path / "data", [])
    for folder in ("images/a", "images/b"):
        image_mask_folder(tmp_path / "tmp" / folder, ["x", "y" if folder.endswith("a") else "z"])
        shutil.copytree(tmp_path / "tmp" / folder / "images", root / folder)
        shutil.copytree(tmp_path / "tmp" / folder / "masks", root / folder.replace("images", "masks"))
    (root / "stems.list").write_text("y\nz.png\n")
    assert open_dataset(root).split("stems.list") == ["images/a/y", "images/b/z"]
    (root / "shared.list").write_text("x\n")
    with pytest.raises(DataError, match=r"'x' in a list file of .* names a file of several cases \(images/a/x, "
                                        r"images/b/x\); list the case id"):
        open_dataset(root).split("shared.list")


def test_a_list_typed_by_hand_names_a_file_whose_name_macos_decomposed(tmp_path):
    """macOS stores "Müller" as u + combining diaeresis (NFD); a list typed by hand holds ü (NFC)."""
    name = unicodedata.normalize("NFD", "Müller")
    root = image_mask_folder(tmp_path / "data", [name, "other"])
    (root / "one.list").write_text(unicodedata.normalize("NFC", "Müller") + "\n", encoding="utf-8")
    assert open_dataset(root).split("one.list") == [f"images/{name}"]


def test_an_attribute_table_keyed_by_nnunet_image_files_joins_its_cases(tmp_path):
    """Its error said "image file names" were keys, but phantom_000_0000.nii.gz matched no case."""
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=0)
    rows = ["imagesTr/phantom_000_0000.nii.gz,F", "phantom_001_0000.nii.gz,M", "phantom_002_0000,F"]
    (tmp_path / "sex.csv").write_text("image,sex\n" + "\n".join(rows) + "\n")
    ds = open_dataset(data, tmp_path / "sex.csv")
    assert [ds.attributes_of(cid)["sex"] for cid in ds.split("all")] == ["F", "M", "F"]


def test_an_index_csv_of_absolute_paths_inside_the_folder_is_read(tmp_path):
    """A script's index (``glob`` on an absolute folder) was refused as naming files outside the folder."""
    root = image_mask_folder(tmp_path / "data", ["c0", "c1"])
    rows = [f"{root.resolve() / 'images' / n}.png,{root.resolve() / 'masks' / n}.png" for n in ("c0", "c1")]
    (root / "index.csv").write_text("image,mask\n" + "\n".join(rows) + "\n")
    ds = open_dataset(root)
    assert ds.split("all") == ["images/c0", "images/c1"]
    assert ds.load("images/c1").label.max() == 1


def test_a_json_list_of_ids_or_monai_records_names_its_cases(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=0)
    (data / "ids.json").write_text(json.dumps(["phantom_002", "phantom_000"]))
    assert open_dataset(data).split("ids.json") == ["phantom_002", "phantom_000"]
    records = [{"image": "imagesTr/phantom_001_0000.nii.gz", "label": "labelsTr/phantom_001.nii.gz"}]
    (data / "records.json").write_text(json.dumps(records))
    assert open_dataset(data).split("records.json") == ["phantom_001"]


def test_a_json_datalist_object_is_refused_without_quoting_all_of_it(tmp_path):
    """Read as lines, the whole file was one "case", and the error quoted every byte of it."""
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=0)
    records = [{"image": f"imagesTr/phantom_00{i}_0000.nii.gz"} for i in range(3)] * 40
    (data / "datalist.json").write_text(json.dumps({"training": records, "validation": records[:1]}))
    with pytest.raises(DataError) as err:
        open_dataset(data).split("datalist.json")
    message = str(err.value)
    assert "holds a JSON object (keys training, validation), not a list of cases" in message
    assert "imagesTr" not in message and len(message) < 400
    (data / "folds.json").write_text(json.dumps([{"train": ["phantom_000"], "val": ["phantom_001"]}]))
    with pytest.raises(DataError, match='holds {"train": .*which names no case'):
        open_dataset(data).split("folds.json")


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


# ---------------------------------------------------------------- prediction folders of other tools


@pytest.fixture
def phantom_and_labels(tmp_path) -> tuple[Path, list[str]]:
    """A phantom and its val split; the labels stand in for a tool's predictions."""
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=2, slices=2, seed=2)
    return data, open_dataset(data).split("val")


def test_metaimage_predictions_of_a_nifti_dataset_are_read_on_its_grid(phantom_and_labels, tmp_path):
    """SimpleITK scripts and grand-challenge containers write .mha: "not found" for every case."""
    data, val = phantom_and_labels
    (tmp_path / "pred").mkdir()
    for cid in val:
        sitk.WriteImage(sitk.ReadImage(str(data / "labelsTr" / f"{cid}.nii.gz")), str(tmp_path / "pred" / f"{cid}.mha"))
    result = evaluate(tmp_path / "pred", data, split="val", show_progress=False)
    assert result["mean"]["dice"] == pytest.approx(1.0)


def test_a_prediction_folder_of_other_names_says_what_it_holds(phantom_and_labels, tmp_path):
    data, val = phantom_and_labels
    (tmp_path / "pred").mkdir()
    for cid in val:
        shutil.copy(data / "labelsTr" / f"{cid}.nii.gz", tmp_path / "pred" / f"{cid}_pred.nii.gz")
    with pytest.raises(DataError, match=rf"holds none of this split's predictions as `fewsam predict` names them "
                                        rf"\(the first: {val[0]}.nii.gz\), but files such as {val[0]}_pred.nii.gz.* "
                                        "rename them to that pattern"):
        evaluate(tmp_path / "pred", data, split="val", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="prediction folder .*empty is empty"):
        evaluate(tmp_path / "empty", data, split="val", show_progress=False)


def test_another_tools_png_predictions_of_an_h5_dataset_are_told_to_be_converted_not_renamed(tmp_path):
    """Renamed to ``<case>.h5``, a PNG stays unreadable (no HDF5 file): the message says to convert it."""
    data = write_tiny_acdc(tmp_path / "acdc", ["patient002_frame01"])
    (tmp_path / "pred").mkdir()
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "pred" / "patient002_frame01_seg.png")
    with pytest.raises(DataError, match=r"files such as patient002_frame01_seg.png: .* they are not \.h5 files, "
                                        r"which this layout's predictions are: convert them to that format"):
        evaluate(tmp_path / "pred", data, split="val", show_progress=False)


def test_nifti_predictions_of_an_h5_dataset_named_otherwise_are_told_the_test_script_name(tmp_path):
    """SSL4MIS's 3D test script numbers its outputs (``01_pred.nii.gz``): an h5 layout reads NIfTI predictions
    named ``<case>_pred.nii.gz``, which the message names."""
    data = write_tiny_acdc(tmp_path / "acdc", ["patient002_frame01"])
    (tmp_path / "pred").mkdir()
    numbered = sitk.GetImageFromArray(np.zeros((2, 40, 48), np.float32))
    sitk.WriteImage(numbered, str(tmp_path / "pred" / "01_pred.nii.gz"))
    with pytest.raises(DataError, match=r"files such as 01_pred.nii.gz: .* this layout reads NIfTI predictions "
                                        r"named <case>_pred.nii.gz, as TransUNet's test script names them: rename "
                                        r"them so, or predict"):
        evaluate(tmp_path / "pred", data, split="val", show_progress=False)


def test_ssl4mis_2d_test_predictions_of_an_acdc_volume_are_read(tmp_path):
    """SSL4MIS's ``test_2D_fully.py`` saves an ACDC volume's prediction as TransUNet does:
    ``<case>_pred.nii.gz``, SimpleITK's image of the (D, H, W) array, spacing (1, 1, 10)."""
    data = write_tiny_acdc(tmp_path / "acdc", ["patient002_frame01"])
    (tmp_path / "pred").mkdir()
    label = open_dataset(data).load("patient002_frame01").label
    predicted = sitk.GetImageFromArray(label.astype(np.float32))
    predicted.SetSpacing((1, 1, 10))
    sitk.WriteImage(predicted, str(tmp_path / "pred" / "patient002_frame01_pred.nii.gz"))
    assert evaluate(tmp_path / "pred", data, split="val", show_progress=False)["mean"]["dice"] == pytest.approx(1.0)


# ---------------------------------------------------------------- a flat folder of 2D predictions


def flat_predictions(data: Path, pred: Path, name: str = "{stem}.png") -> None:
    """Each case's mask, copied into ``pred`` itself under ``name`` (its image's stem filled in), as a tool
    that writes every prediction into one folder does."""
    pred.mkdir(exist_ok=True)
    for mask in (data / "masks").glob("*.png"):
        shutil.copy(mask, pred / name.format(stem=mask.stem))


@pytest.mark.parametrize("name", ["{stem}.png", "{stem}_mask.png"])
def test_a_flat_folder_of_2d_predictions_pairs_with_images_and_masks_by_name(tmp_path, notices, name):
    """Kvasir's or BUSI's ``images/`` + ``masks/``, predicted by another tool into ``preds/x.png`` (or
    ``x_mask.png``): fewsam's own name is ``preds/images/x.png``, and the flat folder was refused."""
    data = image_mask_folder(tmp_path / "kvasir", ["cju0", "cju1", "cju2"])
    flat_predictions(data, tmp_path / "preds", name)
    result = evaluate(tmp_path / "preds", data, split="all", show_progress=False)
    assert result["n_cases"] == 3 and result["mean"]["dice"] == pytest.approx(1.0)
    assert "predictions named as their images or labels, all in one folder are scored" in notices.text
    mask = np.zeros((20, 24), np.uint8)
    mask[3:9, 4:8] = 255
    Image.fromarray(mask).save(tmp_path / "preds" / name.format(stem="cju1"))
    assert evaluate(tmp_path / "preds", data, split="all", show_progress=False)["mean"]["dice"] < 0.95


def test_a_flat_folder_missing_one_prediction_names_both_places_it_was_sought(tmp_path):
    data = image_mask_folder(tmp_path / "kvasir", ["cju0", "cju1"])
    flat_predictions(data, tmp_path / "preds")
    (tmp_path / "preds" / "cju1.png").unlink()
    result = run_fewsam("evaluate", "--data", str(data), "--pred", str(tmp_path / "preds"), "--split", "all",
                        cwd=tmp_path)
    assert_one_line_error(result, f"prediction {tmp_path}/preds/images/cju1.png (or {tmp_path}/preds/cju1.png) "
                                  "for case images/cju1 not found")


def test_a_flat_prediction_two_cases_could_own_is_refused_naming_both(tmp_path):
    """``images/a/x.png`` and ``images/b/x.png`` both name their prediction ``x.png`` in a flat folder: which
    one it is cannot be told."""
    data = tmp_path / "data"
    for sub in ("a", "b"):
        image_mask_folder(tmp_path / "parts" / sub, ["x"])
        for folder in ("images", "masks"):
            (data / folder).mkdir(parents=True, exist_ok=True)
            shutil.copytree(tmp_path / "parts" / sub / folder, data / folder / sub)
    (tmp_path / "preds").mkdir()
    shutil.copy(data / "masks" / "a" / "x.png", tmp_path / "preds" / "x.png")
    with pytest.raises(DataError, match=r"preds/x.png could be the prediction of case images/a/x or of case "
                                        r"images/b/x, whose images have one name; put each prediction at its "
                                        r"image's relative path in .*preds, as `fewsam predict` writes them "
                                        r"\(images/a/x.png\)"):
        evaluate(tmp_path / "preds", data, split="all", show_progress=False)


def test_two_flat_predictions_of_one_case_are_refused_naming_both(tmp_path):
    data = image_mask_folder(tmp_path / "kvasir", ["cju0"])
    flat_predictions(data, tmp_path / "preds")
    flat_predictions(data, tmp_path / "preds", "{stem}_mask.png")
    with pytest.raises(DataError, match=r"preds holds two predictions for case images/cju0: cju0.png and "
                                        r"cju0_mask.png"):
        evaluate(tmp_path / "preds", data, split="all", show_progress=False)


# ---------------------------------------------------------------- NIfTI predictions of 2D images


def save_plane_nifti(path: Path, array: np.ndarray) -> None:
    """A 2D prediction as a volume pipeline saves it: nibabel, an identity affine, qform and sform code 1 as
    MONAI's NibabelWriter sets them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nifti = nib.Nifti1Image(array.astype(np.float32), np.eye(4))
    nifti.set_qform(np.eye(4), code=1)
    nifti.set_sform(np.eye(4), code=1)
    nib.save(nifti, path)


def class_masks(data: Path) -> dict[str, np.ndarray]:
    """Each image's mask (0/255) as class indices, by the image's stem."""
    return {mask.stem: (np.asarray(Image.open(mask)) > 0).astype(np.uint8) for mask in (data / "masks").glob("*.png")}


@pytest.mark.parametrize("name, stored", [
    ("images/{stem}.nii.gz", lambda mask: mask.T[..., None]),  # MONAI's SaveImage: x first, (W, H, 1)
    ("images/{stem}/{stem}_seg.nii.gz", lambda mask: mask.T),  # MONAI's names, its end axis squeezed: (W, H)
    ("images/{stem}.nii", lambda mask: mask),  # a numpy mask saved as it is held: (H, W)
], ids=["monai-x-first", "monai-names", "rows-first"])
def test_nifti_predictions_of_png_images_are_read_onto_their_rows_and_columns(tmp_path, name, stored):
    """A MONAI pipeline saves a 2D image's prediction as NIfTI, x first; a numpy mask saved with nibabel is
    (rows, columns). On non-square images the shape tells them apart: the mask scores Dice 1, a shifted one
    less."""
    data = image_mask_folder(tmp_path / "kvasir", ["cju0", "cju1"])
    for stem, mask in class_masks(data).items():
        save_plane_nifti(tmp_path / "pred" / name.format(stem=stem), stored(mask))
    assert evaluate(tmp_path / "pred", data, split="all", show_progress=False)["mean"]["dice"] == pytest.approx(1.0)
    shifted = np.roll(class_masks(data)["cju1"], 3, axis=1)
    save_plane_nifti(tmp_path / "pred" / name.format(stem="cju1"), stored(shifted))
    assert evaluate(tmp_path / "pred", data, split="all", show_progress=False)["mean"]["dice"] < 0.95


def test_a_nifti_prediction_of_a_square_image_is_read_x_first_and_said(tmp_path, notices):
    """A square image's prediction reads either way: x first, as NIfTI stores an image (and MONAI saves it),
    said once."""
    data = image_mask_folder(tmp_path / "square", ["sq0"], shape=(20, 20))
    mask = class_masks(data)["sq0"]
    save_plane_nifti(tmp_path / "pred" / "images" / "sq0.nii.gz", mask.T)
    assert evaluate(tmp_path / "pred", data, split="all", show_progress=False)["mean"]["dice"] == pytest.approx(1.0)
    assert "read in x first, as NIfTI stores an image" in notices.text


def test_a_nifti_prediction_of_a_png_image_holding_a_volume_is_refused(tmp_path):
    data = image_mask_folder(tmp_path / "kvasir", ["cju0"])
    save_plane_nifti(tmp_path / "pred" / "images" / "cju0.nii.gz", np.zeros((24, 20, 3)))
    result = run_fewsam("evaluate", "--data", str(data), "--pred", str(tmp_path / "pred"), "--split", "all",
                        cwd=tmp_path)
    assert_one_line_error(result, f"prediction {tmp_path}/pred/images/cju0.nii.gz of a 2D image must hold one "
                                  "plane, got shape (24, 20, 3)")


# ---------------------------------------------------------------- reports


def evaluation_json(path: Path, cases: dict[str, float], split: str) -> Path:
    """A minimal evaluation JSON as ``fewsam evaluate --json`` writes it (one class)."""
    scores = {cid: {"fg": {"dice": d, "iou": d, "hd95": 1.0, "asd": 1.0}} for cid, d in cases.items()}
    mean = {"dice": float(np.mean(list(cases.values()))), "iou": 0.5, "hd95": 1.0, "asd": 1.0}
    path.write_text(json.dumps({"n_cases": len(cases), "mean": mean, "per_class": {"fg": mean}, "split": split,
                                "cases": [{"case": c, "per_class": s, "group": None} for c, s in scores.items()]}))
    return path


def test_a_report_of_runs_scored_on_different_cases_warns(tmp_path, caplog):
    a = evaluation_json(tmp_path / "a.json", {"c1": 0.9, "c2": 0.8, "c3": 0.1}, "all")
    b = evaluation_json(tmp_path / "b.json", {"c1": 0.7, "c2": 0.6}, "val")
    with caplog.at_level(logging.WARNING, logger="fewsam"):
        paths = write_group_report([a, b], tmp_path / "report")
    expected = "scored on different cases (a: 3 case(s) of split 'all'; b: 2 case(s) of split 'val'; 2 in all"
    assert expected in paths["markdown"].read_text() and expected in caplog.text
    same = evaluation_json(tmp_path / "same.json", {"c1": 0.5, "c2": 0.4, "c3": 0.3}, "all")
    paths = write_group_report([a, same], tmp_path / "report2")
    assert "different cases" not in paths["markdown"].read_text()
