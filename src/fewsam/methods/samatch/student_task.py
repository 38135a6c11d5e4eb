"""SAM-Match's student step: supervised Dice + CE on labelled slices, FixMatch consistency on
unlabelled ones (strong view against the weak view's confident argmax), and, once SAM has
labelled the pool, Dice + CE against SAM's pseudo-labels with a ramped weight.

Only the student sees augmented pixels; SAM stays on un-augmented cached embeddings. The
pseudo-labels come from ``refresh.PseudoLabelRefresh``, the loop's step hook; this task only reads them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from fewsam.data.types import Case
from fewsam.distributed import local_part
from fewsam.fitting import LabelledLoss
from fewsam.labels import IGNORE
from fewsam.losses import consistency_ce, dice_ce_loss
from fewsam.methods.samatch.config import SamMatchConfig
from fewsam.train import ramp
from fewsam.methods.student import (SliceSet, draw_batch, random_affine, strong_photometric, validate_student,
                                    warp, warp_labels, weak_view)


class PseudoLabelSource(Protocol):
    labels: torch.Tensor | None  # (N_u, S, S) uint8 class indices, IGNORE where SAM gave nothing


class SamMatchTask:
    """FixMatch (+ SAM pseudo-labels) for the one loop; ``pseudo`` None = plain FixMatch."""

    loss_weights = ("lambda_u", "sam_weight")  # the options weighing its unlabelled loss terms

    def __init__(self, module: nn.Module, labelled: SliceSet, unlabelled: SliceSet, cfg: SamMatchConfig,
                 loss_fn: LabelledLoss, val_cases: list[Case], values: list[int], device: str = "cpu",
                 pseudo: PseudoLabelSource | None = None) -> None:
        self.module, self.labelled, self.unlabelled, self.cfg = module, labelled, unlabelled, cfg
        self.loss_fn, self.val_cases, self.values, self.device = loss_fn, val_cases, values, device
        self.pseudo = pseudo

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        idx_l = draw_batch(rng, self.labelled, cfg.batch_size)
        idx_u = draw_batch(rng, self.unlabelled, cfg.unlabeled_batch)
        x_l, y_l = weak_view(self.labelled, idx_l, rng, cfg)
        theta = random_affine(len(idx_u), rng, cfg)
        x_w = warp(self.unlabelled.images[idx_u], theta)
        x_s = strong_photometric(x_w, rng)
        # torchrun: every rank drew the whole batch (their generators stay equal) and computes its share
        part_l, part_u = local_part(len(idx_l)), local_part(len(idx_u))
        idx_l, x_l, y_l = idx_l[part_l], x_l[part_l], y_l[part_l]
        idx_u, theta, x_w, x_s = idx_u[part_u], theta[part_u], x_w[part_u], x_s[part_u]
        with torch.no_grad():
            conf, pl = self.module(x_w.to(self.device)).softmax(dim=1).max(dim=1)
        logits = self.module(torch.cat([x_l, x_s]).to(self.device))
        logits_l, logits_s = logits[: len(x_l)], logits[len(x_l):]
        confident = conf >= cfg.threshold
        loss_x = self.loss_fn(logits_l, y_l.to(self.device), [self.labelled.refs[i] for i in idx_l])
        loss_u = consistency_ce(logits_s, pl, confident)
        loss = loss_x + cfg.lambda_u * loss_u
        scalars = {"loss_x": float(loss_x.detach()), "loss_u": float(loss_u.detach()),
                   "confident": float(confident.float().mean())}
        if self.pseudo is not None and self.pseudo.labels is not None:
            target = warp_labels(self.pseudo.labels[idx_u], theta, fill=IGNORE).to(self.device)
            if bool((target != IGNORE).any()):
                weight = cfg.sam_weight * ramp(step - cfg.warmup_steps, cfg.ramp_steps)
                loss_sam = dice_ce_loss(logits_s, target, ignore_index=IGNORE)
                loss = loss + weight * loss_sam
                scalars.update(loss_sam=float(loss_sam.detach()), sam_weight=weight)
        return loss, scalars

    def validate(self) -> dict[str, float]:
        return validate_student(self.module, self.val_cases, self.cfg, self.values, self.device)
