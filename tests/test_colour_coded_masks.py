"""2D masks that store each class as a colour (CholecSeg8k, CamVid, annotation tools' exports): classes.json
names the colours, masks are read pixel by pixel to classes, predictions are written back in the colours and
evaluate reads them to the same classes; colours no class has, and colour masks without a colour table, are
refused saying what to write."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import assert_one_line_error, run_fewsam, scores_of_labels_as_predictions
from fewsam.cli import app
from fewsam.data import open_dataset, read_prediction, write_prediction
from fewsam.data.readers.png_folder import COLOUR_TOLERANCE, colour_tolerance
from fewsam.errors import DataError

RED, GREEN = (255, 0, 0), (0, 255, 0)
CLASSES = {"1": {"name": "tumour", "colour": list(RED)}, "2": {"name": "vessel", "colour": list(GREEN)}}


def colour_mask(shape: tuple[int, int] = (24, 32)) -> np.ndarray:
    """Black background, a red tumour and a green vessel, as (H, W, 3) uint8."""
    mask = np.zeros((*shape, 3), np.uint8)
    mask[2:10, 3:12] = RED
    mask[12:20, 8:28] = GREEN
    return mask


def classes_of(mask: np.ndarray) -> np.ndarray:
    """The classes ``colour_mask`` draws: 1 where red, 2 where green."""
    return ((mask == RED).all(-1) * 1 + (mask == GREEN).all(-1) * 2).astype(np.uint8)


def colour_folder(root: Path, classes: dict | None = CLASSES, masks: dict[str, np.ndarray] | None = None,
                  suffix: str = ".png", **save: object) -> Path:
    """images/<name>.png with masks/<name><suffix> colour masks (two cases unless ``masks`` names them)."""
    masks = masks if masks is not None else {"a": colour_mask(), "b": colour_mask()[::-1].copy()}
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, mask in masks.items():
        Image.fromarray(np.full(mask.shape, 90, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}{suffix}", **save)
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(classes), encoding="utf-8")
    return root


def test_a_colour_mask_is_read_pixel_by_pixel_to_the_classes_its_colours_name(tmp_path):
    dataset = open_dataset(colour_folder(tmp_path / "data"))
    assert dataset.class_map.names == {1: "tumour", 2: "vessel"}
    np.testing.assert_array_equal(dataset.load("images/a").label[0], classes_of(colour_mask()))


def test_palette_and_rgba_masks_with_color_spelt_both_ways_and_a_white_background(tmp_path):
    """"color" and "#rrggbb" are accepted; "0" gives the background's colour; a palette mask is read by the
    colours it shows, an RGBA one with its transparent pixels (whatever colour they hold) as background."""
    white_ground = colour_mask()
    white_ground[(white_ground == 0).all(-1)] = 255
    rgba = np.dstack([white_ground, np.full(white_ground.shape[:2], 255, np.uint8)])
    rgba[0:2, :, :3], rgba[0:2, :, 3] = (10, 20, 30), 0  # a colour no class has, transparent
    root = tmp_path / "data"
    colour_folder(root, {"0": {"name": "background", "color": "#FFFFFF"},
                         "1": {"name": "tumour", "color": [255, 0, 0]}, "2": {"name": "vessel", "colour": "#00ff00"}},
                  masks={"a": rgba})
    Image.fromarray(white_ground).convert("P", palette=Image.Palette.ADAPTIVE, colors=3).save(root / "masks" / "b.png")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / "images" / "b.png")
    dataset = open_dataset(root)
    expected = classes_of(colour_mask())
    expected[0:2] = 0
    np.testing.assert_array_equal(dataset.load("images/a").label[0], expected)
    np.testing.assert_array_equal(dataset.load("images/b").label[0], classes_of(colour_mask()))


def test_a_colour_no_class_has_is_refused_naming_the_file_the_colour_and_its_pixels(tmp_path):
    mask = colour_mask()
    mask[22:24, 0:5] = (0, 0, 255)  # 10 blue pixels: a class classes.json forgot
    dataset = open_dataset(colour_folder(tmp_path / "data", masks={"a": mask}))
    with pytest.raises(DataError, match=r"mask .*a\.png holds the colour \[0, 0, 255\] in 10 pixels, which is no "
                                        r"class's colour; class colours \{0: \[0, 0, 0\], 1: \[255, 0, 0\], "
                                        r"2: \[0, 255, 0\]\}; give its class a \"colour\" in classes.json"):
        dataset.load("images/a")


def test_the_refusal_is_one_error_line_on_the_command_line(tmp_path):
    mask = colour_mask()
    mask[0, 0] = (255, 128, 0)
    data = colour_folder(tmp_path / "data", masks={"a": mask})
    (tmp_path / "pred" / "images").mkdir(parents=True)
    Image.fromarray(colour_mask()).save(tmp_path / "pred" / "images" / "a.png")
    result = run_fewsam("evaluate", "--pred", str(tmp_path / "pred"), "--data", str(data), "--split", "all",
                        "--quiet", cwd=tmp_path)
    assert_one_line_error(result, "holds the colour [255, 128, 0] in 1 pixels")


def test_without_classes_json_the_refusal_gives_a_colour_table_that_reads_the_masks_once_pasted(tmp_path):
    root = colour_folder(tmp_path / "data", classes=None)
    with pytest.raises(DataError) as refused:
        open_dataset(root).load("images/a")
    message = str(refused.value)
    assert "the mask is in colour" in message and "\n" not in message
    table = json.loads(re.search(r"write classes.json in the data folder as (\{.*?\}\}) \(black is", message)[1])
    assert table == {"1": {"name": "class1", "colour": list(GREEN)}, "2": {"name": "class2", "colour": list(RED)}}
    (root / "classes.json").write_text(json.dumps(table), encoding="utf-8")
    label = open_dataset(root).load("images/a").label[0]
    np.testing.assert_array_equal(label, (3 - classes_of(colour_mask())) % 3)  # green first: class 1


def test_the_pasted_table_shows_the_colours_in_most_pixels_and_counts_the_rest(tmp_path):
    mask = colour_mask()
    for i, colour in enumerate([(0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]):
        mask[22:24, i:i + 1] = colour  # 2 pixels each, fewer than red's and green's
    with pytest.raises(DataError, match=r'"2": \{"name": "class2", "colour": \[255, 0, 0\]\}, "3": .* and add the 2 '
                                        r"other colours it holds the same way"):
        open_dataset(colour_folder(tmp_path / "data", classes=None, masks={"a": mask})).load("images/a")


def test_a_jpeg_colour_mask_is_read_to_the_nearest_colour_within_the_tolerance(tmp_path):
    """At quality 95 with full colour resolution JPEG moves colours by far less than the tolerance."""
    root = colour_folder(tmp_path / "data", suffix=".jpg", quality=95, subsampling=0)
    np.testing.assert_array_equal(open_dataset(root).load("images/a").label[0], classes_of(colour_mask()))


def test_a_jpeg_colour_mask_whose_edges_blend_beyond_the_tolerance_is_refused(tmp_path):
    """JPEG's default colour subsampling blends red and green at their edges into colours none is near."""
    root = colour_folder(tmp_path / "data", suffix=".jpg", quality=75)
    with pytest.raises(DataError, match=rf"mask .*a\.jpg holds the colour \[.*\] in \d+ pixels.*more than "
                                        rf"{COLOUR_TOLERANCE:g} from every class colour \(JPEG blurs colours, most at "
                                        r"class edges: save colour masks as PNG\)"):
        open_dataset(root).load("images/a")


def test_the_tolerance_is_at_most_half_the_gap_between_the_closest_colours():
    assert colour_tolerance({0: (0, 0, 0), 1: RED, 2: GREEN}) == COLOUR_TOLERANCE
    closest = np.sqrt(24**2 + 44**2 + 42**2)  # two mid-tone colours, 65 apart
    assert colour_tolerance({0: (0, 0, 0), 1: (231, 70, 156), 2: (255, 114, 114)}) == pytest.approx(closest / 2)


def test_a_prediction_is_written_in_the_mask_colours_and_read_back_to_its_classes(tmp_path):
    dataset = open_dataset(colour_folder(tmp_path / "data"))
    case = dataset.load("images/a")
    path = write_prediction(case, case.label, tmp_path / "pred")
    with Image.open(path) as written:
        assert path.suffix == ".png" and written.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(written), colour_mask())
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", dataset.class_map), case.label)


def test_info_shows_the_colours_and_evaluate_scores_a_prediction_equal_to_the_label_as_dice_1(tmp_path):
    data = colour_folder(tmp_path / "data")
    info = CliRunner().invoke(app, ["info", str(data)])
    assert info.exit_code == 0, info.output
    assert ("classes  0 background (stored as colour [0, 0, 0]), 1 tumour (stored as colour [255, 0, 0]), "
            "2 vessel (stored as colour [0, 255, 0])") in info.output
    scores = scores_of_labels_as_predictions(data, tmp_path)
    assert len(scores["cases"]) == 2 and scores["mean"]["dice"] == pytest.approx(1.0)


def test_new_images_predicted_by_a_run_fitted_on_colour_masks_get_its_colours(tmp_path):
    fitted = open_dataset(colour_folder(tmp_path / "data"))
    new = tmp_path / "new"
    new.mkdir()
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(new / "x.png")
    dataset = open_dataset(new)
    assert dataset.adopt_mask_coding(fitted.class_map, json.loads(json.dumps(fitted.mask_coding())))
    case = dataset.load("x")
    path = write_prediction(case, classes_of(colour_mask())[None], tmp_path / "pred")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), colour_mask())


@pytest.mark.parametrize("classes, told", [
    ({"1": {"name": "a", "colour": [255, 0]}}, r'class 1 has colour=\[255, 0\]; give a colour as \[red, green, blue\]'),
    ({"1": {"name": "a", "color": "red"}}, r"class 1 has color='red'"),
    ({"1": {"name": "a", "colour": [255, 0, 0]}, "2": "b"}, r'class\(es\) 2 have no "colour" while others have one'),
    ({"1": {"name": "a", "colour": [255, 0, 0]}, "2": {"name": "b", "colour": "#ff0000"}},
     r"classes 1 and 2 share the colour \[255, 0, 0\]"),
    ({"1": {"name": "a", "colour": [0, 0, 0]}}, r"classes 0 and 1 share the colour \[0, 0, 0\]"),
    ({"1": {"name": "a", "colour": [255, 0, 0], "pixel": 255}},
     r"gives classes colours and grey mask values \(pixel\)"),
])
def test_a_colour_table_that_cannot_read_the_masks_is_refused(tmp_path, classes, told):
    with pytest.raises(DataError, match=told):
        open_dataset(colour_folder(tmp_path / "data", classes=classes))


def test_full_colour_jpeg_at_quality_90_stays_within_the_tolerance(tmp_path):
    """The measurement behind ``COLOUR_TOLERANCE``: full-resolution colour at quality 90 stays within it."""
    buf = io.BytesIO()
    Image.fromarray(colour_mask((64, 64))).save(buf, "JPEG", quality=90, subsampling=0)
    read = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64)
    table = np.array([(0, 0, 0), RED, GREEN], np.float64)
    nearest = np.sqrt(((read[..., None, :] - table) ** 2).sum(-1)).min(-1)
    assert nearest.max() <= COLOUR_TOLERANCE
