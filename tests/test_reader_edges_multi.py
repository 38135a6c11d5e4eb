"""Input a medical-imaging user brings that a reader could misread: a folder holding several DICOM
series, nnU-Net channel files of one colour image, one-hot label volumes, dataset.json case lists."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from conftest import assert_one_line_error, run_fewsam
from test_dicom import arrays, write_series

from fewsam.data import open_dataset
from fewsam.errors import DataError


def write_two_series_in_one_folder(folder: Path) -> None:
    """A T1 and a T2 of one patient exported into one folder (files named by the exporter)."""
    t1, _ = arrays(0, (6, 6, 5))
    t2, _ = arrays(1, (5, 6, 5))
    write_series(folder, t1, uid="1.2.3.1", extra_tags={"0020|0011": "3", "0008|103e": "T1 MPRAGE"})
    write_series(folder / "t2", t2, uid="1.2.3.2", extra_tags={"0020|0011": "4", "0008|103e": "t2_tse"})
    for path in (folder / "t2").iterdir():
        path.rename(folder / f"t2_{path.name}")
    (folder / "t2").rmdir()


def test_a_folder_of_two_full_dicom_series_is_refused_naming_each_series(tmp_path):
    """The T1 and T2 of one patient in one folder are never stacked into one volume: the refusal
    names each series as a viewer shows it (number, description, UID) and says to split the folder."""
    write_two_series_in_one_folder(tmp_path / "data" / "p1")
    dataset = open_dataset(tmp_path / "data")
    with pytest.raises(DataError) as refusal:
        dataset.load("p1")
    message = str(refusal.value)
    for expected in ("holds 2 DICOM series", "series 3 'T1 MPRAGE' of 6 file(s)", "UID 1.2.3.1",
                     "series 4 't2_tse' of 5 file(s) such as t2_slice1.dcm", "UID 1.2.3.2",
                     "put each series in its own folder (p1/<series>/"):
        assert expected in message, message
    info = run_fewsam("info", "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert "unusable:" in info.stdout and "'T1 MPRAGE'" in info.stdout, info.stdout


def test_two_dicom_series_each_in_its_own_folder_are_two_cases(tmp_path):
    """What the refusal asks for works: each series in a folder of its own is its own case."""
    t1, _ = arrays(0, (6, 6, 5))
    t2, _ = arrays(1, (5, 6, 5))
    write_series(tmp_path / "p1" / "t1", t1, uid="1.2.3.1")
    write_series(tmp_path / "p1" / "t2", t2, uid="1.2.3.2")
    dataset = open_dataset(tmp_path)
    assert sorted(dataset.entries) == ["p1/t1", "p1/t2"]
    np.testing.assert_array_equal(dataset.load("p1/t1").image, t1.astype(np.float32))
    np.testing.assert_array_equal(dataset.load("p1/t2").image, t2.astype(np.float32))


COLOUR_NAMES = [{"0": "R", "1": "G", "2": "B"}, {"0": "red", "1": "green", "2": "blue"}]


def write_colour_channel_dataset(root: Path, colour: np.ndarray, ending: str, channel_names: dict[str, str]) -> None:
    """nnU-Net v2 natural images stored as one file per channel: imagesTr/case0_0000 (R), _0001 (G),
    _0002 (B), each a grey (rows, cols) image; ``colour`` is (rows, cols, 3) uint8."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    label = (colour[..., 0] > 128).astype(np.uint8)
    for c in range(3):
        write_2d(root / "imagesTr" / f"case0_{c:04d}{ending}", colour[..., c])
    write_2d(root / "labelsTr" / f"case0{ending}", label)
    (root / "dataset.json").write_text(json.dumps({"channel_names": channel_names, "numTraining": 1,
                                                   "labels": {"background": 0, "road": 1}, "file_ending": ending}))


def write_2d(path: Path, pixels: np.ndarray) -> None:
    """A 2D image as a PNG, or as a one-slice NIfTI (rows along NIfTI y, as the reader gives them back)."""
    if path.name.endswith(".png"):
        Image.fromarray(pixels).save(path)
    else:
        nib.save(nib.Nifti1Image(pixels.T[..., None], np.eye(4)), path)


def colour_png_image(tmp_path: Path, colour: np.ndarray) -> np.ndarray:
    """The image array fewsam reads from ``colour`` saved as one colour PNG in an image/mask folder."""
    (tmp_path / "png" / "images").mkdir(parents=True)
    (tmp_path / "png" / "masks").mkdir()
    Image.fromarray(colour).save(tmp_path / "png" / "images" / "case0.png")
    Image.fromarray((colour[..., 0] > 128).astype(np.uint8) * 255).save(tmp_path / "png" / "masks" / "case0.png")
    return open_dataset(tmp_path / "png").load("images/case0").image


@pytest.mark.parametrize("ending", [".png", ".nii.gz"])
@pytest.mark.parametrize("channel_names", COLOUR_NAMES)
def test_rgb_channel_files_are_read_as_one_colour_image_as_a_colour_png_is(tmp_path, ending, channel_names):
    """case0_0000/_0001/_0002 under channel_names R, G, B were read as the R channel alone, in grey."""
    colour = np.random.default_rng(3).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_colour_channel_dataset(tmp_path / "nnunet", colour, ending, channel_names)
    case = open_dataset(tmp_path / "nnunet").load("case0")
    assert case.image.shape == (1, 12, 10, 3)
    np.testing.assert_array_equal(case.image, colour_png_image(tmp_path, colour))
    np.testing.assert_array_equal(case.label[0], colour[..., 0] > 128)


def test_a_colour_case_missing_a_channel_file_is_refused_naming_it(tmp_path):
    colour = np.random.default_rng(4).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_colour_channel_dataset(tmp_path / "data", colour, ".nii.gz", COLOUR_NAMES[0])
    (tmp_path / "data" / "imagesTr" / "case0_0002.nii.gz").unlink()
    with pytest.raises(DataError, match="names the channels R, G, B, and the case has no case0_0002.nii.gz"):
        open_dataset(tmp_path / "data").load("case0")


def test_other_channel_names_still_read_channel_0_alone(tmp_path):
    """T2 + ADC (nnU-Net's prostate) are no colour: channel 0 is read, as SAM sees one grey image."""
    colour = np.random.default_rng(5).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_colour_channel_dataset(tmp_path / "data", colour, ".nii.gz", {"0": "T2", "1": "ADC", "2": "DWI"})
    case = open_dataset(tmp_path / "data").load("case0")
    np.testing.assert_array_equal(case.image, colour[None, ..., 0].astype(np.float32))


def test_one_rgb_png_per_case_under_rgb_channel_names_stays_one_colour_image(tmp_path):
    """nnU-Net's own natural-image datasets keep a case's colour in one RGB PNG (case_0000.png)."""
    colour = np.random.default_rng(6).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_colour_channel_dataset(tmp_path / "data", colour, ".png", COLOUR_NAMES[0])
    for c in (1, 2):
        (tmp_path / "data" / "imagesTr" / f"case0_{c:04d}.png").unlink()
    Image.fromarray(colour).save(tmp_path / "data" / "imagesTr" / "case0_0000.png")
    image = open_dataset(tmp_path / "data").load("case0").image
    np.testing.assert_array_equal(image, colour_png_image(tmp_path, colour))
