"""`fewsam predict --refine-with-sam`: SAM-Match's labeller at test time, with known fall-backs."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.embedded import embed_case
from fewsam.errors import RunError
from fewsam.methods.samatch import SamMatchConfig, load_final_sam
from fewsam.methods.samatch.refine import REFINEMENT, SamRefinedPredictor, choose_refinement
from fewsam.methods.samatch.sam_decoder import SamDecoder
from fewsam.methods.student import StudentPredictor
from fewsam.predict import predict
from fewsam.runs import BEST, read_config, write_json
from test_samatch import SAM_CFG, fit_run
from test_supervised import one_thread, phantom, tiny_sam  # noqa: F401 - fixtures


def _save_decoder(folder, weights, score):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"module": weights, "metrics": {"score": score}}, folder / BEST)


def test_load_final_sam_takes_the_last_round_that_did_not_lower_validation(tmp_path):
    sam = tiny_sam()
    base = SamDecoder(sam).state_dict()
    shifted = {s: {k: v + s for k, v in base.items()} for s in (1.0, 2.0, 3.0)}
    _save_decoder(tmp_path, shifted[1.0], 0.5)  # stage 1
    _save_decoder(tmp_path / "round_0000004", shifted[2.0], 0.6)  # better: kept
    _save_decoder(tmp_path / "round_0000008", shifted[3.0], 0.4)  # worse: dropped
    load_final_sam(sam, tmp_path)
    loaded = SamDecoder(sam).state_dict()
    assert all(torch.equal(loaded[k], shifted[2.0][k]) for k in base)


def test_refined_prediction_uses_sam_and_falls_back_to_the_student(phantom, tmp_path):  # noqa: F811
    run_dir, _, _ = fit_run(phantom, tmp_path, tmp_path / "run", SAM_CFG, steps=8)
    dataset = open_dataset(phantom)
    case = dataset.load(dataset.split("val")[0])
    model = tiny_sam()
    slices = embed_case(case, EmbeddingCache(tmp_path / "cache", model))
    predictor = SamRefinedPredictor(run_dir, model)
    student = StudentPredictor(run_dir).predict_case(case, [])
    refined = predictor.predict_case(case, slices)
    assert refined.shape == student.shape == case.label.shape
    assert set(np.unique(refined)) <= set(dataset.class_map.labels) | {0}
    assert not np.array_equal(refined, student)  # threshold 0: every predicted class prompts SAM
    predictor.cfg = replace(predictor.cfg, threshold=1.01)  # nothing confident: no prompt anywhere
    assert np.array_equal(predictor.predict_case(case, slices), student)


def test_refine_with_sam_refuses_runs_without_sam(phantom, tmp_path):  # noqa: F811
    run_dir, _, _ = fit_run(phantom, tmp_path, tmp_path / "run", SamMatchConfig(use_sam=False, unlabeled_batch=4,
                                                                                   unlabeled_limit=4), steps=2)
    with pytest.raises(RunError, match="--no-sam"):
        predict(run_dir, phantom, tmp_path / "pred", cache_root=tmp_path / "c", show_progress=False,
                refine="always")


@pytest.fixture(scope="module")
def refinable(phantom, tmp_path_factory):  # noqa: F811
    """One fitted SAM-Match run for the tests of the refinement choice; each test refines a copy."""
    folder, threads = tmp_path_factory.mktemp("refinable"), torch.get_num_threads()
    torch.set_num_threads(1)  # as every test here runs (``one_thread``): small steps on a busy machine
    try:
        run_dir, _, _ = fit_run(phantom, folder, folder / "run", SAM_CFG, steps=8)
    finally:
        torch.set_num_threads(threads)
    config = read_config(run_dir)
    write_json(run_dir / "config.json", config | {"data": str(phantom), "val_split": "val"})
    return run_dir


def _refinable_run(refinable, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(refinable, run_dir)
    model = tiny_sam()
    return run_dir, SamRefinedPredictor(run_dir, model), EmbeddingCache(tmp_path / "cache", model)


def test_refinement_choice_scores_the_student_exactly_as_training_selected_it(phantom, refinable, tmp_path):  # noqa: F811
    run_dir, predictor, cache = _refinable_run(refinable, tmp_path)
    choice = choose_refinement(run_dir, predictor, cache, show_progress=False)
    best = torch.load(run_dir / BEST, map_location="cpu", weights_only=True)
    assert choice["val_dice_student"] == pytest.approx(best["metrics"]["score"], abs=1e-6)
    assert choice["refine"] == (choice["val_dice_refined"] > choice["val_dice_student"])
    assert choice["cases"] == len(open_dataset(phantom).split("val"))
    assert (run_dir / REFINEMENT).exists()


def test_refinement_choice_follows_the_higher_score_and_is_decided_once(phantom, refinable, tmp_path):  # noqa: F811
    run_dir, predictor, cache = _refinable_run(refinable, tmp_path)
    empty_vs_truth = lambda case, slices: (np.zeros_like(case.label), case.label)  # noqa: E731
    predictor.predict_both = empty_vs_truth
    choice = choose_refinement(run_dir, predictor, cache, show_progress=False)
    assert choice["refine"] and choice["val_dice_refined"] == 1.0 and choice["val_dice_student"] == 0.0

    def must_not_run(case, slices):
        raise AssertionError("the stored decision must be reused")
    predictor.predict_both = must_not_run
    assert choose_refinement(run_dir, predictor, cache, show_progress=False) == choice
    (run_dir / REFINEMENT).unlink()
    predictor.predict_both = lambda case, slices: (case.label, np.zeros_like(case.label))
    assert not choose_refinement(run_dir, predictor, cache, show_progress=False)["refine"]


def test_refine_choice_is_checked_and_needs_the_runs_data(phantom, refinable, tmp_path):  # noqa: F811
    run_dir, _, _ = _refinable_run(refinable, tmp_path)
    with pytest.raises(RunError, match="refine must be never, always or if-better"):
        predict(run_dir, phantom, tmp_path / "pred", cache_root=tmp_path / "c", show_progress=False,
                refine="sometimes")
    config = read_config(run_dir)
    write_json(run_dir / "config.json", config | {"data": str(tmp_path / "moved")})
    predictor = SamRefinedPredictor(run_dir, tiny_sam())
    with pytest.raises(RunError, match="is gone"):
        choose_refinement(run_dir, predictor, EmbeddingCache(tmp_path / "c", tiny_sam()), show_progress=False)
