"""M&Ms' OpenDataset as it unpacks, in a tiny generated copy: 4D short-axis cines whose labels are drawn on two
time frames, a case per drawn frame, the table of subjects as ED/ES frames and group attributes, the release's
folders as splits, and the whole chain (fit, predict, evaluate by vendor) on the frames' 3D grids."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fewsam import api
from fewsam.data import open_dataset, select_labelled, select_unlabelled
from fewsam.data.readers.cine_frames import CLASS_MAP
from fewsam.data.writers import write_prediction
from fewsam.errors import DataError
from fewsam.evaluate import evaluate
from fewsam.methods import supervised
from fewsam.models import registry
from fewsam.predict import predict
from test_public_layouts import notes  # noqa: F401  (the fixture: this test's notes)

CINE = (32, 32, 3, 5)  # NIfTI x, y, z, t
DRAWN = (1, 3)  # the labelled frames, ED and ES, 0-based as the table numbers them
AFFINE = np.array([[1.25, 0, 0, 5.0], [0, 1.25, 0, -3.0], [0, 0, 10.0, 2.0], [0, 0, 0, 1]])
TABLE = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
SUBJECTS = {"Training/Labeled": ["A0S9V9", "A1D0Q7", "A1D9Z7", "A1E9Q1", "A1K2P5"], "Training/Unlabeled": ["B0N3W8"],
            "Validation": ["C0K1P0", "C2L5P7"], "Testing": ["D1H2K3"]}
VENDORS = "ABAB"


def cine(folder: Path, code: str, seed: int, labelled: bool) -> np.ndarray:
    """``<code>/<code>_sa.nii.gz`` (x, y, z, t), and with ``labelled`` its ``_sa_gt`` holding LV, Myo and RV on the
    ``DRAWN`` frames alone."""
    folder.mkdir(parents=True)
    image = np.random.default_rng(seed).random(CINE).astype(np.float32)
    if labelled:
        label = np.zeros(CINE, np.uint8)
        for t in DRAWN:
            label[4:10, 4:20, :, t], label[12:18, 4:20, :, t], label[20:26, 4:20, :, t] = 1, 2, 3
            image[4:10, 4:20, :, t] += 2.0 + t  # an LV brighter than the rest: something a tiny model can learn
        nib.save(nib.Nifti1Image(label, AFFINE), str(folder / f"{code}_sa_gt.nii.gz"))
    nib.save(nib.Nifti1Image(image, AFFINE), str(folder / f"{code}_sa.nii.gz"))
    return image


def opendataset(root: Path, phases: dict[str, tuple[int, int]] | None = None) -> Path:
    """``OpenDataset/`` with every part of the release and its table (``phases``: a subject's ED and ES frames in
    its row, other than ``DRAWN``)."""
    rows = []
    for part, codes in SUBJECTS.items():
        for code in codes:
            cine(root / part / code, code, len(rows), labelled=part != "Training/Unlabeled")
            vendor = VENDORS[len(rows) % 4]
            rows.append(f"{len(rows)},{code},Vendor{vendor},{vendor},{len(rows) % 3 + 1},"
                        f"{','.join(map(str, (phases or {}).get(code, DRAWN)))},"
                        f"{40 + len(rows)},{'HCM' if len(rows) % 2 else 'NOR'},{'FM'[len(rows) % 2]},170.0,70.5")
    (root / TABLE).write_text(",External code,VendorName,Vendor,Centre,ED,ES,Age,Pathology,Sex,Height,Weight\n"
                              + "\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_a_case_per_drawn_frame_named_by_the_table_with_the_release_folders_as_splits(tmp_path):
    ds = open_dataset(opendataset(tmp_path / "OpenDataset"))
    assert ds.split("train") == [f"{code}_{phase}" for code in SUBJECTS["Training/Labeled"] for phase in ("ED", "ES")]
    assert ds.split("val") == ["C0K1P0_ED", "C0K1P0_ES", "C2L5P7_ED", "C2L5P7_ES"]
    assert ds.split("test") == ["D1H2K3_ED", "D1H2K3_ES"]
    assert ds.split("unlabeled") == ["B0N3W8_ED"]  # one case of the unlabelled cine, for --unlabeled-split
    assert not ds.has_label("B0N3W8_ED") and ds.has_label("D1H2K3_ES")
    assert ds.class_map == CLASS_MAP and CLASS_MAP.names == {1: "LV", 2: "Myo", 3: "RV"}
    assert ds.subject_of("A1D0Q7_ES") == "A1D0Q7"
    attributes = ds.attributes_of("A1D0Q7_ES")
    assert attributes["Vendor"] == "B" and attributes["phase"] == "ES" and attributes["Age"] == 41
    assert "ED" not in attributes and "ES" not in attributes  # frame numbers group no subjects
    # a frame's label exported (the studio) goes beside the cine, never over its 4D label of every frame
    assert ds.label_rel_path(ds.entries["A1D0Q7_ES"]) == "Training/Labeled/A1D0Q7/A1D0Q7_ES_gt.nii.gz"


def test_the_unlabelled_cines_are_a_semi_supervised_pool_by_their_split(tmp_path):
    """``--unlabeled-split unlabeled`` makes the unlabelled cine's frame a fit's pool; without it the pool is the
    training frames outside the labelled budget, as for every layout, never a validation or test case."""
    ds = open_dataset(opendataset(tmp_path / "OpenDataset"))
    labelled = select_labelled(ds, n_cases=2)
    pool = {ref.case_id for ref in select_unlabelled(ds, labelled, None, 0, "unlabeled")}
    assert pool == {"B0N3W8_ED"}
    default = {ref.case_id for ref in select_unlabelled(ds, labelled, None, 0)}
    assert default == {f"{code}_{phase}" for code in SUBJECTS["Training/Labeled"][2:] for phase in ("ED", "ES")}


def test_an_end_diastole_after_end_systole_is_still_listed_first(tmp_path):
    ds = open_dataset(opendataset(tmp_path / "OpenDataset", phases={"A1K2P5": (3, 1)}))
    assert [case for case in ds.split("all") if case.startswith("A1K2P5")] == ["A1K2P5_ED", "A1K2P5_ES"]
    assert ds.entries["A1K2P5_ED"].frame == 3 and ds.attributes_of("A1K2P5_ES")["phase"] == "ES"


def test_a_frame_case_is_that_frame_of_the_cine_and_of_its_label_on_the_spatial_grid(tmp_path):
    root = opendataset(tmp_path / "OpenDataset")
    image = cine(tmp_path / "again" / "A1D9Z7", "A1D9Z7", 2, labelled=True)  # the same seed: the same voxels
    case = open_dataset(root / "Training" / "Labeled").load("A1D9Z7_ES")
    np.testing.assert_allclose(case.image, image[..., 3].transpose(2, 1, 0))
    assert case.label.shape == (3, 32, 32) and set(np.unique(case.label)) == {0, 1, 2, 3}
    assert case.spacing == (10.0, 1.25, 1.25)
    assert np.allclose(case.meta["affine"], AFFINE) and case.meta["header"].get_data_shape() == (32, 32, 3)


def test_without_the_table_the_drawn_frames_are_cases_named_by_number(tmp_path, notes):
    root = opendataset(tmp_path / "OpenDataset")
    (root / TABLE).unlink()
    ds = open_dataset(root)
    assert ds.split("train")[:2] == ["A0S9V9_frame01", "A0S9V9_frame03"]
    assert ds.split("unlabeled") == ["B0N3W8_frame00"]
    assert ds.load("A0S9V9_frame03").label.any()
    assert "no M&Ms table of subjects" in notes.text


def test_a_frame_the_table_names_and_the_label_leaves_undrawn_is_refused_naming_the_drawn_ones(tmp_path):
    ds = open_dataset(opendataset(tmp_path / "OpenDataset", phases={"A1E9Q1": (0, 3)}))
    with pytest.raises(DataError, match=r"frame 0 \(A1E9Q1_ED, as .*\) holds no class, frame\(s\) 1, 3 do"):
        ds.load("A1E9Q1_ED")


def test_the_labels_as_predictions_are_found_by_evaluate_and_grouped_by_vendor(tmp_path):
    root = opendataset(tmp_path / "OpenDataset")
    ds = open_dataset(root)
    written = [write_prediction(case, case.label, tmp_path / "pred") for case in map(ds.load, ds.split("val"))]
    assert [p.name for p in written] == [f"{case}.nii.gz" for case in ds.split("val")]
    saved = nib.load(written[0])
    assert saved.shape == CINE[:3] and np.allclose(saved.affine, AFFINE)
    scores = evaluate(tmp_path / "pred", root, group_by="Vendor", show_progress=False, n_boot=10)
    assert scores["mean"]["dice"] == pytest.approx(1.0)
    assert {name: group["n"] for name, group in scores["groups"].items()} == {"A": 2, "B": 2}


def test_fit_predict_and_evaluate_on_the_opendataset(tmp_path, monkeypatch):
    """The whole chain on the frames: a 2-step supervised fit (no SAM weights) on the labelled frames, its
    predictions of the test split written as 3D files on the cine's grid, scored by vendor."""
    root = opendataset(tmp_path / "OpenDataset")
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: pytest.fail("a SAM model was loaded"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        api.fit("supervised", api.FitOptions(data=root, run=tmp_path / "run", labeled_cases=2,
                                             cache=str(tmp_path / "cache"), show_progress=False),
                supervised.SupervisedConfig(image_size=32, channels=(8, 16, 32, 64), num_res_units=1, batch_size=2,
                                            steps=2, val_every=2))
        written = [path for split in ("test", "unlabeled")
                   for path in predict(tmp_path / "run", root, tmp_path / split, split=split, show_progress=False)]
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in written) == ["B0N3W8_ED.nii.gz", "D1H2K3_ED.nii.gz", "D1H2K3_ES.nii.gz"]
    saved = nib.load(tmp_path / "test" / "D1H2K3_ES.nii.gz")
    assert saved.shape == CINE[:3] and np.allclose(saved.affine, AFFINE)
    assert set(np.unique(np.asarray(saved.dataobj))) <= {0, 1, 2, 3}
    scores = evaluate(tmp_path / "test", root, split="test", group_by="Vendor", show_progress=False, n_boot=10)
    assert [c["case"] for c in scores["cases"]] == ["D1H2K3_ED", "D1H2K3_ES"]
    assert list(scores["groups"]) == ["A"] and 0.0 <= scores["mean"]["dice"] <= 1.0


# ---------------------------------------------------------------- M&Ms-2: a file per view and phase, cines beside


def mnms2(root: Path, subjects: Iterable[int] = range(1, 6)) -> Path:
    """``MnM2/``: ``dataset/<id>/<id>_{SA,LA}_{ED,ES}.nii.gz`` + ``_gt`` and the 4D ``_CINE`` files of each
    subject (numbered as ``subjects``), and ``dataset_information.csv`` beside ``dataset/`` with its subject codes
    written as numbers."""
    for number in subjects:
        folder = root / "dataset" / f"{number:03d}"
        folder.mkdir(parents=True)
        for view, shape in (("SA", CINE[:3]), ("LA", (*CINE[:2], 1))):
            for phase in ("ED", "ES"):
                image = np.random.default_rng(number).random(shape).astype(np.float32)
                nib.save(nib.Nifti1Image(image, AFFINE), str(folder / f"{number:03d}_{view}_{phase}.nii.gz"))
                label = np.zeros(shape, np.uint8)
                label[4:10, 4:20], label[12:18, 4:20], label[20:26, 4:20] = 1, 2, 3
                nib.save(nib.Nifti1Image(label, AFFINE), str(folder / f"{number:03d}_{view}_{phase}_gt.nii.gz"))
            cine_data = np.random.default_rng(number).random((*shape, 4)).astype(np.float32)
            nib.save(nib.Nifti1Image(cine_data, AFFINE), str(folder / f"{number:03d}_{view}_CINE.nii.gz"))
    (root / "dataset_information.csv").write_text(
        "SUBJECT_CODE,DISEASE,VENDOR,SCANNER,FIELD\n"
        + "".join(f"{n},{'NOR' if n % 2 else 'DLV'},{'SIEMENS' if n % 2 else 'GE'},Avanto,1.5\n"
                  for n in subjects), encoding="utf-8")
    return root


def test_mnms2_is_a_case_per_view_and_phase_with_its_table_and_no_cine(tmp_path, notes):
    root = mnms2(tmp_path / "MnM2")
    ds = open_dataset(root / "dataset")
    assert ds.split("all")[:4] == ["001/001_SA_ED", "001/001_SA_ES", "001/001_LA_ED", "001/001_LA_ES"]
    assert len(ds.split("all")) == 20 and not any("CINE" in case for case in ds.split("all"))
    assert "001_SA_CINE.nii.gz, 001_LA_CINE.nii.gz not read" in notes.text
    assert ds.class_map == CLASS_MAP
    assert ds.attributes_of("002/002_LA_ES") == {"DISEASE": "DLV", "VENDOR": "GE", "SCANNER": "Avanto", "FIELD": 1.5,
                                                 "view": "LA", "phase": "ES"}
    assert {ds.subject_of(case) for case in ds.split("val")} == {"005"}  # a subject's views together
    assert ds.load("003/003_LA_ED").image.shape == (1, 32, 32)
    assert ds.label_rel_path(ds.entries["003/003_LA_ED"]) == "003/003_LA_ED_gt.nii.gz"  # where its label lies
    assert open_dataset(root).split("all")[0] == "dataset/001/001_SA_ED"  # MnM2/ itself opens too


def test_mnms2_predictions_are_found_by_evaluate_and_grouped_by_vendor_and_view(tmp_path):
    root = mnms2(tmp_path / "MnM2") / "dataset"
    ds = open_dataset(root)
    written = [write_prediction(case, case.label, tmp_path / "pred") for case in map(ds.load, ds.split("all"))]
    assert written[0].relative_to(tmp_path / "pred").as_posix() == "001/001_SA_ED.nii.gz"
    for column, groups in (("VENDOR", {"SIEMENS": 12, "GE": 8}), ("view", {"SA": 10, "LA": 10})):
        scores = evaluate(tmp_path / "pred", root, split="all", group_by=column, show_progress=False, n_boot=10)
        assert scores["mean"]["dice"] == pytest.approx(1.0)
        assert {name: group["n"] for name, group in scores["groups"].items()} == groups


def test_mnms2_splits_are_the_challenges_by_subject_number(tmp_path):
    """The release divides its 360 subjects: 001-160 training, 161-200 validation, 201-360 testing. Each subject's
    four cases go to its part, whatever drawing the other readers' rule would make."""
    numbers = [1, 2, 159, 160, 161, 200, 201, 202, 360]
    ds = open_dataset(mnms2(tmp_path / "MnM2", numbers) / "dataset")
    subjects = {name: sorted({ds.subject_of(case) for case in ds.split(name)}) for name in ("train", "val", "test")}
    assert subjects == {"train": ["001", "002", "159", "160"], "val": ["161", "200"],
                        "test": ["201", "202", "360"]}
    assert all(len(ds.split(name)) == 4 * len(subjects[name]) for name in subjects)


def test_a_subject_folder_of_one_3d_frame_is_one_case(tmp_path):
    """A copy saved frame by frame (``<code>/<code>_sa.nii.gz`` 3D, its ``_sa_gt`` 3D) is one case per subject folder:
    there is no time frame to choose."""
    for code in ("A0S9V9", "A1D0Q7"):
        folder = tmp_path / code
        folder.mkdir()
        nib.save(nib.Nifti1Image(np.ones(CINE[:3], np.float32), AFFINE), str(folder / f"{code}_sa.nii.gz"))
        label = np.zeros(CINE[:3], np.uint8)
        label[4:10, 4:20] = 1
        nib.save(nib.Nifti1Image(label, AFFINE), str(folder / f"{code}_sa_gt.nii.gz"))
    ds = open_dataset(tmp_path)
    assert ds.split("all") == ["A0S9V9", "A1D0Q7"]
    assert ds.load("A1D0Q7").label.max() == 1
