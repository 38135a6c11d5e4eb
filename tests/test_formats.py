"""2D formats beyond PNG (JPEG, TIFF, BMP), classes.json forms and ranges, folders without
labels, and the natural order of case ids: generated files with known answers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fewsam.data import open_dataset, prediction_path, read_prediction, select_labelled, write_prediction
from fewsam.data.readers.common import natural_key, natural_sorted
from fewsam.errors import DataError
from test_readers import make_npz, volume


def save(path: Path, array: np.ndarray, **options) -> None:
    """Any Pillow format, chosen by the suffix (upper-case suffixes too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=Image.registered_extensions()[path.suffix.lower()], **options)


def disc(h: int = 48, w: int = 64, r: float = 14.0, cy: float = 22.0, cx: float = 30.0) -> np.ndarray:
    """A 0/255 disc mask: round edges, so JPEG compression noise lands on both sides of 128."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (np.hypot(yy - cy, xx - cx) < r).astype(np.uint8) * 255


def colour(rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def fewsam_notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fewsam"]


# ---------------------------------------------------------------- JPEG / TIFF / BMP


def test_jpeg_images_and_masks_threshold_at_the_midpoint(tmp_path, caplog):
    """Kvasir-SEG's layout: images/*.jpg + masks/*.jpg; JPEG masks are noisy around 0 and 255."""
    rng = np.random.default_rng(0)
    masks = {"a": disc(), "b": disc(r=9, cy=30), "c": disc(r=5, cx=50)}
    for name, mask in masks.items():
        suffix = ".JPG" if name == "c" else ".jpg"
        save(tmp_path / "images" / f"{name}{suffix}", colour(rng), quality=90)
        save(tmp_path / "masks" / f"{name}{suffix}", mask, quality=75)
    raw = np.asarray(Image.open(tmp_path / "masks" / "a.jpg"))
    assert len(np.unique(raw)) > 2  # the file really is lossy
    caplog.set_level(logging.INFO, logger="fewsam")
    ds = open_dataset(tmp_path)
    assert ds.layout == "png" and ds.class_map.names == {1: "foreground"}
    assert ds.split("all") == ["images/a", "images/b", "images/c"]
    for name, mask in masks.items():
        case = ds.load(f"images/{name}")
        assert case.image.shape == (1, 48, 64, 3) and case.image.dtype == np.float32
        expected = np.asarray(Image.open(next((tmp_path / "masks").glob(f"{name}.*")))) >= 128
        np.testing.assert_array_equal(case.label[0], expected.astype(np.uint8))
        assert np.mean(case.label[0] != (mask > 0)) < 0.01  # the disc comes back, edges aside
    notes = [n for n in fewsam_notes(caplog) if "JPEG masks" in n]
    assert len(notes) == 1 and str(tmp_path / "masks") in notes[0] and "threshold at the midpoint 128" in notes[0]


def test_jpeg_masks_through_index_csv_are_accepted(tmp_path):
    rng = np.random.default_rng(1)
    save(tmp_path / "img" / "x1.jpeg", colour(rng)[..., 0])
    save(tmp_path / "img" / "x1_seg.jpeg", disc(), quality=60)
    (tmp_path / "index.csv").write_text("image,mask,site\nimg/x1.jpeg,img/x1_seg.jpeg,A\n")
    ds = open_dataset(tmp_path)
    case = ds.load("img/x1")
    assert set(np.unique(case.label)) == {0, 1} and case.attributes["site"] == "A"
    assert case.image.shape == (1, 48, 64)
    assert np.mean(case.label[0] != (disc() > 0)) < 0.01


def test_tiff_and_bmp_pairs_beside_each_other(tmp_path):
    image16 = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20)
    save(tmp_path / "ct.tif", image16)
    save(tmp_path / "ct_mask.tif", disc())
    rng = np.random.default_rng(2)
    save(tmp_path / "us.bmp", colour(rng))
    save(tmp_path / "us_mask.BMP", disc(r=6))
    save(tmp_path / "us_mask_1.png", disc(r=4, cx=10))
    ds = open_dataset(tmp_path)
    assert ds.split("all") == ["ct", "us"]
    ct = ds.load("ct")
    np.testing.assert_array_equal(ct.image[0], image16.astype(np.float32))  # 16 bits kept
    np.testing.assert_array_equal(ct.label[0], (disc() > 0).astype(np.uint8))
    us = ds.load("us")
    np.testing.assert_array_equal(us.label[0], ((disc(r=6) > 0) | (disc(r=4, cx=10) > 0)).astype(np.uint8))
    assert ds.prediction_rel_path(ds.entries["ct"]) == "ct.png"


def test_image_and_mask_may_differ_in_format(tmp_path):
    rng = np.random.default_rng(3)
    save(tmp_path / "Images" / "p1.jpg", colour(rng))
    save(tmp_path / "Masks" / "p1.png", disc())
    save(tmp_path / "Images" / "p2.tiff", colour(rng)[..., 1])
    ds = open_dataset(tmp_path)
    assert ds.has_label("Images/p1") and not ds.has_label("Images/p2")
    np.testing.assert_array_equal(ds.load("Images/p1").label[0], (disc() > 0).astype(np.uint8))
    assert ds.load("Images/p2").label is None


def test_predictions_of_jpeg_cases_are_png_files_named_png(tmp_path):
    rng = np.random.default_rng(4)
    save(tmp_path / "data" / "images" / "sub" / "k.jpg", colour(rng))
    save(tmp_path / "data" / "masks" / "sub" / "k.jpg", disc())
    save(tmp_path / "data" / "images" / "sub" / "j.JPEG", colour(rng))
    ds = open_dataset(tmp_path / "data")
    assert ds.split("all") == ["images/sub/j", "images/sub/k"]
    for cid, name in (("images/sub/k", "k.png"), ("images/sub/j", "j.png")):
        case = ds.load(cid)
        assert case.rel_path == f"images/sub/{name}" and case.format == "png"
        pred = (rng.random(case.image.shape[:3]) > 0.5).astype(np.uint8)
        path = write_prediction(case, pred, tmp_path / "pred")
        assert path == tmp_path / "pred" / "images" / "sub" / name == prediction_path(case, tmp_path / "pred")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert set(np.unique(np.asarray(Image.open(path)))) <= {0, 255}
        np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", ds.class_map), pred)
    assert sorted(p.name for p in (tmp_path / "pred" / "images" / "sub").iterdir()) == ["j.png", "k.png"]


def test_prediction_path_is_png_even_for_a_jpg_rel_path(tmp_path):
    rng = np.random.default_rng(5)
    save(tmp_path / "images" / "a.jpg", colour(rng))
    case = open_dataset(tmp_path).load("images/a")
    case.rel_path = "images/a.jpg"  # a Case made by other code still gets a .png prediction
    assert prediction_path(case, tmp_path / "p") == tmp_path / "p" / "images" / "a.png"
    case.rel_path = "../outside.png"
    with pytest.raises(DataError, match="outside"):
        prediction_path(case, tmp_path / "p")


def test_one_stem_in_two_formats_is_refused(tmp_path):
    rng = np.random.default_rng(6)
    save(tmp_path / "images" / "a.png", colour(rng))
    save(tmp_path / "images" / "a.jpg", colour(rng))
    with pytest.raises(DataError, match=r"a\.(png|jpg) and .*a\.(png|jpg) are both case 'images/a'"):
        open_dataset(tmp_path)


def test_index_csv_paths_must_stay_inside_the_folder(tmp_path):
    """An absolute path outside the folder (its prediction would mirror it there) is refused; one
    inside it is read as the path below it."""
    save(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "index.csv").write_text(f"image,mask\n{tmp_path / 'a.png'},\n")
    with pytest.raises(DataError, match="must name a file inside"):
        open_dataset(tmp_path / "data")


def test_grey_jpeg_stored_as_rgb_reads_as_greyscale(tmp_path):
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    save(tmp_path / "images" / "g.jpg", np.stack([grey] * 3, axis=-1), quality=70)
    case = open_dataset(tmp_path).load("images/g")
    assert case.image.shape == (1, 48, 64)


# ---------------------------------------------------------------- classes.json


def test_classes_json_range_for_a_class(tmp_path, caplog):
    mask = np.array([[0, 100, 127, 128, 200, 255]] * 3, np.uint8)
    save(tmp_path / "images" / "a.png", np.zeros((3, 6), np.uint8))
    save(tmp_path / "masks" / "a.png", mask)
    (tmp_path / "classes.json").write_text(json.dumps({"1": {"name": "polyp", "min": 128, "max": 255}}))
    caplog.set_level(logging.INFO, logger="fewsam")
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "polyp"}
    case = ds.load("images/a")
    np.testing.assert_array_equal(case.label[0, 0], [0, 0, 0, 1, 1, 1])
    path = write_prediction(case, case.label, tmp_path / "pred")
    np.testing.assert_array_equal(np.asarray(Image.open(path))[0], [0, 0, 0, 255, 255, 255])
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", ds.class_map), case.label)


def test_classes_json_ranges_for_several_classes_and_jpeg(tmp_path, caplog):
    """Fundus-like coding by ranges: cup 0-63, rim 64-191, the rest background (written 255)."""
    mask = np.array([[0, 30, 63, 64, 128, 191, 192, 255]] * 8, np.uint8)
    save(tmp_path / "images" / "f.png", np.zeros((8, 8, 3), np.uint8))
    save(tmp_path / "masks" / "f.png", mask)
    save(tmp_path / "images" / "g.jpg", np.zeros((8, 8, 3), np.uint8))
    save(tmp_path / "masks" / "g.jpg", mask, quality=95)
    spec = {"classes": {"1": {"name": "rim", "min": 64, "max": 191}, "2": {"name": "cup", "max": 63}}}
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    caplog.set_level(logging.INFO, logger="fewsam")
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "rim", 2: "cup"}
    label = ds.load("images/f").label
    np.testing.assert_array_equal(label[0, 0], [2, 2, 2, 1, 1, 1, 0, 0])
    jpeg_raw = np.asarray(Image.open(tmp_path / "masks" / "g.jpg"))
    expected = np.select([jpeg_raw <= 63, jpeg_raw <= 191], [2, 1], 0)
    np.testing.assert_array_equal(ds.load("images/g").label[0], expected)
    assert not [n for n in fewsam_notes(caplog) if "JPEG masks" in n]  # ranges decide, no rounding
    case = ds.load("images/f")
    path = write_prediction(case, label, tmp_path / "pred")
    np.testing.assert_array_equal(np.asarray(Image.open(path))[0], [0, 0, 0, 127, 127, 127, 255, 255])
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", ds.class_map), label)


@pytest.mark.parametrize("spec, pixels, classes", [
    ({"1": "lesion"}, [0, 1, 255], [0, 1, 1]),
    ({"0": "background", "1": "lesion"}, [0, 255], [0, 1]),
    ({"classes": {"1": "liver", "2": "tumour"}}, [0, 1, 2], [0, 1, 2]),
    ({"classes": {"1": "liver", "2": "tumour"}, "pixel_values": {"1": 40, "2": 80}}, [0, 40, 80], [0, 1, 2]),
    ({"1": {"name": "rim", "pixel": 128}, "2": {"name": "cup", "pixel": 0}, "pixel_values": {"0": 255}},
     [255, 128, 0], [0, 1, 2]),
    ({"1": {"name": "organ", "pixel": 7}, "2": {"name": "lesion", "min": 100}}, [0, 7, 100, 250], [0, 1, 2, 2]),
])
def test_classes_json_forms(tmp_path, spec, pixels, classes):
    save(tmp_path / "images" / "a.png", np.zeros((1, len(pixels)), np.uint8))
    save(tmp_path / "masks" / "a.png", np.array([pixels], np.uint8))
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    ds = open_dataset(tmp_path)
    assert 0 not in ds.class_map.names
    case = ds.load("images/a")
    np.testing.assert_array_equal(case.label[0, 0], classes)
    write_prediction(case, case.label, tmp_path / "pred")
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", ds.class_map), case.label)


@pytest.mark.parametrize("spec, message", [
    ({"1": {"name": "a", "min": 100}, "2": {"name": "b", "min": 50, "max": 120}}, "overlap at mask value 100"),
    ({"1": {"name": "a", "min": 200, "max": 100}}, "min 200 above max 100"),
    ({"1": {"name": "a", "max": 300}}, "max=300"),
    ({"1": {"name": "a", "min": 0, "max": 255}}, "leaving none for the background"),
    ({"1": {"name": "a", "min": 10, "max": 20, "pixel": 40}}, "outside its range"),
    ({"1": {"label": "a"}}, "bad class entry '1'"),
    ({"x": "a"}, "bad class entry 'x'"),
    ({"0": "background"}, "only the background"),
    ({"classes": []}, "defines no classes"),
    ([1, 2], "must hold a JSON object"),
    ({"classes": {"1": "a", "2": "b"}, "pixel_values": {"1": 5, "2": 5}}, "share a mask value"),
])
def test_classes_json_mistakes_name_the_file(tmp_path, spec, message):
    save(tmp_path / "images" / "a.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=f"classes.json.*{message}|{message}.*classes.json"):
        open_dataset(tmp_path)


def test_nifti_classes_json_accepts_the_object_form(tmp_path):
    rng = np.random.default_rng(7)
    image, label = volume(rng, classes=2)
    nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), np.eye(4)), _mkdir(tmp_path / "images") / "v.nii.gz")
    nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), np.eye(4)), _mkdir(tmp_path / "labels") / "v.nii.gz")
    (tmp_path / "classes.json").write_text(json.dumps({"0": "bg", "1": {"name": "liver"}, "2": "tumour"}))
    assert open_dataset(tmp_path).class_map.names == {1: "liver", 2: "tumour"}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- folders without labels


def test_images_without_masks_open_for_prediction(tmp_path, caplog):
    rng = np.random.default_rng(8)
    for i in (1, 2, 10):
        save(tmp_path / "images" / f"scan{i}.jpg", colour(rng))
    caplog.set_level(logging.INFO, logger="fewsam")
    ds = open_dataset(tmp_path)
    assert not ds.has_any_label()
    assert ds.split("val") == ["images/scan1", "images/scan2", "images/scan10"]
    assert "train" not in ds.split_names()
    assert any("no labels found" in n and str(tmp_path) in n for n in fewsam_notes(caplog))
    case = ds.load("images/scan10")
    assert case.label is None
    path = write_prediction(case, np.zeros(case.image.shape[:3], np.uint8), tmp_path / "pred")
    assert path.name == "scan10.png"
    with pytest.raises(DataError, match="has no label files"):
        select_labelled(ds, n_cases=1)


def test_unlabelled_folders_keep_the_splits_the_data_names(tmp_path):
    rng = np.random.default_rng(9)
    for split in ("train", "test"):
        for i in range(2):
            save(tmp_path / split / "image" / f"{i}.png", colour(rng))
    ds = open_dataset(tmp_path)
    assert ds.split("test") == ["test/image/0", "test/image/1"]
    assert ds.split("train") == ["train/image/0", "train/image/1"]
    assert ds.split("val") == ds.split("all") and len(ds.split("val")) == 4


def test_nifti_images_without_labels_folder(tmp_path):
    rng = np.random.default_rng(10)
    for name in ("case10", "case2"):
        nib.save(nib.Nifti1Image(volume(rng)[0].transpose(2, 1, 0), np.eye(4)),
                 _mkdir(tmp_path / "images") / f"{name}_0000.nii.gz")
    ds = open_dataset(tmp_path)
    assert ds.layout == "nifti" and not ds.has_any_label()
    assert ds.split("val") == ["case2", "case10"] == ds.split("test")
    case = ds.load("case2")
    assert case.label is None and write_prediction(case, np.zeros(case.image.shape, np.uint8),
                                                   tmp_path / "pred").name == "case2.nii.gz"


def test_labelled_splits_are_unchanged_by_an_unlabelled_image(tmp_path):
    rng = np.random.default_rng(11)
    for i in range(10):
        save(tmp_path / "images" / f"img{i:02d}.png", colour(rng))
        if i != 3:
            save(tmp_path / "masks" / f"img{i:02d}.png", disc())
    ds = open_dataset(tmp_path)
    assert ds.has_any_label() and ds.split("val") == ["images/img05"] and ds.split("test") == ["images/img03"]


# ---------------------------------------------------------------- natural order


def test_natural_key_orders_numbers_by_value():
    names = ["case10", "case2", "Case1", "case1", "case01", "a", "case1b", "x²"]
    assert natural_sorted(names) == ["Case1", "a", "case01", "case1", "case1b", "case2", "case10", "x²"]
    assert natural_key("patient2_frame10") < natural_key("patient10_frame1")


def test_scanned_folders_list_cases_in_natural_order(tmp_path):
    for i in (10, 2, 1, 21, 3):
        save(tmp_path / "images" / f"case{i}.png", np.zeros((4, 4), np.uint8))
        save(tmp_path / "masks" / f"case{i}.png", np.zeros((4, 4), np.uint8))
    ds = open_dataset(tmp_path)
    assert ds.split("all") == [f"images/case{i}" for i in (1, 2, 3, 10, 21)]
    assert ds.split("val") == ["images/case21"]  # every 5th in natural order


def test_index_csv_order_is_kept(tmp_path):
    for name in ("case10", "case2"):
        save(tmp_path / f"{name}.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "index.csv").write_text("image,mask\ncase10.png,\ncase2.png,\n")
    assert open_dataset(tmp_path).split("all") == ["case10", "case2"]


def test_nifti_and_npz_cases_in_natural_order(tmp_path):
    rng = np.random.default_rng(12)
    for name in ("c10", "c9", "c1"):
        for folder, array in zip(("images", "labels"), volume(rng)):
            nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.eye(4)),
                     _mkdir(tmp_path / "n" / folder) / f"{name}.nii.gz")
        make_npz(tmp_path / "f" / f"data_{name[1:]}.npz")
    assert open_dataset(tmp_path / "n").split("all") == ["c1", "c9", "c10"]
    assert open_dataset(tmp_path / "f").split("all") == ["data_1", "data_9", "data_10"]


def test_list_file_order_is_kept(tmp_path):
    for name in ("s1", "s2", "s10"):
        save(tmp_path / "images" / f"{name}.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "mine.list").write_text("s10.png\nimages/s2\nimages/s1.png\n")
    assert open_dataset(tmp_path).split("mine.list") == ["images/s10", "images/s2", "images/s1"]



VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (252 * 3)


def _palette_mask(path: Path, classes: np.ndarray, palette: list[int]) -> None:
    image = Image.fromarray(classes.astype(np.uint8), mode="L")
    image.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_colour_palette_masks_give_their_indices_as_classes_and_predictions_keep_the_palette(tmp_path):
    rng = np.random.default_rng(0)
    masks = []
    for i in range(4):
        save(tmp_path / "images" / f"x{i}.png", colour(rng))
        mask = (disc() > 0).astype(np.uint8) * (1 + i % 2)
        mask[:5, :5] = 3 if i == 3 else mask[:5, :5]  # class 3 only in the last mask
        _palette_mask(tmp_path / "masks" / f"x{i}.png", mask, VOC_PALETTE)
        masks.append(mask)
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "class1", 2: "class2", 3: "class3"}
    case = ds.load("images/x3")
    np.testing.assert_array_equal(case.label[0], masks[3])
    path = write_prediction(case, case.label, tmp_path / "pred")
    written = Image.open(path)
    assert written.mode == "P" and written.getpalette()[:12] == VOC_PALETTE[:12]
    np.testing.assert_array_equal(np.asarray(written), masks[3])
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred", ds.class_map), case.label)


def test_the_void_index_of_voc_palette_masks_is_unannotated_not_a_class(tmp_path):
    """VOC's "void" (palette index 255 along object borders) says the annotator left those pixels
    undecided: read as background, a class's rim was learnt and scored as background."""
    save(tmp_path / "images" / "a.png", np.zeros((48, 64), np.uint8))
    mask = (disc() > 0).astype(np.uint8) * 2
    mask[0, :] = 255  # VOC draws "void" along object borders
    _palette_mask(tmp_path / "masks" / "a.png", mask, VOC_PALETTE[:-3] + [224, 224, 192])
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {2: "class2"} and ds.class_map.ignore == 255
    case = ds.load("images/a")
    label = case.label[0]
    assert case.ignore == 255 and (label[0] == 255).all()
    assert (label == 2).sum() == (disc() > 0).sum() - (disc()[0] > 0).sum()
    path = write_prediction(case, np.where(label == 255, 2, label)[None], tmp_path / "pred")
    assert set(np.unique(np.asarray(Image.open(path)))) == {0, 2}


def test_grey_palette_masks_are_read_as_grey_levels(tmp_path):
    grey = [v for i in range(256) for v in (255 - i,) * 3]  # index 0 shows white, index 255 black
    save(tmp_path / "images" / "a.png", np.zeros((48, 64), np.uint8))
    _palette_mask(tmp_path / "masks" / "a.png", np.where(disc() > 0, 0, 255), grey)  # lesion white
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "foreground"}
    np.testing.assert_array_equal(ds.load("images/a").label[0], (disc() > 0).astype(np.uint8))


def test_an_index_csv_saved_with_semicolons_is_read_as_meant(tmp_path):
    """Excel writes ";" between columns where "," is the decimal mark; the masks of a case with two
    lesions are then joined by "|"."""
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 255
    second = np.zeros((4, 4), np.uint8)
    second[3, 3] = 255
    save(tmp_path / "a.png", np.full((4, 4), 9, np.uint8))
    save(tmp_path / "a_m1.png", mask)
    save(tmp_path / "a_m2.png", second)
    (tmp_path / "index.csv").write_text("image;masks;site;bmi\na.png;a_m1.png|a_m2.png;north;27,5\n")
    ds = open_dataset(tmp_path)
    case = ds.load("a")
    assert case.label[0].sum() == 2 and case.label[0, 0, 0] == 1 and case.label[0, 3, 3] == 1
    assert case.attributes["site"] == "north" and case.attributes["bmi"] == 27.5


@pytest.mark.parametrize("levels, refused", [((0, 1000, 2000), True), ((0, 65535), False), ((0, 1, 2), False)])
def test_a_16_bit_mask_whose_classes_would_merge_when_clipped_is_refused(tmp_path, levels, refused):
    """Two values above 255 would both be read as 255: their classes would silently become one."""
    mask = np.zeros((6, 6), np.uint16)
    for i, value in enumerate(levels):
        mask[i * 2:(i + 1) * 2] = value
    save(tmp_path / "images" / "a.png", np.full((6, 6), 9, np.uint8))
    save(tmp_path / "masks" / "a.png", mask)
    if refused:
        with pytest.raises(DataError, match="several values above 255 \\(1000, 2000\\)"):
            open_dataset(tmp_path).load("images/a")
    else:
        assert len(np.unique(open_dataset(tmp_path).load("images/a").label)) == len(levels)
