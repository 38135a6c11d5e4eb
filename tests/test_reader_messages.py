"""What a reader says of a folder it cannot read: a folder of npz predictions given as data is named as
predictions, with the options to give instead (FairSeg's reader takes any npz, and ended on a missing
image key)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_fewsam
from fewsam.data import open_dataset
from fewsam.errors import DataError

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
