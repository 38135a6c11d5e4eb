"""What a reader says of a folder it cannot read: a folder of npz predictions given as data is named as
predictions, with the options to give instead (FairSeg's reader takes any npz, and ended on a missing
image key); a DICOM file whose compression GDCM decodes, but whose data (or JPEG header) do not decode, is
named as damaged, to copy again, not as a compression to save uncompressed or by GDCM's own words."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_fewsam
from fewsam.data import open_dataset
from fewsam.errors import DataError
from test_native_chatter import _jpeg, _jpeg_slice, _overwritten

# ---------------------------------------------------------------- npz predictions given as data


def _npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def test_fewsam_info_on_medsam_predictions_names_them_and_the_options_to_give(tmp_path):
    """``fewsam predict`` and the MedSAM challenge tools write <case>.npz holding only ``segs``."""
    for case in ("CT_Abd_0001", "CT_Abd_0002"):
        _npz(tmp_path / "pred" / f"{case}.npz", segs=np.zeros((3, 8, 8), np.uint8))
    result = run_fewsam("info", str(tmp_path / "pred"), cwd=tmp_path)
    assert_one_line_error(result, f"{tmp_path / 'pred'} is a folder of predictions (CT_Abd_0001.npz holds the keys "
                                  "segs, no image), not data; give the data folder as --data and this folder as "
                                  "--pred")
    assert "slo_fundus" not in result.stderr


@pytest.mark.parametrize("file, key", [
    ("data_0001.npz", "pred"),                  # fewsam's FairSeg predictions
    ("train_npz/case0005.npz", "pred"),         # fewsam's Synapse predictions of slice cases
    ("CT/CT_Abd_0001.npz", "segs"),             # MedSAM predictions in modality folders
])
def test_npz_predictions_given_as_data_are_named_as_predictions(tmp_path, file, key):
    _npz(tmp_path / file, **{key: np.zeros((1, 8, 8), np.uint8)})
    with pytest.raises(DataError, match=rf"is a folder of predictions \({file} holds the keys {key}, no image\)"):
        open_dataset(tmp_path)


def test_medsam_data_beside_nothing_else_still_opens(tmp_path):
    """The refusal looks at the keys: a MedSAM file with its image and label is data."""
    _npz(tmp_path / "CT_Abd_0001.npz", imgs=np.zeros((3, 8, 8), np.uint8), gts=np.ones((3, 8, 8), np.uint8))
    assert open_dataset(tmp_path).layout == "medsam-npz"


# ---------------------------------------------------------------- damaged JPEG DICOM


def _jpeg_series(root: Path, second_slice: bytes) -> Path:
    """A three-slice JPEG Baseline series ``s`` whose second slice's JPEG is ``second_slice``."""
    for number in range(3):
        _jpeg_slice(number, second_slice if number == 1 else _jpeg(number), root / "s" / f"IM{number}.dcm")
    return root / "s" / "IM1.dcm"


def _cut(jpeg: bytes, kept: float) -> bytes:
    return jpeg[:int(len(jpeg) * kept)]


def test_a_jpeg_cut_short_that_the_decoder_says_nothing_of_is_named_damaged(tmp_path, capfd):
    """libjpeg prints nothing of a JPEG cut to 90 %, and the message said the compression may be one GDCM
    does not read, advising to save the series uncompressed: JPEG Baseline is one it reads."""
    damaged = _jpeg_series(tmp_path, _cut(_jpeg(1), 0.9))
    with pytest.raises(DataError) as refusal:
        open_dataset(tmp_path).load("s")
    assert str(refusal.value) == (f"cannot decode DICOM {damaged}: its pixels, compressed as JPEG Baseline (Process 1) "
                                  "(1.2.840.10008.1.2.4.50), which GDCM (fewsam's DICOM decoder) reads, are damaged "
                                  "(cut short or overwritten); copy or export it again from its source")
    assert capfd.readouterr().err == ""


def test_a_decoder_line_fewsam_does_not_know_still_names_the_data_damaged(tmp_path, monkeypatch):
    """libjpeg's "Improper call to JPEG library in state 201" is in no list of known words: the file read alone
    prints it here (a stand-in for the decoder), and its words stay off the user's line."""
    import SimpleITK as sitk

    damaged = _jpeg_series(tmp_path, _cut(_jpeg(1), 0.9))
    read_image = sitk.ReadImage

    def read_printing_an_unknown_line(name: str, *args: object) -> sitk.Image:
        if name != str(damaged):
            return read_image(name, *args)
        os.write(2, b"Improper call to JPEG library in state 201\n")
        raise RuntimeError("ITK ERROR: GDCMImageIO: Failed to change to Implicit Transfer Syntax")

    monkeypatch.setattr(sitk, "ReadImage", read_printing_an_unknown_line)
    with pytest.raises(DataError) as refusal:
        open_dataset(tmp_path).load("s")
    message = str(refusal.value)
    assert message.startswith(f"cannot decode DICOM {damaged}: its pixels, compressed as JPEG Baseline"), message
    assert "are damaged (cut short or overwritten); copy or export it again" in message, message
    assert "does not read" not in message and "Improper call" not in message, message


def test_a_jpeg_whose_own_header_is_damaged_names_the_file_not_gdcms_logic_error(tmp_path, capfd):
    """GDCM decodes a JPEG's header to list the folder's series: a start-of-frame marker written over its
    header ended in "cannot read the DICOM files in s: An invalid logic behavior occurred0"."""
    damaged = _jpeg_series(tmp_path, _overwritten(_jpeg(1), at=0.02, new=b"\xff\xc0\x00\x00"))
    with pytest.raises(DataError) as refusal:
        open_dataset(tmp_path).load("s")
    message = str(refusal.value)
    assert message.startswith(f"cannot decode DICOM {damaged}: its pixels, compressed as JPEG Baseline"), message
    assert "hold damaged JPEG data ('Corrupt JPEG data: " in message and message.endswith(
        "copy or export it again from its source"), message
    assert capfd.readouterr().err == ""
