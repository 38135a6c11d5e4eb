"""The one loss module: soft Dice, Dice + CE, FairSeg's fair error-bound scaling, SAM fine-tuning
(Dice + BCE) and FixMatch-style consistency.

Shapes: logits and probabilities are (B, C, *spatial) with spatial = (H, W) or (D, H, W);
integer targets are (B, *spatial). Soft Dice is computed per sample and class as
(2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps) (MONAI's default, non-squared denominator), so a
class absent from both prediction and target scores 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REDUCTIONS = ("none", "mean")


def one_hot(target: Tensor, n_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, *spatial) integer labels -> (B, C, *spatial) one-hot of `dtype`."""
    return F.one_hot(target, n_classes).movedim(-1, 1).to(dtype)


def dice_loss(
    probs: Tensor,
    target_onehot: Tensor,
    include_background: bool = False,
    reduction: str = "none",
    eps: float = 1e-5,
) -> Tensor:
    """Soft Dice loss, 1 - mean over classes of the per-sample soft Dice.

    probs, target_onehot: (B, C, *spatial). Channel 0 is background and is dropped unless
    `include_background`. Returns (B,) for reduction "none", a scalar for "mean".
    """
    if probs.shape != target_onehot.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target_onehot.shape)} differ")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not include_background:
        probs, target_onehot = probs[:, 1:], target_onehot[:, 1:]
    if probs.shape[1] == 0:
        raise ValueError("no class left: a single-channel input needs include_background=True")
    dims = tuple(range(2, probs.ndim))
    overlap = (probs * target_onehot).sum(dims)
    total = probs.sum(dims) + target_onehot.sum(dims)
    loss = 1 - ((2 * overlap + eps) / (total + eps)).mean(dim=1)
    return loss.mean() if reduction == "mean" else loss


def dice_ce_loss(
    logits: Tensor,
    target: Tensor,
    ce_weight: float = 0.5,
    dice_weight: float = 0.5,
    sample_weights: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """ce_weight * CE(logits) + dice_weight * foreground Dice loss on the softmax probabilities.

    logits (B, C, *spatial), target (B, *spatial) long; returns a scalar.
    sample_weights (B,), FairSeg's error-bound scaling: each sample's softmax probabilities are
    multiplied by its weight inside the Dice term (not the loss itself), so a weight below 1
    lowers that sample's predictions and raises its Dice loss and gradients. CE is unweighted.
    ignore_index: pixels with this label count in neither term (e.g. padding).
    """
    ce = F.cross_entropy(logits, target, ignore_index=-100 if ignore_index is None else ignore_index)
    probs, onehot = _dice_inputs(logits.softmax(dim=1), target, ignore_index)
    if sample_weights is not None:
        probs = probs * sample_weights.reshape(-1, *([1] * (probs.ndim - 1))).to(probs.dtype)
    return ce_weight * ce + dice_weight * dice_loss(probs, onehot, reduction="mean")


class DiceCELoss:
    """``dice_ce_loss`` as a labelled loss ``loss(logits, target, batch)``: the batch items are not
    needed, but the signature is the one fair scaling needs too (``fairness.FairLoss``)."""

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = ignore_index

    def __call__(self, logits: Tensor, target: Tensor, batch: object = None) -> Tensor:
        return dice_ce_loss(logits, target, ignore_index=self.ignore_index)


def fair_group_weights(
    per_sample_dice_loss: Tensor, groups: Tensor, gamma: float, normalise: bool = True
) -> Tensor:
    """FairSeg's error-bound weights, one per sample (B,), detached.

    L_g = mean per-sample Dice loss of group g, over the groups present in the batch;
    w_g = tanh((min_h L_h / L_g) ** gamma), so the worse a group does, the lower its weight
    (and, through `dice_ce_loss`'s scaling of predictions, the larger its loss).
    groups (B,) long, -1 = unknown: unknown samples get weight 1.

    normalise=True (default) divides by tanh(1): the best group gets weight 1 and gamma = 0
    returns exactly 1 for everyone, i.e. the unscaled loss. normalise=False gives the authors'
    weights unchanged (gamma = 0 then scales every prediction by tanh(1) ~ 0.76).
    Differences from the authors' `febs_loss`: groups absent from the batch are ignored (theirs
    get weight 0), L_g averages per-sample losses instead of pooling the group's pixels, and only
    foreground classes count. A group with zero loss drives the others' weights to 0, not NaN.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    loss = per_sample_dice_loss.detach()
    weights = torch.ones_like(loss)
    known = groups >= 0
    if (gamma == 0 and normalise) or not bool(known.any()):
        return weights
    ids, inverse = torch.unique(groups[known], return_inverse=True)
    sums = torch.zeros(len(ids), dtype=loss.dtype, device=loss.device).index_add_(0, inverse, loss[known])
    group_loss = sums / torch.bincount(inverse, minlength=len(ids)).to(loss.dtype)
    group_loss = group_loss.clamp_min(torch.finfo(loss.dtype).tiny)
    group_weight = torch.tanh((group_loss.min() / group_loss) ** gamma)
    if normalise:
        group_weight = (group_weight / torch.tanh(torch.ones_like(group_weight))).clamp_max(1.0)
    weights[known] = group_weight[inverse]
    return weights


class FairScaledLoss(nn.Module):
    """`dice_ce_loss` with FairSeg's fair error-bound scaling; any trainer can swap it in.

    gamma = 0 (with normalise=True) is exactly `dice_ce_loss`; the paper fine-tunes with gamma = 1.
    """

    def __init__(
        self,
        gamma: float = 1.0,
        ce_weight: float = 0.5,
        dice_weight: float = 0.5,
        normalise: bool = True,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.gamma, self.normalise, self.ignore_index = gamma, normalise, ignore_index
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def forward(self, logits: Tensor, target: Tensor, groups: Tensor) -> Tensor:
        """logits (B, C, *spatial), target (B, *spatial) long, groups (B,) long (-1 = unknown)."""
        weights = fair_group_weights(self._per_sample_dice(logits, target), groups, self.gamma, self.normalise)
        return dice_ce_loss(
            logits, target, self.ce_weight, self.dice_weight, sample_weights=weights, ignore_index=self.ignore_index
        )

    def _per_sample_dice(self, logits: Tensor, target: Tensor) -> Tensor:
        probs, onehot = _dice_inputs(logits.detach().softmax(dim=1), target, self.ignore_index)
        return dice_loss(probs, onehot, reduction="none")


def _dice_inputs(probs: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Probabilities and one-hot target, with ignored pixels zeroed in both."""
    if ignore_index is None:
        return probs, one_hot(target, probs.shape[1], probs.dtype)
    keep = target != ignore_index
    onehot = one_hot(torch.where(keep, target, torch.zeros_like(target)), probs.shape[1], probs.dtype)
    keep = keep.unsqueeze(1).to(probs.dtype)
    return probs * keep, onehot * keep


def binary_dice_bce_loss(
    logits: Tensor, target: Tensor, dice_weight: float = 1.0, bce_weight: float = 1.0
) -> Tensor:
    """Dice on sigmoid probabilities + BCE on logits, for SAM's per-prompt masks (SAM-Match / MedSAM-Lite).

    logits, target: (B, 1, *spatial), target float in {0, 1}; returns a scalar.
    """
    target = target.to(logits.dtype)
    dice = dice_loss(logits.sigmoid(), target, include_background=True, reduction="mean")
    return dice_weight * dice + bce_weight * F.binary_cross_entropy_with_logits(logits, target)


def consistency_ce(logits_strong: Tensor, pseudo_labels: Tensor, mask: Tensor) -> Tensor:
    """FixMatch's unlabelled loss: CE against confident pseudo-labels, averaged over all pixels.

    logits_strong (B, C, *spatial); pseudo_labels (B, *spatial) long; mask (B, *spatial) bool or
    float (confidence >= threshold). Unconfident pixels contribute 0 but still count in the mean.
    """
    ce = F.cross_entropy(logits_strong, pseudo_labels, reduction="none")
    return (ce * mask.to(ce.dtype)).mean()
