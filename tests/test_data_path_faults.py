"""What --data is given as, when it is not a dataset's folder fewsam can read: an archive of one, a
single image, a folder with nothing (or only what macOS leaves) in it, Analyze .hdr/.img pairs.
Each is one `error:` line naming what the path is and what to give instead."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.errors import FewsamError


def cli_error(*args: str) -> str:
    """The FewsamError a command raises (``cli.main`` prints it as one line, exit 2)."""
    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, FewsamError), (result.exception, result.output)
    return str(result.exception)


def volume_folder(root: Path) -> Path:
    """A tiny images/ + labels/ NIfTI dataset."""
    for sub, data in (("images", np.ones((6, 6, 2), np.float32)), ("labels", np.zeros((6, 6, 2), np.uint8))):
        (root / sub).mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), root / sub / "c0.nii.gz")
    return root


def test_a_zip_of_a_dataset_given_as_data_says_to_unpack_it(tmp_path):
    """"is not a folder; give the dataset's root folder" did not say that fewsam reads no archive."""
    archive = Path(shutil.make_archive(str(tmp_path / "dataset"), "zip", volume_folder(tmp_path / "d")))
    assert cli_error("info", str(archive)) == (
        f"{archive} is an archive (.zip), not a data folder; unpack it (unzip {archive}) and give the unpacked "
        "dataset's folder as --data")


def test_a_tar_gz_of_a_dataset_given_as_data_says_to_unpack_it(tmp_path):
    archive = tmp_path / "Dataset.TAR.GZ"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(volume_folder(tmp_path / "d"), arcname="d")
    assert cli_error("info", str(archive)).startswith(f"{archive} is an archive (.tar.gz), not a data folder; "
                                                      f"unpack it (tar xf {archive})")


@pytest.mark.parametrize("name", ["scan.nii.gz", "photo.PNG"])
def test_one_image_file_given_as_data_names_the_folder_to_give(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".nii.gz"):
        nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.float32), np.eye(4)), path)
    else:
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(path, format="PNG")
    assert cli_error("info", str(path)) == (f"{path} is one image file, not a data folder; give the folder that "
                                            f"holds it ({tmp_path.resolve()}), or put it in a folder of its own to "
                                            "predict it alone")


def test_an_empty_folder_given_as_data_is_named_empty(tmp_path):
    """It listed every layout fewsam knows, as if files were there in an unknown layout."""
    (tmp_path / "data").mkdir()
    assert cli_error("info", str(tmp_path / "data")).startswith(f"data folder {tmp_path / 'data'} holds no image "
                                                                "files; give the folder where")


def test_a_folder_of_only_what_macos_leaves_is_named_empty(tmp_path):
    """A zip unpacked elsewhere leaves .DS_Store, ._ files and __MACOSX/ (with images in it) behind."""
    data = tmp_path / "data"
    (data / "__MACOSX").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(data / "__MACOSX" / "x.png")
    (data / ".DS_Store").write_bytes(b"\0" * 8)
    (data / "._x.png").write_bytes(b"\0" * 8)
    assert cli_error("info", str(data)).startswith(f"data folder {data} holds no image files (it holds only "
                                                   ".DS_Store, ._x.png, __MACOSX, which tools leave)")


def test_a_folder_of_other_files_still_lists_the_layouts(tmp_path):
    """Files that are there but in no known layout keep the list of layouts: they are no empty folder."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("x", encoding="utf-8")
    assert cli_error("info", str(tmp_path / "data")).startswith("no known data layout in")


def test_analyze_hdr_img_pairs_are_named_with_the_conversion(tmp_path):
    """SPM's and older scanners' Analyze 7.5 pairs were "no known data layout", as if no volume was there."""
    data = tmp_path / "data"
    for sub, data_array in (("images", np.ones((6, 6, 2), np.float32)), ("labels", np.zeros((6, 6, 2), np.uint8))):
        (data / sub).mkdir(parents=True)
        nib.save(nib.AnalyzeImage(data_array, np.eye(4)), data / sub / "c0.img")
    assert cli_error("info", str(data)) == (
        f"{data} holds Analyze .hdr/.img pairs (images/c0.hdr, ...), which fewsam does not read; convert each pair "
        "to NIfTI, e.g. with nibabel: nib.save(nib.load('c0.hdr'), 'c0.nii.gz')")
