"""A dataset's label folder given as data (``--data DATASET/labelsTr``, ``DATASET/masks``) is refused,
naming the dataset's folder: read as data, its labels would be segmented as if they were images. A
label-named folder with no images beside it is refused where its files look like label maps (a few whole
values), and read where they hold images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_fewsam, write_lv_png_folder
from fewsam.data import open_dataset
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import DataError


def _nnunet(root: Path, with_json: bool = True) -> Path:
    data = write_phantom_dataset(root, n_train=1, n_val=1, slices=2)
    if not with_json:
        (data / "dataset.json").unlink()
    return data


def _refusal(folder: Path) -> str:
    with pytest.raises(DataError) as refused:
        open_dataset(folder)
    return str(refused.value)


def _advice(folder: Path, images: str) -> str:
    parent = folder.resolve().parent
    return (f"{folder} is the label folder of the dataset {parent} (its images are in {images}/); given as data, "
            f"its labels would be read as images to segment; give the parent folder: --data {parent}")


def test_info_on_a_mask_folder_beside_its_images_is_one_error_line(tmp_path):
    data = write_lv_png_folder(tmp_path / "kvasir", 2, 255)
    result = run_fewsam("info", str(data / "masks"), cwd=tmp_path)
    assert_one_line_error(result, f"give the parent folder: --data {data.resolve()}")


@pytest.mark.parametrize("images, labels", [("images", "masks"), ("image", "mask"), ("images", "labels"),
                                            ("images", "gt")])
def test_a_2d_mask_folder_beside_its_images_names_the_parent(tmp_path, images, labels):
    data = write_lv_png_folder(tmp_path / "set", 2, 255)
    (data / "images").rename(data / images)
    (data / "masks").rename(data / labels)
    assert _refusal(data / labels) == _advice(data / labels, images)


def test_an_annotation_folder_beside_its_input_folder_names_the_parent(tmp_path):
    """``Training_Input/x.jpg`` beside ``Training_Annotations/x_segmentation.png``: no folder named images."""
    data = write_lv_png_folder(tmp_path / "skin", 2, 255)
    (data / "images").rename(data / "Training_Input")
    truth = data / "Training_Annotations"
    truth.mkdir()
    for mask in sorted((data / "masks").iterdir()):
        mask.rename(truth / f"{mask.stem}_segmentation.png")
    (data / "masks").rmdir()
    assert _refusal(truth) == _advice(truth, "Training_Input")


def test_nnunet_label_folders_without_a_recognised_dataset_above_name_the_parent(tmp_path):
    """imagesTr/ without dataset.json, and labelsTs/ beside imagesTs/: the folder is named with its own images."""
    bare = _nnunet(tmp_path / "bare", with_json=False)
    assert _refusal(bare / "labelsTr") == _advice(bare / "labelsTr", "imagesTr")
    test = _nnunet(tmp_path / "test")
    shutil.copytree(test / "imagesTr", test / "imagesTs")
    shutil.copytree(test / "labelsTr", test / "labelsTs")
    assert _refusal(test / "labelsTs") == _advice(test / "labelsTs", "imagesTs")


def test_a_volume_label_folder_beside_images_named_gt_names_the_parent(tmp_path):
    nnunet = _nnunet(tmp_path / "nnunet")
    data = tmp_path / "scans"
    shutil.copytree(nnunet / "imagesTr", data / "images")
    shutil.copytree(nnunet / "labelsTr", data / "gt")
    assert _refusal(data / "gt") == _advice(data / "gt", "images")


def test_only_a_label_folder_with_its_images_beside_it_is_refused(tmp_path):
    """gt/ alone (beside notes/) holding images, and Kvasir-SEG/ (images/ + masks/) beside an images/ of other
    pictures, are read as before; the same gt/ beside images/ is refused."""
    nnunet = _nnunet(tmp_path / "nnunet")
    alone = tmp_path / "alone"
    shutil.copytree(nnunet / "imagesTr", alone / "gt")
    (alone / "notes").mkdir()
    (alone / "notes" / "readme.txt").write_text("scanner settings\n", encoding="utf-8")
    assert len(open_dataset(alone / "gt").split("val")) == 2
    shutil.rmtree(alone / "gt")
    shutil.copytree(nnunet / "labelsTr", alone / "gt")
    downloads = tmp_path / "downloads"
    kvasir = write_lv_png_folder(downloads / "Kvasir-SEG", 2, 255)
    (downloads / "images").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(downloads / "images" / "other.png")
    assert open_dataset(kvasir).layout == "png"
    shutil.copytree(nnunet / "imagesTr", alone / "images")
    assert _refusal(alone / "gt") == _advice(alone / "gt", "images")


# ---------------------------------------------------------------- a label folder with no images beside it


def _label_map_refusal(folder: Path, values: str, images: str) -> str:
    return (f"{folder} holds label maps, not images (a label folder's name, and its files hold only the values "
            f"{values}); given as data, its labels would be read as images to segment; give the folder holding the "
            f"images and this one beside them ({images}/ + {folder.name}/) as --data, or the images' own folder to "
            "predict")


def test_a_masks_folder_of_0_255_masks_alone_is_refused_as_label_maps(tmp_path):
    data = write_lv_png_folder(tmp_path / "set", 2, 255)
    masks = tmp_path / "elsewhere" / "masks"
    masks.parent.mkdir()
    (data / "masks").rename(masks)
    assert _refusal(masks) == _label_map_refusal(masks, "0, 255", "images")


def test_a_masks_folder_of_greyscale_images_is_read_as_images(tmp_path):
    """A folder named masks/ holding pictures of many grey values: a user's images, whatever its name."""
    masks = write_lv_png_folder(tmp_path / "set", 2) / "images"
    masks = masks.rename(tmp_path / "set" / "masks")
    ds = open_dataset(masks)
    assert ds.layout == "png" and len(ds.split("all")) == 2
    assert not any(map(ds.has_label, ds.entries))


def test_info_on_an_nnunet_labelstr_alone_is_one_error_line_naming_imagestr(tmp_path):
    labels = tmp_path / "x" / "labelsTr"
    shutil.copytree(_nnunet(tmp_path / "nnunet") / "labelsTr", labels)
    assert _refusal(labels) == _label_map_refusal(labels, "0, 1, 2, 3", "imagesTr")
    result = run_fewsam("info", str(labels), cwd=tmp_path)
    assert_one_line_error(result, "holds label maps, not images")
