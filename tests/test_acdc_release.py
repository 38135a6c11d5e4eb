"""ACDC's own release as users download it (its ``database/`` folder), in a tiny generated copy: a case
per labelled frame, the 4D cine no case, ACDC's classes, testing/ as the test split, Info.cfg's
attributes as groups, and predictions on each frame's grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fewsam.data import open_dataset
from fewsam.data.readers.acdc_h5 import CLASS_MAP
from fewsam.info import dataset_info
from test_public_layouts import notes  # noqa: F401  (the fixture: this test's notes)

FRAME = (6, 8, 3)  # NIfTI x, y, z
AFFINE = np.diag([1.5, 1.25, 10.0, 1.0])
GROUPS = {1: "DCM", 2: "HCM", 3: "NOR", 101: "MINF"}


def _save(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))


def patient(folder: Path, number: int, frames: tuple[int, int] = (1, 3)) -> None:
    """One patient folder as the release holds it: its 4D cine, the ED and ES frames with their _gt,
    Info.cfg and the citation note."""
    name = f"patient{number:03d}"
    folder.mkdir(parents=True)
    cine = np.random.default_rng(number).random((*FRAME, 4)).astype(np.float32)
    _save(folder / f"{name}_4d.nii.gz", cine)
    label = np.zeros(FRAME, np.uint8)
    label[1:3, 1:4] = 1
    label[3:5, 2:6] = 2
    label[2:4, 5:7] = 3
    for frame in frames:
        _save(folder / f"{name}_frame{frame:02d}.nii.gz", cine[..., frame - 1])
        _save(folder / f"{name}_frame{frame:02d}_gt.nii.gz", label)
    (folder / "Info.cfg").write_text(f"ED: {frames[0]}\nES: {frames[1]}\nGroup: {GROUPS[number]}\n"
                                     f"Height: {170 + number}.0\nNbFrame: 4\nWeight: {70 + number}.0\n",
                                     encoding="utf-8")
    (folder / "MANDATORY_CITATION.md").write_text("Please cite the ACDC challenge.\n", encoding="utf-8")


@pytest.fixture
def database(tmp_path) -> Path:
    """ACDC/database with training/patient001-003 and testing/patient101."""
    root = tmp_path / "ACDC" / "database"
    for number in (1, 2, 3):
        patient(root / "training" / f"patient{number:03d}", number)
    patient(root / "testing" / "patient101", 101)
    return root


def test_database_is_a_case_per_labelled_frame_with_acdc_classes_and_testing_as_test(database):
    ds = open_dataset(database)
    assert list(ds.entries) == ["patient001_frame01", "patient001_frame03", "patient002_frame01",
                                "patient002_frame03", "patient003_frame01", "patient003_frame03",
                                "patient101_frame01", "patient101_frame03"]  # no _4d cine
    assert ds.class_map == CLASS_MAP
    assert ds.split("test") == ["patient101_frame01", "patient101_frame03"]
    assert ds.split("val") == ["patient003_frame01", "patient003_frame03"]  # the rule, a patient's frames together
    assert ds.split("train") == ["patient001_frame01", "patient001_frame03", "patient002_frame01",
                                 "patient002_frame03"]
    assert ds.subject_of("patient002_frame03") == "patient002"
    assert ds.entries["patient101_frame03"].label.name == "patient101_frame03_gt.nii.gz"


def test_the_cine_is_said_not_read_and_the_citation_is_passed_over(database, notes):
    open_dataset(database / "training")
    said = [r.getMessage() for r in notes.records if "_4d" in r.getMessage()]
    assert len(said) == 1 and "patient001_4d.nii.gz not read" in said[0]
    assert not [r for r in notes.records if "MANDATORY_CITATION" in r.getMessage()]


def test_the_training_folder_and_one_patient_folder_open_too(database):
    training = open_dataset(database / "training")
    assert len(training.split("all")) == 6 and "test" not in training.split_names()
    one = open_dataset(database / "training" / "patient002")
    assert one.split("all") == ["patient002_frame01", "patient002_frame03"]
    assert one.split("train") == one.split("all")  # one patient: its frames never split apart
    assert {one.subject_of(case) for case in one.split("all")} == {"patient002"}
    assert one.class_map == CLASS_MAP


def test_info_cfg_gives_group_height_weight_and_each_frames_phase_as_group_attributes(database):
    ds = open_dataset(database)
    assert ds.attributes_of("patient002_frame03") == {"Group": "HCM", "Height": 172.0, "Weight": 72.0, "phase": "ES"}
    assert ds.attributes_of("patient002_frame01")["phase"] == "ED"
    columns = dataset_info(database)["attributes"]["columns"]
    assert set(columns) == {"Group", "Height", "Weight", "phase"}
    assert columns["Group"]["values"] == ["DCM", "HCM", "MINF", "NOR"]
    assert columns["phase"]["values"] == ["ED", "ES"]


def test_evaluate_groups_by_phase_and_by_group_in_either_letter_case(tmp_path):
    """``--group-by phase`` from Info.cfg's ED and ES frame numbers (ED need not be frame 1), and ``--group-by
    group`` as on the h5 release's patient_info.csv although Info.cfg writes ``Group``."""
    from fewsam.data.writers import write_prediction
    from fewsam.evaluate import evaluate

    database = tmp_path / "database"
    patient(database / "training" / "patient001", 1, frames=(2, 4))
    patient(database / "training" / "patient002", 2)
    ds = open_dataset(database)
    assert [ds.attributes_of(case)["phase"] for case in ds.split("all")] == ["ED", "ES", "ED", "ES"]
    for case in map(ds.load, ds.split("all")):
        write_prediction(case, case.label, tmp_path / "pred")
    by_phase = evaluate(tmp_path / "pred", database, split="all", group_by="phase", show_progress=False, n_boot=10)
    assert {name: group["n"] for name, group in by_phase["groups"].items()} == {"ED": 2, "ES": 2}
    for spelling in ("group", "Group", "GROUP"):
        scores = evaluate(tmp_path / "pred", database, split="all", group_by=spelling, show_progress=False, n_boot=10)
        assert {name: group["n"] for name, group in scores["groups"].items()} == {"DCM": 2, "HCM": 2}


def test_predictions_are_case_files_on_the_frame_grid_and_evaluate_groups_them(database, tmp_path):
    from fewsam.data.writers import write_prediction
    from fewsam.evaluate import evaluate

    ds = open_dataset(database)
    written = [write_prediction(case, case.label, tmp_path / "pred") for case in map(ds.load, ds.split("all"))]
    assert [p.name for p in written] == [f"{case}.nii.gz" for case in ds.split("all")]
    saved = nib.load(tmp_path / "pred" / "patient101_frame03.nii.gz")
    assert saved.shape == FRAME and np.allclose(saved.affine, AFFINE)
    scores = evaluate(tmp_path / "pred", database, split="all", group_by="Group", show_progress=False, n_boot=10)
    assert scores["mean"]["dice"] == pytest.approx(1.0)
    assert set(scores["groups"]) == {"DCM", "HCM", "NOR", "MINF"}


def test_testing_patients_without_gt_are_their_frames_unlabelled_in_test(database):
    for label in (database / "testing" / "patient101").glob("*_gt.nii.gz"):
        label.unlink()  # the release before the challenge's results
    ds = open_dataset(database)
    assert ds.split("test") == ["patient101_frame01", "patient101_frame03"]
    assert not ds.has_label("patient101_frame01") and ds.has_label("patient001_frame01")


@pytest.mark.parametrize("lines, says, phases", [
    ("ED: abc\nES: 3\n", "ED 'abc' is no frame number", [None, "ES"]),
    ("ED: 1\nES: 1\n", "ED and ES name one frame (1)", [None, None]),
    ("ED: 3\nES: 1\nED: 1\nES: 3\n", "ED is given twice ('3', then '1')", ["ED", "ES"]),
], ids=["no-number", "one-frame", "twice"])
def test_an_info_cfg_whose_phases_cannot_be_read_is_said(tmp_path, notes, lines, says, phases):
    """A phase line that is no number, ED and ES naming one frame, or a key given twice left the frames'
    phases wrong or missing without a word (frame 1 called ES where both lines named it)."""
    folder = tmp_path / "database" / "training" / "patient001"
    patient(folder, 1)
    info = folder / "Info.cfg"
    info.write_text(lines + "Group: DCM\n", encoding="utf-8")
    ds = open_dataset(tmp_path / "database")
    assert [ds.attributes_of(case).get("phase") for case in ds.split("all")] == phases
    assert says in notes.text
