"""The studio's export of datasets whose cases hold image and label in one file (ACDC's SSL4MIS h5,
Harvard-FairSeg npz): the export is a copy of each labelled case's file with the new label in the
dataset's own keys and coding, so that copied into the dataset it reads back as labelled."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

from conftest import TINY_LABEL, write_tiny_acdc
from fewsam.data import open_dataset
from test_studio_api import make_client, put, python, SLEEPER

VOLUME = "patient002_frame01"


def drawn() -> np.ndarray:
    label = np.zeros(TINY_LABEL.shape, np.uint8)
    label[5:15, 5:25], label[20:30, 30:40] = 3, 1
    return label


def test_an_acdc_h5_export_is_the_case_file_with_its_new_label(tmp_path):
    """The export wrote ``<case>.h5`` holding only a key ``pred`` at the export's top: not where the dataset
    keeps its cases (``data/``) nor in its keys (``image``, ``label``), so it read back as nothing."""
    data = write_tiny_acdc(tmp_path / "acdc", [VOLUME])
    with h5py.File(data / "data" / f"{VOLUME}.h5", "a") as f:
        f.attrs["source"] = "scanner"  # whatever else the file holds is kept
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        assert put(client, np.zeros_like(drawn()), case=VOLUME, z=0).status_code == 200
        assert put(client, drawn(), case=VOLUME, z=1).status_code == 200
        result = client.post("/api/export").json()
    assert result["files"] == [f"data/{VOLUME}.h5"]
    exported = tmp_path / "project" / "export" / "data" / f"{VOLUME}.h5"
    with h5py.File(exported) as f, h5py.File(data / "data" / f"{VOLUME}.h5") as source:
        assert sorted(f) == ["image", "label"] and f.attrs["source"] == "scanner"
        np.testing.assert_array_equal(f["image"][()], source["image"][()])
        assert f["label"].dtype == source["label"].dtype
    shutil.copy(exported, data / "data" / exported.name)  # the user copies the export into the dataset
    label = open_dataset(data).load(VOLUME).label
    np.testing.assert_array_equal(label[1], drawn())
    assert not label[0].any()  # labelled as background


def test_a_fairseg_npz_export_is_the_case_file_with_its_mask_in_fairseg_coding(tmp_path):
    """The export wrote an npz holding only ``pred`` (class indices 0/1/2): copied over the case's file it
    dropped the fundus image and the patient's attributes, and the mask FairSeg's -1/-2 coding keeps."""
    data = tmp_path / "fairseg"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((24, 32), np.int8)
        mask[4:20, 6:26], mask[8:16, 10:20] = -1, -2
        np.savez(data / f"data_{i:05d}.npz", slo_fundus=rng.integers(0, 256, (24, 32), dtype=np.uint8),
                 disc_cup_mask=mask, race=np.array(1), age=np.array(70.0))
    painted = np.zeros((24, 32), np.uint8)
    painted[2:12, 2:12], painted[5:8, 5:8] = 1, 2
    with make_client(data, tmp_path / "project", worker_argv=python(SLEEPER)) as client:
        assert put(client, painted, case="data_00001").status_code == 200
        assert client.post("/api/export").json()["files"] == ["data_00001.npz"]
    exported = tmp_path / "project" / "export" / "data_00001.npz"
    with np.load(exported) as f, np.load(data / "data_00001.npz") as source:
        assert sorted(f.files) == ["age", "disc_cup_mask", "race", "slo_fundus"]
        np.testing.assert_array_equal(f["slo_fundus"], source["slo_fundus"])
        assert f["disc_cup_mask"].dtype == np.int8 and set(np.unique(f["disc_cup_mask"])) == {0, -1, -2}
    shutil.copy(exported, data / exported.name)
    case = open_dataset(data).load("data_00001")
    np.testing.assert_array_equal(case.label[0], painted)
    assert case.attributes["race"] == "Black"
