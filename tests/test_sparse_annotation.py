"""Volumes annotated on some slices only (the others left 0, as a label exported from the studio or saved
from ITK-SNAP after painting a few slices is): their empty slices were learnt as background. A fit says so
when a labelled volume leaves empty slices between annotated ones, and --annotated-slices-only labels the
annotated slices alone, the others joining the unlabelled pool."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from fewsam import progress
from fewsam.cli import app
from fewsam.config import FitOptions
from fewsam.data import open_dataset, select_labelled, unlabelled_pool
from fewsam.data.phantom import phantom_volume
from fewsam.errors import DataError
from fewsam.fitting import open_fit

SLICES = 6
ANNOTATED = (1, 4)  # the slices of case0 its annotator painted


def write_sparse_folder(root: Path) -> Path:
    """images/ + labels/ of 4 phantom volumes; case0's label keeps only slices 1 and 4, the rest 0."""
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for i in range(4):
        image, label = phantom_volume(rng, SLICES, (40, 48))
        if i == 0:
            label[[z for z in range(SLICES) if z not in ANNOTATED]] = 0
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), np.eye(4)), root / "images" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), np.eye(4)), root / "labels" / f"case{i}.nii.gz")
    return root


def test_only_the_annotated_slices_are_labelled_and_the_others_join_the_pool(tmp_path):
    dataset = open_dataset(write_sparse_folder(tmp_path / "data"))
    every = select_labelled(dataset, n_cases=1)
    assert [r.z for r in every] == list(range(SLICES))  # as before: the empty slices taken for background
    annotated = select_labelled(dataset, n_cases=1, annotated_only=True)
    assert [(r.case_id, r.z) for r in annotated] == [("case0", z) for z in ANNOTATED]
    pool = unlabelled_pool(dataset, annotated)
    assert {r.z for r in pool if r.case_id == "case0"} == set(range(SLICES)) - set(ANNOTATED)


def test_a_slice_budget_counts_annotated_slices(tmp_path):
    dataset = open_dataset(write_sparse_folder(tmp_path / "data"))
    picked = select_labelled(dataset, n_slices=4, annotated_only=True)
    assert [(r.case_id, r.z) for r in picked] == [("case0", 1), ("case0", 4), ("case1", 0), ("case1", 1)]
    with pytest.raises(DataError, match="a budget of 15 annotated slices is not possible: .* has 14 slices whose"):
        select_labelled(dataset, n_slices=15, annotated_only=True)


def test_a_fit_says_when_a_labelled_volume_has_empty_slices_between_annotated_ones(tmp_path, notices, monkeypatch):
    monkeypatch.setattr("fewsam.models.registry.load_model", lambda *args, **kwargs: None)
    data = write_sparse_folder(tmp_path / "data")
    open_fit(FitOptions(run=tmp_path / "run", data=data, labeled_cases=1), needs_sam=False)
    said = [r.getMessage() for r in notices.records if "--annotated-slices-only" in r.getMessage()]
    assert said and "labelled case case0 has 2 empty slice(s) between slices that hold a class" in said[0]
    notices.clear()
    monkeypatch.setattr(progress, "_said", {})
    open_fit(FitOptions(run=tmp_path / "run", data=data, labeled_cases=2, annotated_slices_only=True),
             needs_sam=False)
    assert not any("empty slice(s) between" in r.getMessage() for r in notices.records)


def test_a_fully_labelled_volume_is_not_said_to_be_sparse(tmp_path, notices):
    dataset = open_dataset(write_sparse_folder(tmp_path / "data"))
    from fewsam.fitting import say_sparse_annotation

    say_sparse_annotation(dataset, [r for r in dataset.labelled_budget_order() if r.case_id == "case1"])
    assert not notices.records


def test_few_shot_sam_fits_on_the_annotated_slices_of_a_volume(tiny_sam_phantom, tmp_path):
    data = write_sparse_folder(tmp_path / "sparse")
    result = CliRunner().invoke(app, [
        "fit", "fewshot", "--data", str(data), "--labeled-cases", "1", "--annotated-slices-only", "--views", "1", "--augmented-views", "0",
        "--steps", "2", "--val-every", "2", "--batch-size", "2", "--no-test-mirroring", "--no-sam-refinement",
        "--precision", "fp32", "--quiet", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    labelled = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))["labelled"]
    assert labelled["annotated_only"] is True and labelled["refs"] == [f"case0:{z}" for z in ANNOTATED]


def write_sparse_validation(root: Path) -> Path:
    """The sparse folder with its validation case (case3) annotated on slices 1 and 4 too."""
    write_sparse_folder(root)
    path = root / "labels" / "case3.nii.gz"
    label = np.asarray(nib.load(str(path)).dataobj).copy()
    label[:, :, [z for z in range(SLICES) if z not in ANNOTATED]] = 0
    nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    return root


def test_validation_volumes_are_scored_on_their_annotated_slices(tmp_path, monkeypatch):
    """The unannotated slices of a validation volume counted as false positives wherever the model found
    the anatomy on them: the checkpoint chosen was the one that found it least."""
    monkeypatch.setattr("fewsam.models.registry.load_model", lambda *args, **kwargs: None)
    data = write_sparse_validation(tmp_path / "data")
    whole = open_fit(FitOptions(run=tmp_path / "run", data=data, labeled_cases=1), needs_sam=False)
    sparse = open_fit(FitOptions(run=tmp_path / "run", data=data, labeled_cases=1, annotated_slices_only=True),
                      needs_sam=False)
    assert whole.val_ids == sparse.val_ids == ["case3"]
    assert whole.dataset.load("case3").num_slices == SLICES
    case = sparse.dataset.load("case3")
    full = whole.dataset.load("case3")
    assert case.num_slices == sparse.dataset.num_slices("case3") == len(ANNOTATED)
    np.testing.assert_array_equal(case.image, full.image[list(ANNOTATED)])
    np.testing.assert_array_equal(case.label, full.label[list(ANNOTATED)])
    assert sparse.dataset.load("case0").num_slices == SLICES  # training cases keep their slice numbers
    assert sparse.dataset.class_map == whole.dataset.class_map


def test_evaluate_scores_the_annotated_slices_and_compare_refuses_to_mix_the_two(tmp_path):
    """A prediction finding the anatomy on every slice of a volume annotated on two scores Dice 1 on them."""
    from fewsam.compare import compare_runs
    from fewsam.data import write_prediction
    from fewsam.evaluate import evaluate

    data = write_sparse_validation(tmp_path / "data")
    truth = open_dataset(write_sparse_folder(tmp_path / "full"))  # the same volumes, every slice annotated
    pred = tmp_path / "pred"
    write_prediction(open_dataset(data).load("case3"), truth.load("case3").label, pred)
    whole = evaluate(pred, data, "val", show_progress=False)
    sparse = evaluate(pred, data, "val", show_progress=False, annotated_slices_only=True)
    assert sparse["annotated_slices_only"] is True and whole["annotated_slices_only"] is False
    assert sparse["mean"]["dice"] == pytest.approx(1.0) and whole["mean"]["dice"] < 0.9
    for name, result in (("whole.json", whole), ("sparse.json", sparse)):
        (tmp_path / name).write_text(json.dumps(result), encoding="utf-8")
    with pytest.raises(DataError, match="sparse.json was evaluated with --annotated-slices-only but .*whole.json "
                                        "without it"):
        compare_runs(tmp_path / "whole.json", tmp_path / "sparse.json")
