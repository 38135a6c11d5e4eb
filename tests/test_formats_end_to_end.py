"""predict and evaluate on the new formats: a tiny supervised run (no SAM weights) fitted on the
phantom predicts a JPEG folder (PNG predictions named .png, evaluated from there) and an
unlabelled DICOM series (a NIfTI prediction on the series' grid)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from fewsam import api
from fewsam.data import open_dataset
from fewsam.data.phantom import PHANTOM_CLASSES, phantom_volume, write_phantom_dataset
from fewsam.errors import DataError
from fewsam.evaluate import evaluate
from fewsam.methods import supervised
from fewsam.models import registry
from fewsam.predict import predict
from conftest import assert_one_line_error, run_fewsam
from test_dicom import write_label, write_series

PIXELS = {1: 85, 2: 170, 3: 255}  # the classes' mask values in the JPEG folder's PNG masks


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step supervised run on the phantom: it only has to predict, not to be good."""
    return fit_tiny_run(tmp_path_factory.mktemp("e2e"))


def fit_tiny_run(tmp: Path, names: dict[int, str] | None = None) -> Path:
    """``tmp``/run, fitted for 2 steps on a phantom in ``tmp``/phantom whose classes are named ``names`` (the
    phantom's own names if None)."""
    phantom = write_phantom_dataset(tmp / "phantom", n_train=2, n_val=1, slices=2, seed=0)
    if names is not None:
        dataset = json.loads((phantom / "dataset.json").read_text())
        dataset["labels"] = {"background": 0, **{name: value for value, name in names.items()}}
        (phantom / "dataset.json").write_text(json.dumps(dataset))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(registry, "load_model", _no_weights)
    try:
        opts = api.FitOptions(data=phantom, run=tmp / "run", labeled_cases=1, cache=str(tmp / "cache"),
                              show_progress=False)
        api.fit("supervised", opts, supervised.SupervisedConfig(
            image_size=64, channels=(8, 16, 32, 64), num_res_units=1, batch_size=2, steps=2, val_every=2))
    finally:
        monkey.undo()
        torch.set_num_threads(before)
    return tmp / "run"


def _no_weights(*args, **kwargs):
    raise AssertionError("a SAM model was loaded")


def test_jpeg_folder_predicts_png_files_that_evaluate_reads(run, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for name in ("case2", "case10"):
        images, labels = phantom_volume(rng, slices=1, shape=(64, 72))
        (data / "images").mkdir(parents=True, exist_ok=True)
        (data / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray((images[0] * 255).astype(np.uint8)).save(data / "images" / f"{name}.jpg", quality=90)
        mask = np.select([labels[0] == c for c in PIXELS], list(PIXELS.values()), 0).astype(np.uint8)
        Image.fromarray(mask).save(data / "masks" / f"{name}.png")
    classes = {"classes": {str(k): v for k, v in PHANTOM_CLASSES.items()},
               "pixel_values": {str(k): v for k, v in PIXELS.items()}}
    (data / "classes.json").write_text(json.dumps(classes))
    written = predict(run, data, tmp_path / "pred", split="all", show_progress=False)
    assert sorted(p.relative_to(tmp_path / "pred").as_posix() for p in written) == \
        ["images/case10.png", "images/case2.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    assert set(np.unique(np.asarray(Image.open(written[0])))) <= {0, *PIXELS.values()}
    scores = evaluate(tmp_path / "pred", data, "all", show_progress=False)
    assert [c["case"] for c in scores["cases"]] == ["images/case2", "images/case10"]
    assert 0.0 <= scores["mean"]["dice"] <= 1.0


def test_unlabelled_dicom_series_predicts_nifti_on_its_grid(run, tmp_path):
    rng = np.random.default_rng(1)
    images, _ = phantom_volume(rng, slices=3, shape=(64, 72))
    series = write_series(tmp_path / "data" / "patient1" / "cine", (images * 1000).astype(np.int16))
    (tmp_path / "data" / "classes.json").write_text(json.dumps({str(k): v for k, v in PHANTOM_CLASSES.items()}))
    assert not open_dataset(tmp_path / "data").has_any_label()
    written = predict(run, tmp_path / "data", tmp_path / "pred", show_progress=False)
    assert [p.relative_to(tmp_path / "pred").as_posix() for p in written] == ["patient1/cine.nii.gz"]
    pred = sitk.ReadImage(str(written[0]))
    assert pred.GetSize() == series.GetSize()
    np.testing.assert_allclose(pred.GetOrigin(), series.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(pred.GetSpacing(), series.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(pred.GetDirection(), series.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}


def test_a_dicom_series_prediction_is_also_a_dicom_seg_of_the_same_labels(run, tmp_path):
    """Beside its NIfTI, a DICOM series' prediction is a DICOM SEG of the series' instances (for OHIF, a PACS,
    3D Slicer), one segment per class, named as the classes; evaluate scores it alone where no NIfTI is."""
    import highdicom as hd
    import pydicom

    folder = tmp_path / "data" / "patient1" / "ct"
    series = dicom_data(tmp_path / "data", seed=2)
    written = predict(run, tmp_path / "data", tmp_path / "pred", split="all", show_progress=False)
    assert sorted(p.relative_to(tmp_path / "pred").as_posix() for p in (tmp_path / "pred").rglob("*.*")
                  if p.suffix != ".log") == ["patient1/ct.nii.gz", "patient1/ct.seg.dcm"]
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(written[0])))
    seg = hd.seg.segread(tmp_path / "pred" / "patient1" / "ct.seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(PHANTOM_CLASSES.values())
    sources = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")),
                     key=lambda h: int(h.InstanceNumber))
    stored = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in sources], combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    assert np.array_equal(stored, nifti)
    write_label(tmp_path / "data" / "labels" / "patient1" / "ct.nii.gz", nifti, series)
    written[0].unlink()
    scores = evaluate(tmp_path / "pred", tmp_path / "data", "all", show_progress=False)
    assert scores["mean"]["dice"] == 1.0


def dicom_data(data: Path, seed: int, patients: int = 1) -> sitk.Image:
    """A data folder of phantom CT series, data/patient<k>/ct, with the frame of reference a SEG and an RT
    structure set copy, and the phantom's classes; the first series' image."""
    rng = np.random.default_rng(seed)
    written = []
    for k in range(1, patients + 1):
        images, _ = phantom_volume(rng, slices=3, shape=(64, 72))
        written.append(write_series(data / f"patient{k}" / "ct", (images * 1000).astype(np.int16),
                                    uid=f"1.2.826.0.1.3680043.2.1125.7{k}",
                                    extra_tags={"0020|0052": "1.2.826.0.1.3680043.2.1125.9"}))
    (data / "classes.json").write_text(json.dumps({str(k): v for k, v in PHANTOM_CLASSES.items()}))
    return written[0]


def test_predict_rtstruct_also_writes_a_structure_set_that_reads_back_as_the_prediction(run, tmp_path):
    """`fewsam predict --rtstruct`: beside the NIfTI and the SEG, an RT structure set of the series, an ROI
    per class; evaluate scores it alone where neither is there. Predicted again into the same folder
    without --rtstruct, the structure set of the earlier prediction goes with it."""
    import pydicom
    from typer.testing import CliRunner

    from fewsam.cli import app

    series = dicom_data(tmp_path / "data", seed=4)
    command = ["predict", str(run), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "pred"), "--split",
               "all", "--quiet"]
    done = CliRunner().invoke(app, [*command, "--rtstruct"])
    assert done.exit_code == 0, done.output
    pred = tmp_path / "pred" / "patient1"
    assert sorted(p.name for p in pred.iterdir()) == ["ct.nii.gz", "ct.rtstruct.dcm", "ct.seg.dcm"]
    rt = pydicom.dcmread(pred / "ct.rtstruct.dcm")
    assert [r.ROIName for r in rt.StructureSetROISequence] == list(PHANTOM_CLASSES.values())
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "ct.nii.gz")))
    write_label(tmp_path / "data" / "labels" / "patient1" / "ct.nii.gz", nifti, series)
    kept = {p: p.read_bytes() for p in (pred / "ct.nii.gz", pred / "ct.seg.dcm")}
    for path in kept:
        path.unlink()
    assert evaluate(tmp_path / "pred", tmp_path / "data", "all", show_progress=False)["mean"]["dice"] == 1.0
    for path, data in kept.items():
        path.write_bytes(data)
    again = CliRunner().invoke(app, [*command, "--overwrite"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in pred.iterdir()) == ["ct.nii.gz", "ct.seg.dcm"]


def test_predict_rtstruct_on_ray_writes_the_structure_sets_on_the_workers(run, tmp_path, monkeypatch):
    """``predict --ray`` hands --rtstruct to its workers (here one, in this process, as Ray would run it)."""
    from fewsam.distributed import ray_jobs

    def one_worker_here(address, job, case_ids, staging, workers=None, show_progress=True, on_case=None):
        threads = torch.get_num_threads()
        written = []
        try:
            worker = ray_jobs.PredictWorker(job)
            for case_id in case_ids:
                answer = worker.predict(case_id, str(staging))
                written.append(Path(answer["path"]))
                on_case(case_id, [Path(path) for path in answer["files"]])
        finally:
            torch.set_num_threads(threads)
        return written

    monkeypatch.setattr(ray_jobs, "predict_on_ray", one_worker_here)
    dicom_data(tmp_path / "data", seed=5)
    predict(run, tmp_path / "data", tmp_path / "pred", split="all", show_progress=False, ray="local", rtstruct=True)
    assert sorted(p.name for p in (tmp_path / "pred" / "patient1").iterdir()) == \
        ["ct.nii.gz", "ct.rtstruct.dcm", "ct.seg.dcm"]


def test_a_stopped_predict_rtstruct_resumes_with_its_structure_sets_and_without_it_starts_afresh(run, tmp_path,
                                                                                                 monkeypatch):
    """The cases a stopped --rtstruct predict kept hold structure sets: the same command takes them up, a
    predict without --rtstruct predicts them again rather than mix cases with and without one."""
    from fewsam.errors import Stopped
    from test_predict_resume import predicted_cases

    dicom_data(tmp_path / "data", seed=6, patients=2)
    for again_with_rtstruct, predicted_again in ((False, 2), (True, 1)):
        out = tmp_path / f"pred-{again_with_rtstruct}"
        predicted_cases(monkeypatch, stop_at=1)
        with pytest.raises(Stopped):
            predict(run, tmp_path / "data", out, split="all", show_progress=False, rtstruct=True)
        monkeypatch.undo()
        again = predicted_cases(monkeypatch)
        predict(run, tmp_path / "data", out, split="all", show_progress=False, rtstruct=again_with_rtstruct)
        assert len(again) == predicted_again
        rtstructs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.rtstruct.dcm"))
        assert rtstructs == (["patient1/ct.rtstruct.dcm", "patient2/ct.rtstruct.dcm"] if again_with_rtstruct else [])


def test_predict_rtstruct_on_data_without_dicom_series_is_refused_in_one_line(run, tmp_path):
    refused = run_fewsam("predict", str(run), "--data", str(run.parent / "phantom"), "--out", str(tmp_path / "pred"),
                         "--rtstruct", "--quiet", cwd=tmp_path)
    assert_one_line_error(refused, "--rtstruct: ")
    assert "not DICOM series" in refused.stderr and not (tmp_path / "pred").exists()


def test_a_damaged_label_file_stops_evaluate_but_not_predict_or_embed(run, tmp_path, monkeypatch, fake_sam):
    """Prediction and embedding read images only: a label they do not need cannot stop them."""
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    for folder in ("images", "labels"):
        (data / folder).mkdir(parents=True)
    for name in ("case1", "case2"):
        image, label = phantom_volume(rng, slices=2, shape=(28, 30))
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), np.eye(4)), data / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), np.eye(4)), data / "labels" / f"{name}.nii.gz")
    damaged = data / "labels" / "case2.nii.gz"
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert open_dataset(data).class_map.names == {1: "class1", 2: "class2", 3: "class3"}  # from case1
    (data / "classes.json").write_text(json.dumps({str(k): v for k, v in PHANTOM_CLASSES.items()}))
    written = predict(run, data, tmp_path / "pred", split="all", show_progress=False)
    assert sorted(p.name for p in written) == ["case1.nii.gz", "case2.nii.gz"]
    monkeypatch.setattr(api, "load_model", lambda *a, **k: fake_sam)
    stats = api.embed_dataset(data, split="all", cache_root=str(tmp_path / "cache"), show_progress=False,
                              precision="fp32")
    assert stats["cases"] == 2 and stats["encoded"] == 4
    with pytest.raises(DataError, match="case2.nii.gz"):
        evaluate(tmp_path / "pred", data, "all", show_progress=False)
