"""The supervised lower bound: the student U-Net trained on the labelled slices only.

Same data options, same loop, same loss and the same validation as SAM-Match's student, so the
difference between ``fit supervised``, ``fit samatch --no-sam`` and ``fit samatch`` is exactly
what the unlabelled slices and SAM add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fewsam.distributed import local_part
from fewsam.fitting import FitContext, LabelledLoss
from fewsam.data.types import Case
from fewsam.methods import NO_SAM_FIT_OPTIONS, Method
from fewsam.models.acceleration import prepare_student
from fewsam.methods.student import (SliceSet, StudentFitConfig, StudentPredictor, build_unet, draw_batch,
                                    load_labelled, load_val_cases, validate_student, weak_view)
from fewsam.train import TrainResult, train


@dataclass(frozen=True)
class SupervisedConfig(StudentFitConfig):
    """The supervised student's recipe: exactly the shared student recipe, nothing added."""


class SupervisedTask:
    """A batch of augmented labelled slices, Dice + CE (or its fair scaling)."""

    def __init__(self, module: torch.nn.Module, labelled: SliceSet, cfg: StudentFitConfig, loss_fn: LabelledLoss,
                 val_cases: list[Case], values: list[int], device: str = "cpu") -> None:
        self.module, self.labelled, self.cfg, self.loss_fn = module, labelled, cfg, loss_fn
        self.val_cases, self.values, self.device = val_cases, values, device

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = draw_batch(rng, self.labelled, self.cfg.batch_size)
        x, y = weak_view(self.labelled, idx, rng, self.cfg)
        part = local_part(len(idx))  # torchrun: this rank's share of the batch every rank drew
        logits, y = self.module(x[part].to(self.device)), y[part].to(self.device)
        return self.loss_fn(logits, y, [self.labelled.refs[i] for i in idx[part]]), {}

    def validate(self) -> dict[str, float]:
        return validate_student(self.module, self.val_cases, self.cfg, self.values, self.device)


def fit(ctx: FitContext, cfg: SupervisedConfig, run_dir: Path) -> TrainResult:
    data = load_labelled(ctx, cfg)
    val_cases = load_val_cases(ctx)
    torch.manual_seed(ctx.seed)
    module = prepare_student(build_unet(cfg, len(ctx.values)).to(ctx.device), ctx.acceleration)
    task = SupervisedTask(module, data, cfg, ctx.labelled_loss(None), val_cases, ctx.values, ctx.device)
    return train(task, cfg.train_config(ctx.seed), run_dir, ctx.show_progress)


def student_predictor(run_dir: Path, config: dict, model: object, device: str, values: list[int]) -> StudentPredictor:
    """The predictor of every U-Net student run (supervised and SAM-Match): pixels in, no SAM."""
    return StudentPredictor(run_dir, device)


METHOD = Method("supervised", SupervisedConfig, fit, student_predictor, needs_sam=lambda cfg: False,
                pixels_only=True, fit_options=NO_SAM_FIT_OPTIONS)
