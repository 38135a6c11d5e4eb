"""Self-prompted SAM refinement of few-shot masks: SAM's own decoder (not the fitted one) redraws
the masks, the model's label stands where SAM was not asked, and a fit keeps refinement only
when it scores higher on validation."""

import json

import numpy as np
import pytest
import torch

from fewsam.cache import EmbeddingCache
from fewsam.data.types import Case
from fewsam.embedded import CaseSlices
from fewsam.methods.fewshot import (FewShotPredictor, PrototypeDecoder, sam_refined_volume, slice_probabilities)
from fewsam.models.precision import EncoderPrecision
from fewsam.models.registry import load_model
from fewsam.self_prompting import IGNORE, merge_refined


def test_merge_refined_keeps_the_model_where_sam_did_not_answer():
    model = np.array([[1, 1], [2, 3]])
    refined = np.array([[IGNORE, 1], [0, IGNORE]])
    assert merge_refined(model, refined).tolist() == [[1, 1], [0, 3]]
    assert merge_refined(model, None) is model


@pytest.fixture(scope="module")
def lite():
    return load_model("litemedsam")


def _case(image: np.ndarray) -> Case:
    return Case("c", image, None, "nifti", "c.nii.gz", (1.0, 1.0, 1.0), {}, {})


def _disk_image(h: int = 64, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 30) ** 2 + (xx - 34) ** 2 < 12 ** 2
    return (0.2 + 0.6 * disk + 0.02 * np.random.default_rng(0).random((h, w)))[None].astype(np.float32), disk


def test_sam_redraws_a_rough_mask_of_a_clear_structure(lite, tmp_path):
    """A square mask inside a bright disk: SAM, prompted by its box and centre, returns the disk."""
    image, disk = _disk_image()
    square = np.zeros_like(disk)
    square[22:38, 26:42] = True
    probs = np.stack([~square, square]).astype(np.float32)[None]  # (D=1, Q=2, H, W)
    slices = CaseSlices(_case(image), EmbeddingCache(tmp_path, lite, EncoderPrecision("fp32", "torch")))
    refined = sam_refined_volume(lite, slices, list(probs), [0, 1])[0] == 1

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice(refined, disk) > dice(square, disk) + 0.05


def test_predictor_refines_with_sams_own_decoder_when_the_run_chose_it(lite, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    fitted = PrototypeDecoder(load_model("litemedsam"), 2)
    for p in fitted.mask_decoder.parameters():  # a fitted decoder whose SAM weights moved far
        p.data.add_(torch.randn_like(p))
    torch.save({"tokens": torch.randn(2, 1, 256), "shots": [], "values": [0, 1]}, run / "prompt_bank.pt")
    torch.save({"module": fitted.state_dict(), "step": 1, "metrics": {"score": 0.5}}, run / "checkpoint_best.pt")
    (run / "postprocess.json").write_text(json.dumps({"largest_component": False, "sam_refine": True}))
    model = load_model("litemedsam")
    pristine = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    predictor = FewShotPredictor(run, model)
    assert all(torch.equal(pristine[k], v) for k, v in predictor.sam.mask_decoder.state_dict().items())
    assert not torch.equal(model.mask_decoder.output_upscaling[0].weight, pristine["output_upscaling.0.weight"])
    image, _ = _disk_image()
    slices = CaseSlices(_case(image), EmbeddingCache(tmp_path / "cache", lite, EncoderPrecision("fp32", "torch")))
    expected = sam_refined_volume(lite, slices, list(slice_probabilities(predictor.decoder, predictor.tokens, slices)),
                                  [0, 1])
    assert np.array_equal(predictor.predict_case(_case(image), slices), expected)
    (run / "postprocess.json").write_text(json.dumps({"largest_component": False, "sam_refine": False}))
    assert FewShotPredictor(run, load_model("litemedsam")).sam is None
