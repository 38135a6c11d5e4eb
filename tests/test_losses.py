"""Known-answer and property tests for fewsam.losses."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewsam.losses import (
    FairScaledLoss,
    binary_dice_bce_loss,
    consistency_ce,
    dice_ce_loss,
    dice_loss,
    fair_group_weights,
    one_hot,
)

LN2 = math.log(2)
T1 = math.tanh(1.0)


def two_class(fg: list[list[float]]) -> torch.Tensor:
    """(1, 2, H, W) probabilities with foreground `fg` and background 1 - fg."""
    fg_t = torch.tensor(fg)[None, None]
    return torch.cat([1 - fg_t, fg_t], dim=1)


@pytest.mark.parametrize(
    "probs_fg, target_fg, include_background, expected",
    [
        # overlap 1.5, sum(p) 1.5, sum(t) 2: 1 - 3 / 3.5
        ([[1.0, 0.5], [0.0, 0.0]], [[1, 1], [0, 0]], False, 1 - 3 / 3.5),
        ([[1.0, 1.0], [0.0, 0.0]], [[1, 1], [0, 0]], False, 0.0),
        ([[0.0, 0.0], [1.0, 1.0]], [[1, 1], [0, 0]], False, 1.0),
        # background p = [[0, .5], [1, 1]], t = [[0, 0], [1, 1]]: overlap 2, sum(p) 2.5, sum(t) 2
        # -> Dice 4 / 4.5; the loss averages it with the foreground's 3 / 3.5
        ([[1.0, 0.5], [0.0, 0.0]], [[1, 1], [0, 0]], True, 1 - (3 / 3.5 + 4 / 4.5) / 2),
    ],
)
def test_dice_loss_known_answers(probs_fg, target_fg, include_background, expected):
    probs, target = two_class(probs_fg), two_class(target_fg)
    loss = dice_loss(probs, target, include_background=include_background, eps=0.0)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_dice_loss_reductions_and_absent_class():
    probs = torch.cat([two_class([[1.0, 0.5], [0.0, 0.0]]), two_class([[0.0, 0.0], [0.0, 0.0]])])
    target = torch.cat([two_class([[1, 1], [0, 0]]), two_class([[0, 0], [0, 0]])])
    per_sample = dice_loss(probs, target)
    # a class absent from both prediction and target scores Dice 1 (eps / eps)
    assert per_sample.tolist() == pytest.approx([1 - 3 / 3.5, 0.0], abs=1e-5)
    assert dice_loss(probs, target, reduction="mean").item() == pytest.approx(per_sample.mean().item())


@pytest.mark.parametrize(
    "kwargs",
    [{"reduction": "sum"}, {"include_background": False, "probs_shape": (1, 1, 2, 2)}],
)
def test_dice_loss_rejects_bad_arguments(kwargs):
    shape = kwargs.pop("probs_shape", (1, 2, 2, 2))
    with pytest.raises(ValueError):
        dice_loss(torch.zeros(shape), torch.zeros(shape), **kwargs)


def test_dice_ce_loss_known_answer():
    # uniform logits over 2 classes: CE = ln 2; p = 0.5 on 4 foreground pixels: Dice 4 / 6
    logits, target = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, dtype=torch.long)
    expected = 0.5 * LN2 + 0.5 * (1 - 4 / 6)
    assert dice_ce_loss(logits, target).item() == pytest.approx(expected, abs=1e-5)
    assert dice_ce_loss(logits, target, ce_weight=1.0, dice_weight=0.0).item() == pytest.approx(LN2)


def test_dice_ce_loss_sample_weights_scale_predictions():
    # weight 0.5 halves p: overlap 1, sum(p) 1, sum(t) 4 -> Dice 2 / 5
    logits, target = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, dtype=torch.long)
    loss = dice_ce_loss(logits, target, ce_weight=0.0, dice_weight=1.0, sample_weights=torch.tensor([0.5]))
    assert loss.item() == pytest.approx(1 - 2 / 5, abs=1e-5)


def test_dice_ce_loss_ignore_index():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 1, :] = 50.0  # confidently foreground on the ignored row
    target = torch.tensor([[[1, 1], [255, 255]]])
    loss = dice_ce_loss(logits, target, ignore_index=255)
    # only the top row counts: CE ln 2; p = 0.5 on 2 foreground pixels -> Dice 2 / 3
    assert loss.item() == pytest.approx(0.5 * LN2 + 0.5 * (1 - 2 / 3), abs=1e-5)


@pytest.mark.parametrize(
    "gamma, normalise, expected",
    [
        # L_0 = mean(0.2, 0.4) = 0.3, L_1 = mean(0.4, 0.8) = 0.6; ratios 1 and 0.5; unknown -> 1
        (1.0, False, [T1, T1, math.tanh(0.5), math.tanh(0.5), 1.0]),
        (1.0, True, [1.0, 1.0, math.tanh(0.5) / T1, math.tanh(0.5) / T1, 1.0]),
        (2.0, False, [T1, T1, math.tanh(0.25), math.tanh(0.25), 1.0]),
        (0.0, False, [T1, T1, T1, T1, 1.0]),
        (0.0, True, [1.0] * 5),
    ],
)
def test_fair_group_weights_by_hand(gamma, normalise, expected):
    loss = torch.tensor([0.2, 0.4, 0.4, 0.8, 0.9])
    groups = torch.tensor([0, 0, 1, 1, -1])
    weights = fair_group_weights(loss, groups, gamma, normalise=normalise)
    assert weights.tolist() == pytest.approx(expected, abs=1e-6)


def test_fair_group_weights_absent_groups_and_unknowns():
    # group ids 0 and 3 only: absent groups 1, 2 play no part in the minimum
    weights = fair_group_weights(torch.tensor([0.5, 0.25]), torch.tensor([3, 0]), 1.0, normalise=False)
    assert weights.tolist() == pytest.approx([math.tanh(0.5), T1])
    all_unknown = fair_group_weights(torch.tensor([0.5, 0.25]), torch.tensor([-1, -1]), 1.0)
    assert torch.equal(all_unknown, torch.ones(2))


def test_fair_group_weights_zero_loss_and_detached():
    loss = torch.tensor([0.0, 0.0, 0.5], requires_grad=True)
    weights = fair_group_weights(loss, torch.tensor([0, 0, 1]), 1.0)
    assert torch.isfinite(weights).all()
    assert weights[0].item() == 1.0 and weights[2].item() == pytest.approx(0.0, abs=1e-6)
    assert not weights.requires_grad
    with pytest.raises(ValueError):
        fair_group_weights(loss, torch.tensor([0, 0, 1]), -1.0)


def random_batch(seed: int, batch: int = 4, classes: int = 3, size: int = 8):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, size, size, generator=gen)
    target = torch.randint(0, classes, (batch, size, size), generator=gen)
    return logits, target


def test_fair_loss_gamma_zero_is_exactly_dice_ce():
    logits, target = random_batch(0)
    groups = torch.tensor([0, 1, 1, -1])
    assert torch.equal(FairScaledLoss(gamma=0.0)(logits, target, groups), dice_ce_loss(logits, target))


def test_fair_loss_raises_loss_and_trains_logits_only():
    logits, target = random_batch(1)
    logits.requires_grad_(True)
    groups = torch.tensor([0, 0, 1, 1])
    fair = FairScaledLoss(gamma=1.0)(logits, target, groups)
    assert fair.item() >= dice_ce_loss(logits, target).item()
    fair.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_binary_dice_bce_known_answer():
    # sigmoid(0) = 0.5 on 4 target pixels: BCE ln 2, Dice 4 / 6
    loss = binary_dice_bce_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    assert loss.item() == pytest.approx(LN2 + 1 - 4 / 6, abs=1e-5)


@pytest.mark.parametrize(
    "mask, expected",
    [
        (torch.tensor([[[True, True], [False, False]]]), LN2 / 2),
        (torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), LN2 / 4),
        (torch.zeros(1, 2, 2), 0.0),
    ],
)
def test_consistency_ce_mean_over_all_pixels(mask, expected):
    loss = consistency_ce(torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, dtype=torch.long), mask)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(2, 5), st.booleans())
def test_dice_loss_in_unit_interval_and_zero_when_perfect(seed, batch, classes, include_background):
    logits, target = random_batch(seed, batch, classes, 6)
    onehot = one_hot(target, classes)
    loss = dice_loss(logits.softmax(dim=1), onehot, include_background=include_background)
    assert loss.shape == (batch,)
    assert ((loss >= -1e-6) & (loss <= 1 + 1e-6)).all()
    perfect = dice_loss(onehot, onehot, include_background=include_background)
    assert torch.allclose(perfect, torch.zeros(batch), atol=1e-6)
