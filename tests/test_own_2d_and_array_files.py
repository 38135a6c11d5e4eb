"""Data a user brings from other tools as those tools lay it out: SSL4MIS h5 folders, index tables written
on Windows or by spreadsheets, 2D mask folders."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import assert_one_line_error, run_fewsam
from fewsam.data import open_dataset
from fewsam.data.budget import select_labelled
from fewsam.errors import DataError
from fewsam.info import dataset_info


def _acdc_case(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = image, label


def ssl4mis_acdc(root: Path) -> Path:
    """ACDC as SSL4MIS's release lays it out: volumes in data/, the training slices in data/slices/."""
    rng = np.random.default_rng(0)
    label = np.zeros((2, 12, 10), np.uint8)
    label[:, 3:9, 2:8] = 1
    label[:, 4:7, 3:6] = 3
    for case in ("patient001_frame01", "patient002_frame01"):
        _acdc_case(root / "data" / f"{case}.h5", rng.random(label.shape, np.float32), label)
    for z in range(2):
        _acdc_case(root / "data" / "slices" / f"patient001_frame01_slice_{z}.h5", rng.random((12, 10), np.float32),
                   label[z])
    (root / "train_slices.list").write_text("patient001_frame01_slice_0\npatient001_frame01_slice_1\n")
    (root / "val.list").write_text("patient002_frame01\n")
    return root


def test_ssl4mis_training_slices_in_data_slices_are_the_train_split(tmp_path):
    """SSL4MIS opens data/slices/<case>.h5 for each line of train_slices.list: read from data/ alone, every line
    named a missing case and the labelled budget could not be taken."""
    ds = open_dataset(ssl4mis_acdc(tmp_path / "acdc"))
    assert ds.split("train") == ["patient001_frame01_slice_0", "patient001_frame01_slice_1"]
    case = ds.load("patient001_frame01_slice_1")
    assert case.image.shape == (1, 12, 10) and sorted(np.unique(case.label)) == [0, 1, 3]
    assert ds.split("val") == ["patient002_frame01"]


def test_a_slice_in_both_data_and_data_slices_is_refused_naming_both(tmp_path):
    root = ssl4mis_acdc(tmp_path / "acdc")
    with h5py.File(root / "data" / "slices" / "patient001_frame01_slice_0.h5") as f:
        _acdc_case(root / "data" / "patient001_frame01_slice_0.h5", f["image"][()], f["label"][()])
    result = run_fewsam("info", str(root), cwd=tmp_path)
    assert_one_line_error(result, "are both case 'patient001_frame01_slice_0'")
    assert "slices/patient001_frame01_slice_0.h5" in result.stderr


def image_mask_pairs(root: Path, count: int = 5) -> list[tuple[str, str]]:
    """``count`` 16 x 14 images in root/imgs/ with 0/255 masks in root/gt/, as (image, mask) paths below root."""
    rng = np.random.default_rng(1)
    (root / "imgs").mkdir(parents=True)
    (root / "gt").mkdir()
    pairs = []
    for i in range(count):
        mask = np.zeros((16, 14), np.uint8)
        mask[3:9 + i, 2:10] = 255
        Image.fromarray(rng.integers(0, 200, mask.shape, dtype=np.uint8)).save(root / "imgs" / f"c {i}.png")
        Image.fromarray(mask).save(root / "gt" / f"c {i}.png")
        pairs.append((f"imgs/c {i}.png", f"gt/c {i}.png"))
    return pairs


def test_index_paths_written_on_windows_find_their_masks(tmp_path):
    """An index.csv from Excel or pandas on Windows names masks as gt\\c 0.png: the image was found, and its
    mask said to be missing when the case was read."""
    root = tmp_path / "data"
    rows = [f"{image.replace('/', chr(92))},{mask.replace('/', chr(92))}" for image, mask in image_mask_pairs(root)]
    (root / "index.csv").write_bytes(("image,mask\r\n" + "\r\n".join(rows) + "\r\n").encode())
    ds = open_dataset(root)
    label = ds.load("imgs/c 2").label
    assert label is not None and int(label.sum()) == 8 * 8


def test_index_paths_in_another_letter_case_than_the_files_read_the_files(tmp_path, notices):
    """An index.csv written on Windows or macOS, whose file systems ignore letter case, names IMGS/C 2.PNG for
    imgs/c 2.png: on Linux every case was refused as "not found" when read."""
    root = tmp_path / "data"
    rows = [f"{image.upper()},{mask.replace('gt/', 'GT/')}" for image, mask in image_mask_pairs(root)]
    (root / "index.csv").write_text("image,mask\n" + "\n".join(rows) + "\n")
    ds = open_dataset(root)
    assert ds.split("all") == [f"imgs/c {i}" for i in range(5)]
    label = ds.load("imgs/c 2").label
    assert label is not None and int(label.sum()) == 8 * 8
    assert any("10 path(s) differ in letter case from the files on disk (IMGS/C 0.PNG is imgs/c 0.png)"
               in r.getMessage() for r in notices.records)


def test_an_index_path_matching_two_files_in_other_letter_cases_is_refused_naming_them(tmp_path):
    root = tmp_path / "data"
    rows = [f"{image},{mask}" for image, mask in image_mask_pairs(root)]
    (root / "imgs" / "c 0.png").rename(root / "imgs" / "C 0.png")
    (root / "imgs" / "C 0.PNG").write_bytes((root / "imgs" / "c 1.png").read_bytes())
    (root / "index.csv").write_text("image,mask\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"index.csv: imgs/c 0.png names no file, and 2 files differ from it only in "
                                        r"letter case \(C 0.PNG, C 0.png in "):
        open_dataset(root)


def test_index_columns_in_capitals_are_read_by_their_names(tmp_path):
    """A spreadsheet's "Image", "Mask", "Split" header: "Image" was refused as no 'image' column, and a "Split"
    column beside lower-case paths was read as a group attribute, so the user's val and test images went to
    the computed splits (the test image among the training ones) without a word."""
    root = tmp_path / "data"
    splits = ["train", "train", "val", "test", "train"]
    rows = [f"{image},{mask},{split}" for (image, mask), split in zip(image_mask_pairs(root), splits)]
    (root / "index.csv").write_text("Image,Mask,Split\n" + "\n".join(rows) + "\n")
    ds = open_dataset(root)
    assert [ds.split(name) for name in ("train", "val", "test")] == [
        ["imgs/c 0", "imgs/c 1", "imgs/c 4"], ["imgs/c 2"], ["imgs/c 3"]]
    assert ds.load("imgs/c 3").label is not None


def test_an_index_with_split_and_split_columns_is_refused_naming_both(tmp_path):
    root = tmp_path / "data"
    rows = [f"{image},{mask},train,val" for image, mask in image_mask_pairs(root)]
    (root / "index.csv").write_text("image,mask,split,Split\n" + "\n".join(rows) + "\n")
    assert_one_line_error(run_fewsam("info", str(root), cwd=tmp_path), "columns 'split' and 'Split' are both")


def test_an_index_pairing_image_with_label_as_monai_lists_do_reads_the_masks(tmp_path):
    """MONAI's data lists pair "image" with "label": the masks were read as a group attribute of paths, every
    image was unlabelled and a fit said the folder had no label files."""
    root = tmp_path / "data"
    rows = [f"{image},{mask},benign" for image, mask in image_mask_pairs(root)]
    (root / "index.csv").write_text("image,label,pathology\n" + "\n".join(rows) + "\n")
    ds = open_dataset(root)
    assert all(ds.has_label(case_id) for case_id in ds.entries)
    assert int(ds.load("imgs/c 1").label.sum()) == 7 * 8
    assert "label" not in ds.attributes_of("imgs/c 1")


def test_an_index_label_column_of_words_stays_an_attribute(tmp_path):
    root = tmp_path / "data"
    rows = [f"{image},{mask},benign" for image, mask in image_mask_pairs(root)]
    (root / "index.csv").write_text("image,mask,label\n" + "\n".join(rows) + "\n")
    ds = open_dataset(root)
    assert ds.attributes_of("imgs/c 1")["label"] == "benign" and ds.load("imgs/c 1").label is not None


def left_atrium_volumes(root: Path, unlabelled: str) -> Path:
    """UA-MT's left atrium layout (a folder per case of mri_norm2.h5, (x, y, z)), case ``unlabelled`` without its
    'label' dataset, first in train.list."""
    rng = np.random.default_rng(2)
    names = ["CASE00", "CASE01", "CASE02", "CASE03"]
    for name in names:
        label = np.zeros((12, 10, 6), np.uint8)
        label[3:9, 2:8, 1:5] = 1
        with h5py.File(_folder(root / "LA" / name) / "mri_norm2.h5", "w") as f:
            f["image"] = rng.random(label.shape, np.float32)
            if name != unlabelled:
                f["label"] = label
    (root / "train.list").write_text("\n".join([unlabelled, *(n for n in names[:3] if n != unlabelled)]) + "\n")
    (root / "test.list").write_text("CASE03\n")
    return root


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_an_h5_volume_without_a_label_is_unlabelled_and_left_out_of_the_budget(tmp_path):
    """An h5 file without 'label' was counted labelled: info said so, and --labeled-cases took it first, the fit
    stopping after embedding it with "some labelled slices have no label file", naming no case."""
    root = left_atrium_volumes(tmp_path / "la", unlabelled="CASE01")
    ds = open_dataset(root)
    assert [ds.has_label(case_id) for case_id in ("CASE00", "CASE01", "CASE02")] == [True, False, True]
    assert {ref.case_id for ref in select_labelled(ds, n_cases=1)} == {"CASE00"}
    assert dataset_info(root)["defaults"]["fit"]["budget_order"]["first"] == "CASE00:0"


def test_an_h5_volume_without_a_label_is_never_drawn_into_the_computed_validation(tmp_path):
    """Without train.list, train and val are drawn from the files: one without 'label' was taken as labelled and
    drawn into val, whose validation then had nothing to score. It is held out in test, as every layout holds out
    its unlabelled images."""
    root = left_atrium_volumes(tmp_path / "la", unlabelled="CASE02")
    (root / "train.list").unlink()
    ds = open_dataset(root)
    assert ds.split("val") == ["CASE01"]
    assert ds.split("train") == ["CASE00"]
    assert ds.split("test") == ["CASE03", "CASE02"]


def test_an_ssl4mis_validation_volume_without_a_label_is_counted_unlabelled(tmp_path):
    root = ssl4mis_acdc(tmp_path / "acdc")
    with h5py.File(root / "data" / "patient002_frame01.h5", "a") as f:
        del f["label"]
    assert not open_dataset(root).has_label("patient002_frame01")
    assert dataset_info(root)["splits"]["val"]["labelled"] == 0


def test_a_list_of_image_paths_from_the_working_folder_names_the_cases(tmp_path, monkeypatch):
    """``ls data/imgs/*.png > val.txt`` run beside the data folder lists data/imgs/c 1.png: below the data folder
    it named no file, and the list was refused as naming cases with no file."""
    root = tmp_path / "data"
    rows = [f"{image},{mask}" for image, mask in image_mask_pairs(root)]
    (root / "index.csv").write_text("image,mask\n" + "\n".join(rows) + "\n")
    (tmp_path / "val.txt").write_text("data/imgs/c 1.png\ndata\\imgs\\c 3.png\n")
    monkeypatch.chdir(tmp_path)
    assert open_dataset("data").split("val.txt") == ["imgs/c 1", "imgs/c 3"]


def test_a_float_colour_tiff_is_read_with_its_values(tmp_path):
    """A float32 RGB TIFF (as tifffile, scikit-image and ITK save normalised microscopy pictures), which Pillow
    has no decoder for, was refused as "truncated or not an image"."""
    root = tmp_path / "data"
    root.mkdir()
    picture = np.random.default_rng(3).random((16, 14, 3)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(picture, isVector=True), str(root / "c0.tif"))
    mask = np.zeros((16, 14), np.uint8)
    mask[4:9, 3:8] = 255
    Image.fromarray(mask).save(root / "c0_mask.png")
    case = open_dataset(root).load("c0")
    assert case.image.shape == (1, 16, 14, 3)
    np.testing.assert_array_equal(case.image[0], picture)
    assert int(case.label.sum()) == 25


def _float_colour_tiff_mask(root: Path, channels: list[np.ndarray]) -> Path:
    """c0.png with its mask c0_mask.tif, float32 colour of ``channels``, as ITK and tifffile save a label kept
    beside a float RGB picture."""
    root.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 14), np.uint8)).save(root / "c0.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.stack(channels, axis=-1).astype(np.float32), isVector=True),
                    str(root / "c0_mask.tif"))
    return root


def test_a_float_colour_tiff_mask_of_equal_channels_is_read_as_its_label(tmp_path):
    """Pillow has no decoder for float colour TIFFs: the mask was refused as "truncated or not an image", though
    float colour TIFF pictures are read (through ITK)."""
    mask = np.zeros((16, 14), np.float32)
    mask[4:9, 3:8] = 255
    dataset = open_dataset(_float_colour_tiff_mask(tmp_path / "data", [mask] * 3))
    label = dataset.load("c0").label
    assert label is not None and label.shape == (1, 16, 14)
    np.testing.assert_array_equal(label[0], mask > 0)
    assert dataset.mask_coding()["to_pixel"] == {"0": 0, "1": 255}


def test_a_float_colour_tiff_mask_of_different_channels_is_refused_naming_it(tmp_path):
    mask = np.zeros((16, 14), np.float32)
    mask[4:9, 3:8] = 255
    root = _float_colour_tiff_mask(tmp_path / "data", [mask, mask / 2, mask])
    with pytest.raises(DataError, match=r"c0_mask.tif is a float colour TIFF whose channels differ"):
        open_dataset(root).load("c0")


def test_a_damaged_tiff_is_still_said_to_be_damaged(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "c0.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    Image.fromarray(np.zeros((16, 14), np.uint8)).save(root / "c0_mask.png")
    with pytest.raises(DataError, match=r"cannot read .*c0.tif \(truncated or not an image\?\)"):
        open_dataset(root).load("c0")


def jpeg_masks(root: Path, levels: tuple[int, ...], quality: int = 75) -> Path:
    """Two images with JPEG masks of nested squares at ``levels`` (background 0), as ``X.png`` + ``X_mask.jpg``."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(2):
        mask = np.zeros((48, 40), np.uint8)
        for k, level in enumerate(levels):
            mask[6 + 6 * k:42 - 6 * k, 4 + 5 * k + i:36 - 5 * k] = level
        Image.fromarray(rng.integers(0, 200, mask.shape, dtype=np.uint8)).save(root / f"c{i}.png")
        Image.fromarray(mask).save(root / f"c{i}_mask.jpg", quality=quality)
    return root


def test_a_jpeg_mask_of_three_grey_levels_is_not_read_as_one_class(tmp_path):
    """A 0/128/255 mask saved as JPEG in a set read as 0/255: each pixel went to the nearest of 0 and 255, so the
    128 class joined the 255 one without a word, where the same mask saved as PNG is refused."""
    ds = open_dataset(jpeg_masks(tmp_path / "data", (128, 255)))
    advice = r'"1": \{"name": "class1", "pixel": 12\d\}, "2": \{"name": "class2", "pixel": 255\}'
    with pytest.raises(DataError, match=r"c0_mask.jpg \(JPEG\) holds a region of grey level about 12\d, far from the "
                                        r"values \[0, 1, 255\].*" + advice):
        ds.load("c0")


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_a_jpeg_mask_of_one_class_still_reads_through_its_blurred_edges(tmp_path, quality):
    label = open_dataset(jpeg_masks(tmp_path / "data", (255, 0, 255), quality)).load("c1").label
    assert label is not None and set(np.unique(label)) == {0, 1}


def test_fairseg_split_folders_in_any_spelling_are_its_splits(tmp_path):
    """Harvard-FairSeg files in training/, validation/, testing/ (renamed from the release's Training/, ...): no
    such folder was known, and the data was refused with the advice to give one of them as --data."""
    root = tmp_path / "fairseg"
    mask = np.zeros((12, 10), np.int8)
    mask[2:9, 2:8], mask[4:6, 4:6] = -1, -2
    for folder in ("training", "validation", "TESTING"):
        (root / folder).mkdir(parents=True)
        np.savez(root / folder / "data_00001.npz", slo_fundus=np.full(mask.shape, 90, np.uint8), disc_cup_mask=mask,
                 race=0, gender=1, age=60.0)
    ds = open_dataset(root)
    assert [ds.split(name) for name in ("train", "val", "test")] == [
        ["training/data_00001"], ["validation/data_00001"], ["TESTING/data_00001"]]


def test_transunets_slice_list_names_the_synapse_cases_of_its_slices(tmp_path):
    """TransUNet's and SAMed's lists_Synapse/train.txt names slices (case0005_slice000, case0005_slice001, ...):
    only a case's first slice named it, and the list was refused as naming cases with no file."""
    root = tmp_path / "synapse"
    (root / "train_npz").mkdir(parents=True)
    label = np.zeros((12, 10), np.float32)
    label[3:8, 2:7] = 1
    for case in ("case0005", "case0006"):
        for z in range(3):
            np.savez(root / "train_npz" / f"{case}_slice{z:03d}.npz", image=np.full(label.shape, 0.3 + 0.1 * z,
                     np.float32), label=label)
    lines = ["case0006_slice000", "case0006_slice001", "case0005_slice002", "case0005_slice000"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    assert open_dataset(root).split(str(tmp_path / "train.txt")) == ["case0006", "case0005"]
    (tmp_path / "twice.txt").write_text("case0005\ncase0005_slice001\n")
    with pytest.raises(DataError, match="names 1 case\\(s\\) more than once: case0005"):
        open_dataset(root).split(str(tmp_path / "twice.txt"))


@pytest.mark.parametrize("images, masks", [("imgs", "gts"), ("images", "GTs"), ("img", "seg")])
def test_masks_in_gts_or_seg_beside_the_images_are_their_labels(tmp_path, images, masks):
    """PNG masks in gts/ beside imgs/ (MedSAM's and many SAM fine-tuning repositories' names) were read as images:
    each mask a case of its own, and every image unlabelled."""
    root = tmp_path / "data"
    for i, (image, mask) in enumerate(image_mask_pairs(tmp_path / "pairs", count=3)):
        for folder, source in ((images, image), (masks, mask)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "pairs" / source).rename(root / folder / f"c{i}.png")
    ds = open_dataset(root)
    assert sorted(ds.entries) == [f"{images}/c{i}" for i in range(3)]
    assert all(ds.has_label(case_id) for case_id in ds.entries)


def test_a_gts_folder_given_as_data_is_refused_naming_its_dataset(tmp_path):
    root = tmp_path / "data"
    for i, (image, mask) in enumerate(image_mask_pairs(tmp_path / "pairs", count=3)):
        for folder, source in (("imgs", image), ("gts", mask)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "pairs" / source).rename(root / folder / f"c{i}.png")
    assert_one_line_error(run_fewsam("info", str(root / "gts"), cwd=tmp_path), "give the parent folder")


def test_a_jpeg_mask_enlarged_with_smooth_edges_still_reads_as_one_class(tmp_path):
    """An edge smoothed by enlarging a small mask (bilinear, 16 times) is a wide ramp of greys, no region of one
    level: it reads as the nearest of 0 and 255, as before."""
    root = tmp_path / "data"
    root.mkdir()
    small = np.zeros((8, 8), np.uint8)
    small[2:6, 2:5] = 255
    Image.fromarray(small).resize((128, 128), Image.BILINEAR).save(root / "c0_mask.jpg", quality=75)
    Image.fromarray(np.random.default_rng(5).integers(0, 200, (128, 128), dtype=np.uint8)).save(root / "c0.png")
    assert set(np.unique(open_dataset(root).load("c0").label)) == {0, 1}


def test_two_folders_of_one_naming_without_masks_are_said(tmp_path):
    """Masks in a folder no reader knows by name (targets/) were read as images without a word: each a case of its
    own, and a fit refused the folder as having no label files, naming neither folder."""
    root = tmp_path / "data"
    for i, (image, mask) in enumerate(image_mask_pairs(tmp_path / "pairs", count=3)):
        for folder, source in (("images", image), ("targets", mask)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "pairs" / source).rename(root / folder / f"c{i}.png")
    result = run_fewsam("info", str(root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "data/images and " in said and "data/targets hold files of the same names (3)" in said


def test_an_index_naming_paths_from_the_folder_above_finds_its_files(tmp_path):
    """data/index.csv written by a script run beside data/ names data/imgs/c 0.png: read below data/, each image
    was data/data/imgs/c 0.png, said missing when a fit read it (while info counted every image labelled)."""
    root = tmp_path / "data"
    rows = [f"data/{image},data/{mask}" for image, mask in image_mask_pairs(root)]
    (root / "index.csv").write_text("image,mask\n" + "\n".join(rows) + "\n")
    ds = open_dataset(root)
    assert sorted(ds.entries)[:2] == ["imgs/c 0", "imgs/c 1"]
    assert int(ds.load("imgs/c 0").label.sum()) == 6 * 8


def test_a_volume_slice_is_placed_where_the_data_keeps_its_slices(tmp_path):
    """A labelled slice of a volume written as a case of its own lands in data/slices/ beside SSL4MIS's own, so a
    copy into the data replaces that slice's file; in data/ it was a second file of one case, refused."""
    ds = open_dataset(ssl4mis_acdc(tmp_path / "acdc"))
    assert ds.slice_case_rel_path("patient002_frame01", 1) == "data/slices/patient002_frame01_slice_1.h5"
