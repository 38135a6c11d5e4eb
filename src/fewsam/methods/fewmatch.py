"""FewMatch: the few-shot prototype decoder, taught also by the unlabelled pool (semi-supervised).

Few-shot SAM fits its decoder to the labelled slices only, and a few patients are easy to
overfit. The unlabelled training slices cost one cached encoder pass each, after which a decoder
step on them is cheap, so the decoder can learn from them UniMatch-style on the embeddings
themselves: the decoder's own prediction on a slice's cached embedding (the weak view) supervises
its prediction on a perturbed copy of that embedding (the strong view), wherever the weak view is
confident. Two perturbations of the feature map, the level the decoder sees:
- channel dropout (a random subset of the 256 embedding channels zeroed, the rest rescaled),
  which asks the decoder not to hang a class on a few feature channels;
- CutMix between two unlabelled embeddings (a box of one pasted into the other on the 64x64
  grid, and the same box, scaled, in the pseudo-labels), which asks it to label a structure from
  its local evidence rather than from where it usually sits.
The labelled loss, the prompt bank, validation and prediction are few-shot SAM's own
(``fewsam.methods.fewshot``); a fitted run predicts exactly as a few-shot run does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fewsam.config import UnlabelledPoolConfig, option
from fewsam.data.types import SliceRef
from fewsam.embedded import CachedPool, EmbeddedSlice
from fewsam.errors import DataError
from fewsam.fitting import FitContext, say_if_warm_up_fills_the_fit, say_unused_options
from fewsam.losses import consistency_ce
from fewsam.methods import Method
from fewsam.methods import fewshot
from fewsam.methods.fewshot import FewShotConfig, FewShotTask, channel_dropout, sampled_tokens
from fewsam.train import TrainConfig, TrainResult, ramp

# What only the consistency loss reads: --lambda-u 0 turns it off (and no step reads the unlabelled pool).
CONSISTENCY_ONLY = ("unlabeled_batch", "threshold", "warmup_steps", "ramp_steps", "feature_dropout", "cutmix",
                    "unlabeled_limit", "unlabeled_split")


@dataclass(frozen=True)
class FewMatchConfig(FewShotConfig, UnlabelledPoolConfig):
    """Few-shot SAM's recipe plus the consistency on the unlabelled pool."""

    steps: int = option(800, "Training steps (batches); the unlabelled pool keeps the decoder improving "
                        "past few-shot SAM's 400.", min=1)
    augmented_views: int = option(0, "Augmented copies encoded per labelled slice and trained on beside its views "
                                  "(as few-shot SAM's --augmented-views; off here: with them, FewMatch scored the "
                                  "same on validation at 544 more encoder passes).", min=0, max=64)
    unlabeled_batch: int = option(4, "Unlabelled slices per step.", min=1)
    threshold: float = option(0.9, "Confidence a weak-view pixel needs to supervise the strong view (at most 1: "
                              "above it no pixel would be, and the fit would be few-shot SAM).", min=0.0, max=1.0)
    lambda_u: float = option(1.0, "Final weight of the unlabelled consistency loss.", min=0.0)
    warmup_steps: int = option(50, "Labelled-only steps before the consistency loss starts.", min=0)
    ramp_steps: int = option(100, "Steps over which the consistency weight ramps up to --lambda-u.", min=0)
    feature_dropout: float = option(0.5, "Fraction of embedding channels dropped in the strong view.",
                                    min=0.0, max=0.95)
    cutmix: float = option(0.5, "Probability that a strong view gets a CutMix box from another slice.",
                           min=0.0, max=1.0)

    def train_config(self, seed: int) -> TrainConfig:
        """Few-shot's, with --patience judged only once the consistency loss has ramped up; --lambda-u 0 (no
        consistency loss) has nothing to wait for, as few-shot SAM has not."""
        waits = self.warmup_steps + self.ramp_steps if self.lambda_u > 0 else 0
        return replace(super().train_config(seed), patience_after=waits)


def cutmix_boxes(n: int, grid: int, probability: float, rng: np.random.Generator
                 ) -> list[tuple[int, int, int, int] | None]:
    """Per slice, a box (y0, x0, h, w) on the (grid x grid) embedding covering a quarter to half of it, or None."""
    boxes: list[tuple[int, int, int, int] | None] = []
    for _ in range(n):
        if rng.random() >= probability:
            boxes.append(None)
            continue
        area = rng.uniform(0.25, 0.5) * grid * grid
        ratio = rng.uniform(0.5, 2.0)
        h = int(min(grid, round(np.sqrt(area * ratio))))
        w = int(min(grid, round(area / h)))
        boxes.append((int(rng.integers(0, grid - h + 1)), int(rng.integers(0, grid - w + 1)), h, w))
    return boxes


def paste_boxes(emb: torch.Tensor, labels: torch.Tensor, conf: torch.Tensor,
                boxes: list[tuple[int, int, int, int] | None], partner: np.ndarray
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix: slice i receives ``partner[i]``'s box on the grid, and the same box (scaled to the
    label resolution) of its pseudo-labels and confidences, so the target follows the pixels."""
    emb, labels, conf = emb.clone(), labels.clone(), conf.clone()
    scale = labels.shape[-1] // emb.shape[-1]
    for i, box in enumerate(boxes):
        if box is None:
            continue
        y, x, h, w = box
        j = int(partner[i])
        emb[i, :, y:y + h, x:x + w] = emb[j, :, y:y + h, x:x + w]
        ys, xs = slice(y * scale, (y + h) * scale), slice(x * scale, (x + w) * scale)
        labels[i, ys, xs] = labels[j, ys, xs]
        conf[i, ys, xs] = conf[j, ys, xs]
    return emb, labels, conf


def padding_mask(slices: list[EmbeddedSlice], size: int) -> torch.Tensor:
    """(B, S, S) True inside each slice's image, False on the model frame's zero padding."""
    mask = torch.zeros(len(slices), size, size, dtype=torch.bool)
    for i, s in enumerate(slices):
        h, w = s.info.resized_hw
        mask[i, :h, :w] = True
    return mask


class FewMatchTask(FewShotTask):
    """Few-shot SAM's labelled step plus weak-to-strong consistency on unlabelled embeddings."""

    loss_weights = ("lambda_u",)

    def __init__(self, *args, unlabelled: Sequence[EmbeddedSlice], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unlabelled = unlabelled

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss_x, scalars = super().training_loss(rng, step)
        cfg = self.cfg
        if step < cfg.warmup_steps or cfg.lambda_u == 0:
            return loss_x, scalars
        loss_u, confident = self.consistency_loss(rng)
        weight = cfg.lambda_u * ramp(step - cfg.warmup_steps, cfg.ramp_steps)
        scalars.update(loss_x=float(loss_x.detach()), loss_u=float(loss_u.detach()), confident=confident,
                       lambda_u=weight)
        return loss_x + weight * loss_u, scalars

    def consistency_loss(self, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
        """CE of the strong view against the weak view's confident argmax; and the confident fraction."""
        cfg = self.cfg
        idx = rng.choice(len(self.unlabelled), min(cfg.unlabeled_batch, len(self.unlabelled)), replace=False)
        batch = [self.unlabelled[i] for i in idx]
        emb = torch.stack([s.embedding_tensor() for s in batch]).to(self.device)
        tokens = sampled_tokens(self.shots, cfg.tokens_per_class, cfg.shot_dropout, rng).to(self.device)
        with torch.no_grad():
            conf, labels = self.module(emb, tokens).softmax(dim=1).max(dim=1)
        conf = conf * padding_mask(batch, labels.shape[-1]).to(conf)
        boxes = cutmix_boxes(len(batch), emb.shape[-1], cfg.cutmix, rng)
        emb, labels, conf = paste_boxes(emb, labels, conf, boxes, rng.permutation(len(batch)))
        strong = channel_dropout(emb, cfg.feature_dropout, rng)
        confident = conf >= cfg.threshold
        return consistency_ce(self.module(strong, tokens), labels, confident), float(confident.float().mean())


def unlabelled_refs(ctx: FitContext, cfg: FewMatchConfig) -> list[SliceRef]:
    """The unlabelled pool, refused when it is empty (FewMatch would be few-shot SAM)."""
    refs = ctx.unlabelled_pool(cfg)
    if not refs:
        raise DataError("no unlabelled training slices are left; use fewer labelled cases or `fit fewshot`")
    return refs


def unlabelled_embeddings(ctx: FitContext, refs: list[SliceRef]) -> CachedPool:
    """The unlabelled pool (one view each), encoded on a miss and read back from the cache as a step draws
    its slices: a step reads ``unlabeled_batch`` of them, and the whole pool's would be 2 MiB a slice."""
    # images only: the consistency loss never reads labels, so none can leak in
    return CachedPool(ctx.dataset, refs, ctx.cache, ctx.device, ctx.show_progress, "embed unlabelled")


def fit(ctx: FitContext, cfg: FewMatchConfig, run_dir: Path) -> TrainResult:
    """Few-shot SAM's fit, with the unlabelled pool in every step after the warm-up. An empty pool is
    refused at once; the pool is encoded once few-shot SAM's own checks have passed."""
    refs = unlabelled_refs(ctx, cfg)
    if cfg.lambda_u > 0:
        say_if_warm_up_fills_the_fit(cfg.warmup_steps, cfg.steps, "the consistency loss on the unlabelled pool",
                                     "few-shot SAM on the labelled slices alone")
    else:
        say_unused_options(cfg, CONSISTENCY_ONLY, "--lambda-u 0 turns the consistency loss off, so this fit is "
                                                  "few-shot SAM on the labelled slices alone")
    return fewshot.fit(ctx, cfg, run_dir, FewMatchTask, lambda: {"unlabelled": unlabelled_embeddings(ctx, refs)})


METHOD = Method("fewmatch", FewMatchConfig, fit, fewshot.METHOD.predictor)
