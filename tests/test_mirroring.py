"""Test-time mirroring: the mirror images are the right views, undone exactly, averaged per slice,
kept unless validation vetoes them, and a mirrored prediction commutes with mirroring the input."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewsam.cache import EmbeddingCache
from fewsam.data.types import Case
from fewsam.embedded import MIRROR_VIEWS, CaseSlices, dihedral, undo_dihedral
from fewsam.inference import mirroring_choice
from fewsam.methods.fewshot import FewShotPredictor, PrototypeDecoder, predict_mirrored, predict_slices
from fewsam.models.precision import EncoderPrecision
from fewsam.models.registry import _assemble
from fewsam.models.sam import Preprocessing


@given(st.integers(0, 7), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_undo_dihedral_inverts_every_view(view, channels, h, w):
    a = np.random.default_rng(view).random((channels, h, w))
    assert np.array_equal(undo_dihedral(dihedral(a, view), view), a)


def test_mirror_views_are_the_identity_and_the_three_flips():
    a = np.arange(12).reshape(1, 3, 4)
    expected = [a, a[:, :, ::-1], a[:, ::-1, :], a[:, ::-1, ::-1]]
    for view, mirrored in zip(MIRROR_VIEWS, expected):
        assert np.array_equal(dihedral(a, view), mirrored)


def _record(raw, lcc, per_volume=None):
    record = {"largest_component": lcc > raw, "val_dice_raw": raw, "val_dice_largest_component": lcc}
    return record if per_volume is None else {**record, "val_dice_per_volume": per_volume}


def test_without_per_volume_scores_the_higher_mean_wins_and_a_tie_keeps_mirroring():
    single, mirrored = _record(0.80, 0.82), _record(0.84, 0.83)
    chosen = mirroring_choice(single, mirrored)
    assert chosen["mirror"] is True and chosen["largest_component"] is False and chosen["mirror_off_p"] is None
    assert chosen["val_dice_single_view"] == 0.82 and chosen["val_dice_mirrored"] == 0.84
    assert chosen["views"] == {"single": single, "mirrored": mirrored}  # the single view's raw 0.80 stays readable
    assert mirroring_choice(single, _record(0.81, 0.82))["mirror"] is True  # a tie: mirroring, the default
    kept = mirroring_choice(single, _record(0.81, 0.815))
    assert kept["mirror"] is False and kept["largest_component"] is True


def test_validation_vetoes_mirroring_only_when_the_single_view_is_significantly_better():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.7, 0.9, 20)
    # a lower mean from a few volumes, while mirroring wins most of them: within validation's noise
    noisy = base + np.where(np.arange(20) < 14, 0.01, -0.08)
    single, mirrored = _record(0.0, base.mean(), list(base)), _record(0.0, noisy.mean(), list(noisy))
    assert noisy.mean() < base.mean()
    chosen = mirroring_choice(single, mirrored)
    assert chosen["mirror"] is True and chosen["mirror_off_p"] >= 0.05
    # worse on nearly every volume (a decoder tied to one orientation): the veto
    worse = base - rng.uniform(0.05, 0.3, 20)
    vetoed = mirroring_choice(single, _record(0.0, worse.mean(), list(worse)))
    assert vetoed["mirror"] is False and vetoed["mirror_off_p"] < 0.01
    # identical per volume: nothing to veto
    assert mirroring_choice(single, _record(0.0, base.mean(), list(base)))["mirror_off_p"] == 1.0


def test_too_few_validation_volumes_for_the_test_compare_means():
    single = _record(0.0, 0.8, [0.8, 0.8, 0.8, 0.8])
    assert mirroring_choice(single, _record(0.0, 0.7, [0.7] * 4))["mirror"] is False
    assert mirroring_choice(single, _record(0.0, 0.8, [0.8] * 4))["mirror_off_p"] is None


def test_the_volumes_of_one_subject_make_one_pair_of_the_veto():
    """Twelve volumes of six patients (two frames each). The single view leads on eleven volumes,
    so as twelve pairs it is significantly better; but one patient's other frame loses so much that
    the patient's mean does: as six subject pairs the lead is within the noise and mirroring stays."""
    base = np.linspace(0.7, 0.9, 12)
    better = base + np.array([0.03] * 10 + [0.01, -0.09])
    single, mirrored = _record(0.0, better.mean(), list(better)), _record(0.0, base.mean(), list(base))
    assert mirroring_choice(single, mirrored)["mirror"] is False
    paired = mirroring_choice(single, mirrored, [f"patient{i // 2}" for i in range(12)])
    assert paired["mirror"] is True and paired["mirror_off_p"] == pytest.approx(17 / 64)
    # four subjects are too few for the test: the higher mean decides
    assert mirroring_choice(single, mirrored, [f"p{i // 3}" for i in range(12)])["mirror_off_p"] is None


def test_subject_names_must_match_the_volume_scores():
    single = _record(0.0, 0.8, [0.8] * 6)
    with pytest.raises(ValueError, match="6 volume scores but 5 subjects"):
        mirroring_choice(single, _record(0.0, 0.7, [0.7] * 6), ["a", "b", "c", "d", "e"])


@pytest.fixture(scope="module")
def lite():
    """A SAM whose encoder is one strided convolution with random weights: like LiteMedSAM's, its
    embeddings of a mirrored image are not the mirrored embeddings (what these tests need), at a
    thousandth of the cost of encoding sixteen views."""
    torch.manual_seed(0)
    encoder = torch.nn.Conv2d(3, 256, kernel_size=4, stride=4, bias=False)
    with torch.no_grad():  # zero-mean filters: the channels follow the image's texture, not its brightness
        encoder.weight -= encoder.weight.mean(dim=(1, 2, 3), keepdim=True)
    return _assemble("asymmetric", encoder, Preprocessing(256, "unit"))


def _case(image: np.ndarray, label: np.ndarray | None = None) -> Case:
    return Case("c", image, label, "nifti", "c.nii.gz", (1.0, 1.0, 1.0), {}, {})


class ChannelDecoder(torch.nn.Module):
    """A stand-in decoder whose class logits are embedding channels, upsampled to the mask size:
    its predictions differ from view to view (the encoder is not mirror-equivariant)."""

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        picked = embeddings[:, : tokens.shape[0]] * 50.0
        return torch.nn.functional.interpolate(picked, size=(256, 256), mode="bilinear")


def test_mirrored_prediction_commutes_with_mirroring_the_input(lite, tmp_path):
    """Averaging over the mirror group makes the prediction equivariant to it: predicting a
    left-right flipped case gives the flipped prediction (up to the order of the average)."""
    rng = np.random.default_rng(0)
    image = rng.random((1, 40, 56)).astype(np.float32)
    cache = EmbeddingCache(tmp_path / "cache", lite, EncoderPrecision("fp32", "torch"))
    decoder, tokens, values = ChannelDecoder(), torch.zeros(3, 1, 256), [0, 1, 2]
    slices = CaseSlices(_case(image), cache)
    pred = predict_mirrored(decoder, tokens, slices, values)
    flipped = predict_mirrored(decoder, tokens, CaseSlices(_case(image[:, :, ::-1].copy()), cache), values)
    assert pred.shape == image.shape and len(np.unique(pred)) == 3
    assert np.mean(flipped != pred[:, :, ::-1]) < 1e-3
    single = np.stack(predict_slices(decoder, tokens, slices, values))
    assert np.mean(single != pred) > 0.01  # the average is not the stored view alone
    assert np.mean(np.stack(predict_slices(decoder, tokens, CaseSlices(_case(image[:, :, ::-1].copy()), cache),
                                           values)) != single[:, :, ::-1]) > 0.01  # unlike a single view


def test_predictor_mirrors_when_the_run_chose_it_and_needs_case_slices(lite, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    decoder = PrototypeDecoder(lite, 3)
    torch.save({"tokens": torch.randn(3, 1, 256), "shots": [], "values": [0, 1, 2]}, run / "prompt_bank.pt")
    torch.save({"module": decoder.state_dict(), "step": 1, "metrics": {"score": 0.5}}, run / "checkpoint_best.pt")
    (run / "postprocess.json").write_text(json.dumps({"largest_component": False, "mirror": True}))
    predictor = FewShotPredictor(run, lite)
    image = np.random.default_rng(1).random((1, 32, 40)).astype(np.float32)
    slices = CaseSlices(_case(image), EmbeddingCache(tmp_path / "cache", lite, EncoderPrecision("fp32", "torch")))
    assert np.array_equal(predictor.predict_case(_case(image), slices),
                          predict_mirrored(predictor.decoder, predictor.tokens, slices, [0, 1, 2]))
    with pytest.raises(TypeError, match="CaseSlices"):
        predictor.predict_case(_case(image), list(slices))


def test_the_kept_line_names_each_choice_and_the_score_prediction_will_have():
    from fewsam.inference import describe_kept

    raw = {"cavity_rule": None, "largest_component": False, "val_dice_raw": 0.8, "val_dice_largest_component": 0.7}
    assert describe_kept(raw) == ("kept for prediction, chosen on validation: the raw network output; "
                                  "validation Dice 0.8000")
    blended = {**raw, "cavity_rule": [2, 3, 1], "mirror": True, "teacher_blend": True, "largest_component": True,
               "val_dice_largest_component": 0.88951, "val_dice_student": 0.87}
    assert describe_kept(blended).endswith("the cavity rule, mirrored views, the teacher blend, largest components; "
                                           "validation Dice 0.8895")
