"""What --data is given as, when it is not a dataset's folder fewsam can read: an archive of one, a
single image, a folder with nothing (or only what macOS leaves) in it, Analyze .hdr/.img pairs.
Each is one `error:` line naming what the path is and what to give instead."""

from __future__ import annotations

import gzip
import io
import logging
import os
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


# --- a NIfTI header whose voxel sizes and sform disagree ---------------------------------------

@pytest.fixture
def notices(caplog, monkeypatch):
    """What ``say_once`` tells the user during a test (as if the process had said nothing yet)."""
    from fewsam import progress

    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level(logging.INFO, logger="fewsam")
    return caplog


def sform_only_dataset(root: Path, pixdim: float | tuple[float, float, float]) -> Path:
    """images/ + labels/ whose files carry their voxel sizes (0.5 x 0.5 x 3 mm) in the sform alone, pixdim
    holding ``pixdim`` (0: never written, as some converters leave it)."""
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    for sub, data in (("images", np.ones((6, 6, 3), np.float32)), ("labels", np.zeros((6, 6, 3), np.uint8))):
        (root / sub).mkdir(parents=True)
        img = nib.Nifti1Image(data, affine)
        img.set_qform(None, code=0)
        img.header["pixdim"][1:4] = pixdim
        img.to_filename(root / sub / "c0.nii.gz")
    return root


@pytest.mark.parametrize("pixdim", [0.0, -1.0])
def test_voxel_sizes_that_differ_from_the_sform_are_said(tmp_path, notices, pixdim):
    """nibabel reads pixdim 0 as 1 mm (and -1 as 1), ITK too, while the sform, which nibabel's viewers show,
    says 0.5 x 0.5 x 3 mm: distances (HD95) were taken in 1 mm voxels without a word."""
    from fewsam.data import open_dataset

    case = open_dataset(sform_only_dataset(tmp_path / "data", pixdim)).load("c0")
    assert case.spacing == (1.0, 1.0, 1.0)  # as ITK reads the file
    said = [r.getMessage() for r in notices.records if "sform" in r.getMessage()]
    assert said == [f"{tmp_path / 'data' / 'images' / 'c0.nii.gz'}: its header's voxel sizes (1 x 1 x 1 mm; a "
                    "stored 0 reads as 1) differ from its sform's (0.5 x 0.5 x 3 mm); fewsam takes the header's, as "
                    "ITK (3D Slicer, ITK-SNAP, nnU-Net) does, for distances (HD95, ASD) and the slice direction; "
                    "rewrite the header if the sform's are right"]


def test_info_says_voxel_sizes_that_differ_from_the_sform(tmp_path, notices):
    """``fewsam info`` counts a case's slices along the axis these sizes choose, and loads no case."""
    from fewsam.data import open_dataset

    assert open_dataset(sform_only_dataset(tmp_path / "data", 0.0)).num_slices("c0") == 3
    assert [r.getMessage() for r in notices.records if "differ from its sform's" in r.getMessage()] != []


def test_voxel_sizes_that_agree_with_the_sform_say_nothing(tmp_path, notices):
    from fewsam.data import open_dataset

    case = open_dataset(sform_only_dataset(tmp_path / "data", (0.5, 0.5, 3.0))).load("c0")
    assert case.spacing == (3.0, 0.5, 0.5)
    assert [r.getMessage() for r in notices.records if "sform" in r.getMessage()] == []


def test_a_nii_gz_of_something_else_is_refused_without_nibabels_header_chatter(tmp_path, monkeypatch, caplog):
    """Probing the content of a file nibabel cannot open (``_by_content``) printed nibabel's header repairs
    ("sizeof_hdr should be 348; set sizeof_hdr to 348") above fewsam's one `error:` line."""
    from fewsam.data import open_dataset
    from fewsam.errors import DataError

    printed = io.StringIO()  # what nibabel's own handler would print on stderr
    for handler in nib.imageglobals.logger.handlers:
        monkeypatch.setattr(handler, "stream", printed)
    caplog.set_level(logging.DEBUG)  # and what reaches the root logger's handlers
    data = volume_folder(tmp_path / "data")
    with gzip.open(data / "images" / "c0.nii.gz", "wb") as f:
        f.write(b"not a volume, a note gzipped under a volume's name " * 20)
    with pytest.raises(DataError, match=r"cannot read NIfTI .*c0\.nii\.gz \(truncated or not NIfTI\?\)"):
        open_dataset(data).load("c0")
    assert printed.getvalue() == ""
    assert [r.getMessage() for r in caplog.records if r.name.startswith("nibabel")] == []


def test_a_nifti_file_fewsam_may_not_read_is_named_as_such(tmp_path, monkeypatch):
    """A volume without read permission was "cannot read NIfTI ... (truncated or not NIfTI?): Could not read
    file", sending the user after a damaged file; PNG and MetaImage files said "Permission denied". (Root
    reads any file, so the refusal is made here as the file system makes it for another user.)"""
    import builtins

    from fewsam.data import open_dataset
    from fewsam.errors import is_not_permitted, not_permitted_message

    data = volume_folder(tmp_path / "data")
    locked = data / "images" / "c0.nii.gz"
    opened = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return opened(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    monkeypatch.setattr(io, "open", refusing_open)
    with pytest.raises(PermissionError) as refused:
        open_dataset(data).load("c0")
    assert is_not_permitted(refused.value)
    assert not_permitted_message(refused.value).startswith(f"Permission denied: {locked}; give fewsam access to it")


def test_a_folder_below_the_data_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    """``os.walk`` skips a folder it may not list: images/b/'s cases were missing, and its masks were
    said to "have no image of their name", sending the user after the names."""
    from fewsam.data import open_dataset
    from fewsam.errors import is_not_permitted

    data = tmp_path / "data"
    for sub in ("images/a", "images/b", "masks/a", "masks/b"):
        (data / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / sub / f"{sub[-1]}1.png")
    locked = data / "images" / "b"
    listed = os.scandir

    def refusing_scandir(path="."):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return listed(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    with pytest.raises(PermissionError) as refused:
        open_dataset(data)
    assert is_not_permitted(refused.value) and refused.value.filename == str(locked)


def test_a_drives_lost_and_found_is_not_listed(tmp_path, monkeypatch):
    """Data at the top of a disk sits beside fsck's lost+found/, which only root may list: now that a folder
    that cannot be listed is refused, that one must not be looked into at all."""
    from fewsam.data import open_dataset

    data = tmp_path / "disk"
    data.mkdir()
    for name in ("c0.png", "c0_mask.png"):  # a folder of 2D images is read whole, at any depth
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / name)
    (data / "lost+found").mkdir()
    listed = os.scandir

    def refusing_scandir(path="."):
        if str(path) == str(data / "lost+found"):
            raise PermissionError(13, "Permission denied", str(path))
        return listed(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    assert open_dataset(data).split("all") == ["c0"]


def test_nibabels_header_repairs_are_said_once_not_per_file(tmp_path, notices, monkeypatch):
    """nibabel printed "pixdim[1,2,3] should be non-zero; setting 0 dims to 1" on stderr for every file it read
    (twice a case: image and label), burying the commands' own lines; said once, naming the first file."""
    from fewsam.data import open_dataset

    printed = io.StringIO()  # what nibabel's own handler would print on stderr
    for handler in nib.imageglobals.logger.handlers:
        monkeypatch.setattr(handler, "stream", printed)
    data = sform_only_dataset(tmp_path / "data", 0.0)
    dataset = open_dataset(data)
    for _ in range(2):
        dataset.load("c0")
    assert printed.getvalue() == ""
    assert [r.getMessage() for r in notices.records if "should be non-zero" in r.getMessage()] == [
        f"{data / 'images' / 'c0.nii.gz'}: pixdim[1,2,3] should be non-zero; setting 0 dims to 1 (nibabel's repair "
        "of its header; said for the first such file)"]
    nib.load(data / "images" / "c0.nii.gz")  # nibabel read by others says it as it always did
    assert "should be non-zero" in printed.getvalue()


def test_a_folder_of_empty_folders_is_named_empty_without_calling_them_tools(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    assert cli_error("info", str(data)).startswith(f"data folder {data} holds no image files (its folders hold no "
                                                   "file); give the folder where")


def test_a_7z_archive_is_named_without_a_command_to_unpack_it(tmp_path):
    archive = tmp_path / "dataset.7z"
    archive.write_bytes(b"7z\xbc\xaf\x27\x1c")
    assert cli_error("info", str(archive)) == (f"{archive} is an archive (.7z), not a data folder; unpack it and give "
                                               "the unpacked dataset's folder as --data")
