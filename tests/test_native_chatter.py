"""What native libraries print themselves (libjpeg and OpenJPEG inside GDCM, MetaIO, ITK's warnings) kept
off the terminal: a damaged compressed DICOM series or a cut-short MetaImage ends in the one ``error:``
line, with the decoder's reason in a few words; a read that succeeds despite the decoder's complaint is
said once; the printed text goes to the command's log, as do the Python warnings of the libraries the
readers use (Pillow's on a damaged TIFF)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_fewsam
from test_dicom_series_faults import save_part10
from fewsam.errors import DataError

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
ROWS = COLUMNS = 32


def _jpeg_slice(number: int, jpeg: bytes, path: Path) -> None:
    """One 8-bit MR slice of a three-slice series (0.5 mm pixels, 2 mm apart) whose pixels are ``jpeg``,
    encapsulated as JPEG Baseline."""
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.4", f"1.2.3.4.6.{number}", "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = "1.2.3.4", "1.2.3.4.6", number
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.0 * number], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 2
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    save_part10(ds, path, JPEG_BASELINE)


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (ROWS, COLUMNS)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _overwritten(jpeg: bytes, at: float, new: bytes) -> bytes:
    """``jpeg`` with ``new`` written over its bytes from the fraction ``at`` of its length on."""
    start = int(len(jpeg) * at)
    return jpeg[:start] + new + jpeg[start + len(new):]


# A restart marker in the entropy-coded data: libjpeg prints "Corrupt JPEG data: premature end of data
# segment" and GDCM gives up; bytes before the end marker: libjpeg prints "Corrupt JPEG data: 32 extraneous
# bytes before marker 0xd9" and decodes the image all the same
UNDECODABLE = {"at": 0.7, "new": b"\xff\xd3"}
DECODED_WITH_DAMAGE = {"at": 0.8, "new": bytes(range(10))}


def write_series(root: Path, damage: dict) -> Path:
    """A DICOM dataset of one JPEG series ``s`` (its second slice damaged as ``damage`` says) and its label
    (``labels/s.nii.gz``, on the series' grid)."""
    import SimpleITK as sitk

    for number in range(3):
        jpeg = _jpeg(number)
        _jpeg_slice(number, _overwritten(jpeg, **damage) if number == 1 else jpeg, root / "s" / f"IM{number}.dcm")
    label = sitk.GetImageFromArray(np.pad(np.ones((3, 16, 16), np.uint8), ((0, 0), (8, 8), (8, 8))))
    label.SetSpacing((0.5, 0.5, 2.0))
    (root / "labels").mkdir()
    sitk.WriteImage(label, str(root / "labels" / "s.nii.gz"))
    return root


def test_a_damaged_jpeg_dicom_series_ends_in_the_one_error_line_with_the_decoders_reason(tmp_path):
    """libjpeg's lines, printed twice (the series read, then each file's), came before the error line."""
    data = write_series(tmp_path / "data", UNDECODABLE)
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "s.nii.gz").write_bytes((data / "labels" / "s.nii.gz").read_bytes())
    result = run_fewsam("evaluate", "--pred", str(pred), "--data", str(data), "--split", "all", cwd=tmp_path)
    assert_one_line_error(result, f"cannot decode DICOM {data / 's' / 'IM1.dcm'}: its pixels, compressed as "
                                  "JPEG Baseline")
    assert "damaged JPEG data ('Corrupt JPEG data: premature end of data segment')" in result.stderr


def test_a_jpeg_decoded_despite_damage_is_said_once_and_logged_not_printed(tmp_path, capfd, caplog):
    from fewsam.data import open_dataset
    from fewsam.progress import log_to

    data = write_series(tmp_path / "data", DECODED_WITH_DAMAGE)
    with caplog.at_level("INFO", logger="fewsam"), log_to(tmp_path / "work.log"):
        for _ in range(2):
            open_dataset(data).load("s")
    assert "Corrupt JPEG data" not in capfd.readouterr().err
    said = [r.getMessage() for r in caplog.records if "its decoder reports damaged JPEG data" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{data / 's'}: ") and "read as decoded" in said[0], said
    logged = (tmp_path / "work.log").read_text(encoding="utf-8")
    assert logged.count("s: native library output: Corrupt JPEG data: ") == 1, logged


def _metaimage(root: Path, header_change: tuple[str, str] = ("", ""), cut: int = 0) -> Path:
    """A dataset of one MetaImage volume ``c`` (``images/c.mhd`` + raw, its header changed as
    ``header_change`` says, the raw file short of ``cut`` bytes) and its label."""
    import SimpleITK as sitk

    volume = sitk.GetImageFromArray((np.arange(4 * 16 * 16) % 7).astype(np.int16).reshape(4, 16, 16))
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    sitk.WriteImage(volume > 3, str(root / "labels" / "c.mha"))
    header = root / "images" / "c.mhd"
    sitk.WriteImage(volume, str(header))
    header.write_text(header.read_text().replace(*header_change))
    raw = root / "images" / "c.raw"
    raw.write_bytes(raw.read_bytes()[:len(raw.read_bytes()) - cut])
    return header


def test_a_cut_short_metaimage_is_refused_saying_so_without_metaios_lines(tmp_path, capfd):
    """MetaIO printed "data not read completely / ideal = 2048 : actual = 1998", and ITK's error said
    "Reason: Success"."""
    from fewsam.data import open_dataset

    header = _metaimage(tmp_path, cut=50)
    with pytest.raises(DataError) as refusal:
        open_dataset(tmp_path).load("c")
    assert str(refusal.value) == (f"cannot read {header}: voxel data cut short ('MetaImage: M_ReadElementsData: "
                                  "data not read completely'); copy or export it again from its source")
    assert capfd.readouterr().err == ""


def test_a_metaimage_whose_voxels_do_not_decompress_is_refused_not_read_as_memory(tmp_path, capfd):
    """ITK printed "Uncompress failed" and returned the voxel buffer as allocated, other values at each read."""
    from fewsam.data import open_dataset

    header = _metaimage(tmp_path, header_change=("CompressedData = False", "CompressedData = True"))
    with pytest.raises(DataError, match=f"cannot read {header}: voxel data that do not decompress "
                                        r"\('Uncompress failed'\)"):
        open_dataset(tmp_path).load("c")
    assert capfd.readouterr().err == ""


def test_pillows_warnings_on_a_damaged_tiff_mask_leave_the_one_error_line_alone(tmp_path):
    """Pillow warned "Corrupt EXIF data" three times, two lines each, before the error line."""
    from PIL import Image

    for folder, pixels in (("images", np.full((12, 10), 9, np.uint8)), ("masks", np.eye(12, 10, dtype=np.uint8))):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="TIFF")
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "a.tif").write_bytes(buffer.getvalue()[:20] if folder == "masks"
                                                           else buffer.getvalue())
    (tmp_path / "pred").mkdir()
    result = run_fewsam("evaluate", "--pred", str(tmp_path / "pred"), "--data", str(tmp_path / "data"),
                        "--split", "all", cwd=tmp_path)
    assert_one_line_error(result, "prediction folder")


def test_the_command_lines_python_warnings_go_to_the_log(tmp_path, monkeypatch, capsys):
    import warnings

    from fewsam.cli import _warnings_to_log
    from fewsam.progress import log_to

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    _warnings_to_log()
    with log_to(tmp_path / "work.log"), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("Corrupt EXIF data.", UserWarning)
    assert capsys.readouterr().err == ""
    assert "UserWarning: Corrupt EXIF data." in (tmp_path / "work.log").read_text(encoding="utf-8")


# ---------------------------------------------------------------- the capture itself


def test_what_native_code_writes_to_fd_2_is_captured_and_fd_2_restored(capfd):
    from fewsam.native_output import native_stderr_captured

    with native_stderr_captured() as lines:
        os.write(2, b"C-level line one\n  indented two\n\n")
    os.write(2, b"after\n")
    assert lines == ["C-level line one", "indented two"]
    assert capfd.readouterr().err == "after\n"


def test_the_capture_keeps_its_lines_and_restores_fd_2_when_the_read_raises(capfd):
    from fewsam.native_output import native_stderr_captured

    with pytest.raises(RuntimeError), native_stderr_captured() as lines:
        os.write(2, b"Stream too short\n")
        raise RuntimeError("ITK ERROR")
    os.write(2, b"after\n")
    assert lines == ["Stream too short"]
    assert capfd.readouterr().err == "after\n"


def test_captured_text_goes_to_the_log_once_per_source(tmp_path, capfd):
    from fewsam.native_output import native_output_kept
    from fewsam.progress import log_to

    with log_to(tmp_path / "work.log"):
        for _ in range(2):
            with native_output_kept("scan.mha"):
                os.write(2, b"WARNING: In itkSomething.cxx, line 1\nSomething (0x1): a note\n")
    assert capfd.readouterr().err == ""
    logged = (tmp_path / "work.log").read_text(encoding="utf-8").splitlines()
    assert [line.split(" ", 2)[2] for line in logged] == [
        "scan.mha: native library output: WARNING: In itkSomething.cxx, line 1 / Something (0x1): a note"]


def test_a_read_goes_on_uncaptured_where_no_temporary_file_can_be_made(monkeypatch):
    """A full or read-only temporary folder made every SimpleITK read fail with the capture's OSError."""
    import tempfile

    from fewsam import native_output

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_room)
    with native_output.native_stderr_captured() as lines:
        pass
    assert lines == []
