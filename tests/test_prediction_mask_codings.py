"""2D predictions are written in the dataset's own mask coding and read back by fewsam to the same classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewsam.data import open_dataset, read_prediction, write_prediction


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map (index 7, car, is grey 128/128/128; 255, void, is 224/224/192)."""
    palette = []
    for index in range(256):
        code, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= (code & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette += [red, green, blue]
    return palette


def save_voc_mask(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(indices.astype(np.uint8), "P")
    mask.putpalette(voc_palette())
    mask.save(path)


def voc_folder(root: Path) -> None:
    """Two images with VOC palette masks: the first with aeroplane (1), car (7) and void borders (255),
    the second with car alone, which its palette shows in grey."""
    first = np.zeros((12, 16), np.uint8)
    first[1:4, 1:4], first[6:10, 5:12], first[5, :] = 1, 7, 255
    second = np.zeros((12, 16), np.uint8)
    second[2:9, 3:10] = 7
    for name, indices in (("a", first), ("b", second)):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(root / "images" / f"{name}.jpg")
        save_voc_mask(root / "masks" / f"{name}.png", indices)


def test_a_palette_prediction_of_a_grey_coloured_class_reads_back_as_that_class(tmp_path):
    voc_folder(tmp_path / "voc")
    dataset = open_dataset(tmp_path / "voc")
    case = dataset.load("images/a")
    pred = np.zeros_like(case.label)
    pred[0, 6:10, 5:12] = 7
    path = write_prediction(case, pred, tmp_path / "pred")
    with Image.open(path) as written:
        assert written.mode == "P" and written.getpalette()[21:24] == [128, 128, 128]
        np.testing.assert_array_equal(np.asarray(written), pred[0])
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", dataset.class_map), pred)


def test_a_palette_mask_holding_only_a_grey_coloured_class_reads_as_its_index(tmp_path):
    voc_folder(tmp_path / "voc")
    dataset = open_dataset(tmp_path / "voc")
    assert dataset.class_map.names == {1: "class1", 7: "class7"}
    label = dataset.load("images/b").label[0]
    assert sorted(np.unique(label).tolist()) == [0, 7]


@pytest.mark.parametrize("foreground, dtype", [(1, np.uint8), (255, np.uint8), (65535, np.uint16)])
def test_naming_one_class_keeps_predictions_in_the_masks_own_values(tmp_path, foreground, dtype):
    root = tmp_path / "lesions"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "images" / "a.png")
    mask = np.zeros((8, 10), dtype)
    mask[2:5, 3:7] = foreground
    Image.fromarray(mask).save(root / "masks" / "a.png")
    (root / "classes.json").write_text(json.dumps({"1": "lesion"}), encoding="utf-8")
    dataset = open_dataset(root)
    case = dataset.load("images/a")
    path = write_prediction(case, case.label, tmp_path / "pred")
    with Image.open(path) as written:
        np.testing.assert_array_equal(np.asarray(written), mask)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", dataset.class_map), case.label)


def test_naming_the_classes_of_palette_masks_keeps_the_palette_in_predictions(tmp_path):
    root = tmp_path / "voc"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(root / "images" / "a.jpg")
    indices = np.zeros((12, 16), np.uint8)
    indices[1:4, 1:4], indices[6:10, 5:12] = 1, 7
    save_voc_mask(root / "masks" / "a.png", indices)
    (root / "classes.json").write_text(json.dumps({"classes": {"1": "aeroplane", "7": "car"}}), encoding="utf-8")
    dataset = open_dataset(root)
    case = dataset.load("images/a")
    path = write_prediction(case, case.label, tmp_path / "pred")
    with Image.open(path) as written:
        assert written.mode == "P" and written.getpalette()[:24] == voc_palette()[:24]
        np.testing.assert_array_equal(np.asarray(written), indices)
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", dataset.class_map), case.label)


@pytest.mark.parametrize("classes_json", [False, True], ids=["no classes.json", "one class named"])
def test_each_prediction_is_written_in_its_own_masks_coding_where_masks_differ(tmp_path, notices, classes_json):
    """Masks gathered from several tools, 0/255 beside 0/1: every prediction was written in the first mask's 0/255,
    so the 0/1 masks' images got predictions that the user's comparison with their masks read as no match. An image
    without a mask gets the first mask's coding, as before."""
    root = tmp_path / "lesions"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    masks = {}
    for name, foreground in (("a", 255), ("b", 1), ("c", None)):
        Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "images" / f"{name}.png")
        if foreground is not None:
            masks[name] = np.zeros((8, 10), np.uint8)
            masks[name][2:5, 3:7] = foreground
            Image.fromarray(masks[name]).save(root / "masks" / f"{name}.png")
    if classes_json:
        (root / "classes.json").write_text(json.dumps({"1": "lesion"}), encoding="utf-8")
    dataset = open_dataset(root)
    for name, expected in (("a", masks["a"]), ("b", masks["b"]), ("c", masks["a"])):
        case = dataset.load(f"images/{name}")
        path = write_prediction(case, (masks["a"] > 0)[None].astype(np.uint8), tmp_path / "pred")
        with Image.open(path) as written:
            np.testing.assert_array_equal(np.asarray(written), expected)
        np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", dataset.class_map)[0], masks["a"] > 0)
    assert any("the masks store their class in different values (b.png as 1, others as 255)" in r.getMessage()
               for r in notices.records)
