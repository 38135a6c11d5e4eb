"""The data a user brings, in its less usual spellings and contents: file endings in upper case
(``CASE.NII.GZ``, ``IMG.MHA``, ``DATA.NPZ``), embedding-cache entries that cannot be read or
replaced, and the images, labels and folders that ``info``, ``embed``, ``fit``, ``predict`` and
``evaluate`` must either read as they are or refuse in one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FakeSam, write_h5
from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset, read_prediction, write_prediction
from fewsam.errors import CacheError

AFFINE = np.array([[-0.8, 0.0, 0.0, 10.0], [0.0, 0.9, 0.0, -5.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


def volume(seed: int = 0, shape=(8, 9, 4)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.integers(0, 3, size=shape).astype(np.uint8)


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def save_itk(array_xyz: np.ndarray, path: Path) -> None:
    """``array_xyz`` through SimpleITK under ``path``'s name, written with the lower-case ending ITK
    needs and then renamed as the user's tool named it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lower = path.with_name("written" + "".join(path.suffixes).lower())
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0))), str(lower))
    os.replace(lower, path)


# ---------------------------------------------------------------- endings in upper case


@pytest.mark.parametrize("image_name, label_name", [("A.NII.GZ", "A.NII.GZ"), ("A.NII", "A.nii.gz"),
                                                     ("A.nii.gz", "A_seg.Nii.Gz"), ("A.MHA", "A.NRRD")])
def test_plain_volumes_with_endings_in_upper_case_are_read_with_their_labels(tmp_path, image_name, label_name):
    """Scanner exports and Windows tools write CASE.NII.GZ; such a folder was "no known data layout"
    (and an .MHA image, once found, "Unable to determine ImageIO reader")."""
    image, label = volume()
    for array, path in ((image, tmp_path / "images" / image_name), (label, tmp_path / "labels" / label_name)):
        (save_itk if path.suffix.lower() in (".mha", ".nrrd") else save_nifti)(array, path)
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["A"] and ds.has_any_label()
    case = ds.load("A")
    np.testing.assert_array_equal(case.label, label.transpose(2, 1, 0))
    written = write_prediction(case, case.label, tmp_path / "pred")
    assert written.name == ("A.mha" if image_name.endswith("MHA") else "A.nii.gz")
    np.testing.assert_array_equal(read_prediction(case, tmp_path / "pred"), case.label)


def test_an_nnunet_dataset_with_endings_in_upper_case_is_read(tmp_path):
    image, label = volume()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2},
                                                       "channel_names": {"0": "MR"}, "file_ending": ".NII.GZ"}))
    for case in ("c1", "c2"):
        save_nifti(image, tmp_path / "imagesTr" / f"{case}_0000.NII.GZ")
        save_nifti(label, tmp_path / "labelsTr" / f"{case}.NII.GZ")
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["c1", "c2"] and all(ds.has_label(c) for c in ds.entries)
    np.testing.assert_array_equal(ds.load("c2").label, label.transpose(2, 1, 0))


def test_a_dicom_series_in_upper_case_with_its_label_in_upper_case(tmp_path):
    from test_dicom import arrays, write_label, write_series

    image, label = arrays(0, shape=(3, 6, 5))
    reference = write_series(tmp_path / "images" / "case1", image)
    for path in (tmp_path / "images" / "case1").iterdir():
        path.rename(path.with_name(path.stem.upper() + ".DCM"))
    write_label(tmp_path / "labels" / "case1.mha", label, reference)
    (tmp_path / "labels" / "case1.mha").rename(tmp_path / "labels" / "case1.MHA")
    ds = open_dataset(tmp_path)
    assert ds.has_label("case1")
    np.testing.assert_array_equal(ds.load("case1").label, label)


def test_fairseg_and_acdc_files_with_endings_in_upper_case_are_found(tmp_path):
    rng = np.random.default_rng(0)
    fair = tmp_path / "fair"
    fair.mkdir()
    with open(fair / "DATA_001.NPZ", "wb") as f:  # a path would get ".npz" added
        np.savez(f, slo_fundus=rng.random((16, 16)).astype(np.float32),
                 disc_cup_mask=np.zeros((16, 16), np.int8), race=0, gender=0, hispanic=0, language=0,
                 maritalstatus=0)
    assert list(open_dataset(fair).entries) == ["DATA_001"]
    acdc = tmp_path / "acdc"
    (acdc / "data").mkdir(parents=True)
    write_h5(acdc / "data" / "patient001_frame01_slice_0.H5", rng.random((16, 16)), np.zeros((16, 16)))
    (acdc / "train_slices.list").write_text("patient001_frame01_slice_0\n")
    ds = open_dataset(acdc)
    assert ds.split("train") == ["patient001_frame01_slice_0"]
    assert ds.load("patient001_frame01_slice_0").image.shape == (1, 16, 16)


@pytest.mark.parametrize("layout", ["beside", "folders"])
def test_png_masks_named_with_a_suffix_in_upper_case_are_matched_to_their_images(tmp_path, layout):
    """x_MASK.PNG beside x.png (or masks/x_MASK.png for images/x.PNG) was taken for an image of its
    own and x left unlabelled."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        image = Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8))
        mask = Image.fromarray(((rng.random((12, 10)) > 0.5) * 255).astype(np.uint8))
        if layout == "beside":
            image.save(tmp_path / f"x{i}.png")
            mask.save(tmp_path / f"x{i}_MASK.PNG")
        else:
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / "masks").mkdir(exist_ok=True)
            image.save(tmp_path / "images" / f"x{i}.PNG")
            mask.save(tmp_path / "masks" / f"x{i}_Mask.png")
    dataset = open_dataset(tmp_path)
    assert len(dataset.split("all")) == 3
    assert all(dataset.has_label(c) for c in dataset.split("all"))


# ---------------------------------------------------------------- cache entries that cannot be read or replaced


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((20, 24)).astype(np.float32)


def test_a_folder_in_place_of_a_cache_entry_is_recomputed_and_said(tmp_path, caplog):
    """It was an IsADirectoryError traceback from the cache's clean-up of what it took for a bad entry."""
    import logging

    from fewsam import progress

    progress._said.clear()
    sam, image = FakeSam(), _image()
    cache = EmbeddingCache(tmp_path, sam)
    cache.path_for(cache.key(image)).mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="fewsam"):
        got = cache.embed([image])
    assert got[0].array.shape == (4, 8, 8) and sam.encode_calls == 1
    assert "cannot store the embedding cache entry" in caplog.text and "Is a directory" in caplog.text


def test_a_file_in_place_of_a_cache_shard_folder_is_worked_around(tmp_path):
    sam, image = FakeSam(), _image()
    cache = EmbeddingCache(tmp_path, sam)
    shard = cache.path_for(cache.key(image)).parent
    shard.write_text("not a folder")
    assert cache.embed([image])[0].array.shape == (4, 8, 8)
    assert shard.read_text() == "not a folder"


def test_an_entry_of_a_shared_cache_that_cannot_be_read_or_removed_is_recomputed(tmp_path, monkeypatch):
    """An entry another user's umask left unreadable, in a shard folder of theirs: it was a
    PermissionError traceback from removing it; now a miss, encoded again and used."""
    from pathlib import Path as PathType

    sam, image = FakeSam(), _image()
    cache = EmbeddingCache(tmp_path, sam)
    cache.embed([image])

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "load", refused)
    monkeypatch.setattr(PathType, "unlink", refused)
    monkeypatch.setattr("fewsam.cache.atomic_write", refused)
    assert cache.embed([image])[0].array.shape == (4, 8, 8) and sam.encode_calls == 2


def test_a_cache_model_folder_that_is_a_file_is_one_error(tmp_path):
    sam = FakeSam()
    folder = EmbeddingCache(tmp_path, sam).dir
    shutil.rmtree(folder)
    folder.write_text("x")
    with pytest.raises(CacheError, match="is a file, not a folder"):
        EmbeddingCache(tmp_path, sam)


# ---------------------------------------------------------------- large 2D images


def _image_folder(root: Path, size: int) -> Path:
    from PIL import Image

    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
        Image.fromarray(np.eye(size, dtype=np.uint8) * 255).save(root / folder / "a.png")
    return root


def test_a_large_2d_image_reads_without_a_warning_of_an_attack(tmp_path, monkeypatch):
    """Pillow warns of a "decompression bomb DOS attack" on stderr above its pixel limit; the file
    is the user's own scan, read as it is (the limit shrunk here so the image stays small)."""
    import warnings

    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    ds = open_dataset(_image_folder(tmp_path, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        case = ds.load("images/a")
    assert case.image.shape == (1, 12, 12) and case.label.sum() == 12


def test_an_image_beyond_what_pillow_decodes_is_named_as_too_large_not_damaged(tmp_path, monkeypatch):
    from PIL import Image

    from fewsam.errors import DataError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="has more than 200 pixels, more than Pillow decodes; downsample it"):
        open_dataset(_image_folder(tmp_path, 16)).load("images/a")


# ---------------------------------------------------------------- names in other scripts


@pytest.mark.parametrize("ending", [".mhd", ".nhdr"])
def test_a_header_whose_voxel_file_has_a_non_ascii_name_is_read(tmp_path, ending):
    """The header names its voxel file in UTF-8 ("Fall ö.raw"); read as Latin-1, that name was a
    file that does not exist, and the volume was refused as having lost its voxel file."""
    image, _ = volume()
    folder = tmp_path / "Daten mit Lücken" / "images"
    folder.mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(image.transpose(2, 1, 0))),
                    str(folder / f"Fall ö 数据{ending}"))
    case = open_dataset(folder.parent).load("Fall ö 数据")
    np.testing.assert_allclose(case.image, image.transpose(2, 1, 0))


# ---------------------------------------------------------------- tiny images


@pytest.mark.parametrize("view", range(8))
def test_every_turned_view_of_a_one_pixel_strip_is_embedded(tmp_path, view):
    """A 1 x N image (a strip) turned by a quarter for the views few-shot SAM trains on kept a
    backwards step on its axis of length 1, and ``fewsam fit`` ended in torch's "negative strides"
    traceback."""
    from fewsam.data.types import Case
    from fewsam.embedded import CaseSlices, undo_dihedral

    label = np.zeros((1, 1, 20), np.uint8)
    label[0, 0, :7] = 1
    case = Case("strip", np.linspace(0, 1, 20, dtype=np.float32).reshape(1, 1, 20), label, "png", "strip.png")
    turned = CaseSlices(case, EmbeddingCache(tmp_path, FakeSam())).view(view)[0]
    assert turned.label_frame is not None and int((turned.label_frame == 1).sum()) == 7
    back = undo_dihedral(turned.label[None], view)
    np.testing.assert_array_equal(back, label)
    assert min(back.strides) >= 0


# ---------------------------------------------------------------- files macOS leaves beside the data

APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(200)


def test_macos_metadata_files_beside_npz_and_h5_files_are_not_cases(tmp_path):
    """``._data_001.npz`` (macOS metadata, copied along to a USB drive or into a zip) was read as a
    case: FairSeg's default splits, and ACDC's 'all', ended in "cannot read ... ._data_001.npz"."""
    from conftest import write_tiny_acdc

    fair = tmp_path / "fair"
    fair.mkdir()
    np.savez(fair / "data_001.npz", slo_fundus=np.ones((16, 16), np.float32),
             disc_cup_mask=np.zeros((16, 16), np.int8), race=0, gender=0, hispanic=0, language=0, maritalstatus=0)
    (fair / "._data_001.npz").write_bytes(APPLE_DOUBLE)
    acdc = write_tiny_acdc(tmp_path / "acdc", ["patient010_frame01"])
    (acdc / "data" / "._patient010_frame01.h5").write_bytes(APPLE_DOUBLE)
    assert list(open_dataset(fair).entries) == ["data_001"]
    assert "._patient010_frame01" not in open_dataset(acdc).split("all")
