"""The cavity rule: nested anatomy (ACDC's LV inside the myocardium ring) repairs the swap where the
decoder calls the right ventricle "LV" and leaves the real cavity background, and touches nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.inference import CavityRule, keep_largest_components
from fewsam.inference import postprocessing_choice
from fewsam.methods.fewshot import FewShotPredictor

RV, MYO, LV = 1, 2, 3
ACDC = ClassMap({RV: "RV", MYO: "Myo", LV: "LV"})
RULE = CavityRule(MYO, LV, RV)


def heart(cavity: int, beside: int, ring_open: bool = False) -> np.ndarray:
    """(1, 64, 64): a myocardium ring (radius 8-12) whose cavity holds ``cavity``, and a blob
    holding ``beside`` where the right ventricle lies."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 36)
    labels = np.zeros((64, 64), np.uint8)
    labels[(r >= 8) & (r < 12)] = MYO
    labels[r < 8] = cavity
    if ring_open:
        labels[(r >= 8) & (r < 12) & (xx > 36) & (abs(yy - 32) < 4)] = 0  # a gap: the ring no longer closes
    labels[(np.hypot(yy - 32, xx - 14) < 7)] = beside
    return labels[None]


def test_the_swap_is_repaired():
    swapped, truth = heart(cavity=0, beside=LV), heart(cavity=LV, beside=RV)
    assert np.array_equal(RULE.apply(swapped), truth)


@pytest.mark.parametrize("volume", [heart(cavity=LV, beside=RV), heart(cavity=LV, beside=LV),
                                    heart(cavity=0, beside=LV, ring_open=True), heart(cavity=0, beside=0)[:, :4]])
def test_slices_without_the_swap_are_left_as_predicted(volume):
    assert np.array_equal(RULE.apply(volume), volume)


def test_each_slice_is_judged_on_its_own():
    volume = np.concatenate([heart(cavity=0, beside=LV), heart(cavity=0, beside=LV, ring_open=True)])
    out = RULE.apply(volume)
    assert np.array_equal(out[0], heart(cavity=LV, beside=RV)[0]) and np.array_equal(out[1], volume[1])


def test_a_cavity_mostly_labelled_is_not_refilled():
    volume = heart(cavity=RV, beside=LV)  # the cavity is labelled (wrongly, but not background): no swap evidence
    assert np.array_equal(RULE.apply(volume), volume)


def test_parse_names_values_and_mistakes():
    assert CavityRule.parse("Myo:LV:RV", ACDC) == RULE
    assert CavityRule.parse("myo:lv:1", ACDC) == RULE
    for text, message in [("Myo:LV", "RING:INNER:OUTER"), ("Myo:LV:Aorta", "'Aorta' is not a class"),
                          ("Myo:LV:LV", "three different"), ("Myo:LV:0", "'0' is not a class")]:
        with pytest.raises(DataError, match=message):
            CavityRule.parse(text, ACDC)


def test_the_choice_records_the_rule_and_scores_after_it():
    from types import SimpleNamespace

    truth = heart(cavity=LV, beside=RV)
    predictions = [(SimpleNamespace(label=truth, ignore=None), heart(cavity=0, beside=LV))]
    choice = postprocessing_choice(predictions, [0, RV, MYO, LV], RULE)
    assert choice["cavity_rule"] == [MYO, LV, RV]
    assert choice["val_dice_raw"] == pytest.approx(1.0) and choice["val_dice_without_cavity_rule"] < 0.5
    assert postprocessing_choice(predictions, [0, RV, MYO, LV], None)["cavity_rule"] is None


def test_the_predictor_applies_the_rule_before_the_largest_component():
    predictor = object.__new__(FewShotPredictor)
    predictor.values, predictor.cavity_rule, predictor.largest_component = [0, RV, MYO, LV], RULE, True
    swapped = heart(cavity=0, beside=LV)
    swapped[0, 2, 2] = RV  # an island the largest-component step removes
    expected = keep_largest_components(RULE.apply(swapped), [RV, MYO, LV])
    assert np.array_equal(predictor.postprocess(swapped), expected)
    assert np.array_equal(expected[0], heart(cavity=LV, beside=RV)[0])
