"""The supervised lower bound: the student U-Net trained on the labelled slices only.

Same data options, same loop, same loss and the same validation as SAM-Match's student, so the
difference between ``fit supervised``, ``fit samatch --no-sam`` and ``fit samatch`` is exactly
what the unlabelled slices and SAM add.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fewsam.data.types import SliceRef
from fewsam.errors import DataError, FewsamError
from fewsam.inference import FitContext
from fewsam.losses import dice_ce_loss
from fewsam.methods.student import (SliceSet, StudentConfig, augment_labelled, build_unet, load_slices,
                                    volume_dice_score)
from fewsam.train import TrainConfig, TrainResult, train


# The student's recipes: AdamW + a weight average is the default because it converges within the
# CPU-length schedules fewsam targets (ACDC 3 cases, 1000 steps: supervised 0.592 vs 0.411, SAM-Match
# 0.695 vs 0.429; benchmarks/samatch_results.md); SGD is the paper's recipe for ~30k-step runs.
STUDENT_RECIPES: dict[str, dict[str, float]] = {"adamw": {"lr": 1e-3, "ema": 0.99}, "sgd": {"lr": 0.01, "ema": 0.0}}


def student_recipe(optimizer: str, lr: float | None = None, ema: float | None = None) -> tuple[float, float]:
    """(lr, ema) for ``optimizer``: the given values, or that recipe's defaults where None."""
    if optimizer not in STUDENT_RECIPES:
        raise FewsamError(f"--optimizer must be one of {sorted(STUDENT_RECIPES)}, not {optimizer!r}")
    recipe = STUDENT_RECIPES[optimizer]
    return (recipe["lr"] if lr is None else lr), (recipe["ema"] if ema is None else ema)


def default_train_config(steps: int, lr: float | None, val_every: int, seed: int, optimizer: str = "adamw",
                         ema: float | None = None) -> TrainConfig:
    """The student's optimiser, poly(0.9) decay, weight decay 1e-4; ``lr``/``ema`` None take the
    ``optimizer``'s recipe (``STUDENT_RECIPES``). ``sgd`` (momentum 0.9, lr 0.01, no average) is
    UniMatch / SAM-Match's; ``adamw`` with a weight average (validated and kept) converges in the
    short schedules a CPU affords, where SGD 0.01 has barely started."""
    lr, ema = student_recipe(optimizer, lr, ema)
    return TrainConfig(steps=steps, lr=lr, optimizer=optimizer, momentum=0.9, weight_decay=1e-4,
                       schedule="poly", warmup_steps=0, val_every=val_every, grad_clip=0.0, seed=seed, ema=ema)


def load_labelled(ctx: FitContext, labelled: list[SliceRef], cfg: StudentConfig) -> SliceSet:
    data = load_slices(ctx.dataset, labelled, cfg.image_size, ctx.values)
    if data.labels is None or not len(data.refs):
        raise DataError("the labelled set is empty or has slices without labels; "
                        "give --labeled-cases N or --labeled-slices K with labelled training data")
    return data


def load_val_cases(ctx: FitContext, val_ids: list[str]):
    cases = [ctx.dataset.load(cid) for cid in val_ids]
    if any(c.label is None for c in cases):
        raise DataError("validation cases need labels for model selection; choose another --val-split")
    return cases


class SupervisedTask:
    """A batch of augmented labelled slices, Dice + CE."""

    def __init__(self, module: torch.nn.Module, labelled: SliceSet, cfg: StudentConfig, validate_fn,
                 device: str = "cpu", loss_fn=None) -> None:
        self.module = module
        self.loss_fn = loss_fn  # loss_fn(logits, target, refs), e.g. fairness.FairLoss; None = Dice + CE
        self.labelled = labelled
        self.cfg = cfg
        self.validate_fn = validate_fn
        self.device = device

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        n = len(self.labelled.refs)
        idx = rng.choice(n, min(self.cfg.batch_size, n), replace=False)
        x, y = augment_labelled(self.labelled.images[idx], self.labelled.labels[idx], rng, self.cfg)
        logits, y = self.module(x.to(self.device)), y.to(self.device)
        if self.loss_fn is not None:
            return self.loss_fn(logits, y, [self.labelled.refs[i] for i in idx]), {}
        return dice_ce_loss(logits, y), {}

    def validate(self) -> dict[str, float]:
        return self.validate_fn()


def fit(ctx: FitContext, labelled: list[SliceRef], val_ids: list[str], run_dir: Path,
        train_cfg: TrainConfig, cfg: StudentConfig, loss_fn=None) -> TrainResult:
    data = load_labelled(ctx, labelled, cfg)
    val_cases = load_val_cases(ctx, val_ids)
    torch.manual_seed(train_cfg.seed)
    module = build_unet(cfg, len(ctx.values)).to(ctx.device)
    validate = lambda: volume_dice_score(module, val_cases, cfg, ctx.values, ctx.device)  # noqa: E731
    task = SupervisedTask(module, data, cfg, validate, ctx.device, loss_fn)
    return train(task, train_cfg, run_dir, ctx.show_progress)
