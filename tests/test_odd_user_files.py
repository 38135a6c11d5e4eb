"""Files and settings as users bring them, odd but valid or plainly mistaken: valid ones are read as
their values say and get predictions in their own coding; mistakes end in one line naming the file
or entry to fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_one_line_error, run_fewsam
from PIL import Image
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.data import open_dataset, write_prediction
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import DataError, FewsamError


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


@pytest.mark.parametrize("labels, first, second", [
    ({"background": 0, "RV": 1, "Myo": 1, "LV": 3}, "RV", "Myo"),
    ({"0": "background", "1": "RV", "01": "Myo", "3": "LV"}, "1", "01"),
])
def test_two_classes_of_one_value_in_dataset_json_are_named_not_blamed_on_the_labels(tmp_path, labels, first, second):
    """The later entry took the value without a word: the earlier class was left out, and its voxels'
    value was then refused as a label value "not in the class map"."""
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2)
    dataset = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**dataset, "labels": labels}))
    assert_one_line_error(run_fewsam("info", str(data), cwd=tmp_path),
                          f"labels entries {first!r} and {second!r} both have value 1")


@pytest.mark.parametrize("command", ["info", "evaluate"])
@pytest.mark.parametrize("name", ["classes.json", "index.csv", "benign/result.json"])
def test_a_json_given_a_new_name_in_the_dataset_is_refused_as_it_would_change_the_dataset(tmp_path, command, name):
    """A new --json in DATA was written: named classes.json or index.csv, it became the dataset's class
    coding or index, and every later command refused the dataset (or read other classes)."""
    data = busi_folder(tmp_path / "busi", 255)
    pred = tmp_path / "pred"
    for mask in data.rglob("*_mask.png"):
        (pred / mask.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(mask, pred / mask.parent.name / mask.name.replace("_mask", ""))
    args = {"info": ["info", str(data)], "evaluate": ["evaluate", "--pred", str(pred), "--data", str(data), "--split",
                                                       "all", "--quiet"]}[command]
    before = sorted(data.rglob("*"))
    result = CliRunner().invoke(app, [*args, "--json", str(data / name)])
    assert isinstance(result.exception, FewsamError), result.output
    assert f"--json {data / name} is in the dataset {data}; fewsam writes nothing into your data" in str(result.exception)
    assert sorted(data.rglob("*")) == before
    assert CliRunner().invoke(app, [*args, "--json", str(tmp_path / "result.json")]).exit_code == 0


@pytest.mark.parametrize("rows", ["phantom_001,NA\n", "phantom_001,\n", "phantom_001\n"])
def test_a_table_whose_rows_match_but_hold_no_value_says_so_not_that_no_row_matches(tmp_path, rows):
    """A table of the right ids whose group cells are all left out (a row ending at its id, as hand-written
    tables leave trailing empty cells out) was refused as matching no case "by its 'case' column": the user
    was sent to fix ids that were right. Empty and NA cells are the same to the user, and said alike."""
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2)
    shutil.copytree(data / "labelsTr", tmp_path / "pred")
    (tmp_path / "groups.csv").write_text("case,site\n" + rows)
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--data", str(data), "--split",
                                      "val", "--attributes", str(tmp_path / "groups.csv"), "--group-by", "site"])
    assert isinstance(result.exception, FewsamError), result.output
    assert "no case has a value for attribute 'site'" in str(result.exception)


def test_a_volume_with_an_axis_of_no_voxels_is_named_as_empty(tmp_path):
    """A (176, 144, 0) image was counted as a case of 0 slices, then refused at the fit as "got (0,)":
    a shape the file does not have."""
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2)
    path = data / "imagesTr" / "phantom_001_0000.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, :0], image.affine), path)
    with pytest.raises(DataError, match=r"phantom_001_0000.nii.gz holds no voxels \(its header gives the shape "
                                        r"176 x 144 x 0\)"):
        open_dataset(data).load("phantom_001")


def test_an_index_split_column_in_capitals_or_long_words_names_fewsams_splits(tmp_path):
    """An index.csv whose split column says Train / Validation / TEST (as many tables write it) gave splits
    "Train", "Validation" and "TEST": no 'train' split, so no fit could take its labelled budget."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, rng = [], np.random.default_rng(0)
    for i, split in enumerate(["Train", "Training", "Validation", "TEST ", "holdout"]):
        mask = np.zeros((12, 14), np.uint8)
        mask[3:8, 2 + i:9 + i] = 255
        Image.fromarray(rng.integers(0, 255, mask.shape, dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
        rows.append(f"images/c{i}.png,masks/c{i}.png,{split}")
    (root / "index.csv").write_text("image,mask,split\n" + "\n".join(rows) + "\n")
    ds = open_dataset(root)
    assert [ds.split(name) for name in ("train", "val", "test", "holdout")] == [
        ["images/c0", "images/c1"], ["images/c2"], ["images/c3"], ["images/c4"]]


@pytest.mark.parametrize("layout", ["nnunet", "png index"])
def test_a_folder_named_as_a_data_file_is_said_to_be_a_folder_not_missing(tmp_path, layout):
    """A folder under an image's name (an export or archive unpacked under the file's name) was said as
    "file ... not found", and the user, seeing it on disk, was told to restore what is there."""
    if layout == "nnunet":
        data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2)
        case, path = "phantom_001", data / "imagesTr" / "phantom_001_0000.nii.gz"
    else:
        data = tmp_path / "data"
        (data / "images").mkdir(parents=True)
        mask = np.zeros((12, 14), np.uint8)
        mask[3:8, 2:9] = 255
        for name in ("a", "b"):
            Image.fromarray(mask).save(data / "images" / f"{name}_mask.png")
            Image.fromarray(np.full(mask.shape, 90, np.uint8) + mask // 4).save(data / "images" / f"{name}.png")
        (data / "index.csv").write_text("image,mask\nimages/a.png,images/a_mask.png\nimages/b.png,images/b_mask.png\n")
        case, path = "images/b", data / "images" / "b.png"
    dataset = open_dataset(data)
    path.unlink()
    path.mkdir()
    with pytest.raises(DataError, match=f"{path} is a folder where the dataset names a file"):
        dataset.load(case)
