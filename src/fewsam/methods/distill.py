"""Distill: a U-Net student trained on the labelled slices plus a fitted run's predictions on the
unlabelled pool (its pseudo-labels).

A few-shot / FewMatch decoder segments well from a few cases but sees each slice through a frozen
64x64 embedding, and a handful of labelled patients leaves it free to mistake one ventricle for
another on patients unlike them. A student that learns pixels from hundreds of pseudo-labelled
slices of many patients (with the teacher's own post-processing: mirroring, cavity rule, largest
components) sees far more anatomy than the labelled cases show, under geometric and photometric
noise (a "noisy student"), and then predicts from pixels alone: no SAM, no embedding cache.

The teacher is any fitted run of the same data, labelled set and label values (checked, so no
labelled slice of another budget can leak in). Its pseudo-labels are computed once and stored in
the run folder, so a resumed fit does not label the pool again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fewsam.config import ConfigError, option
from fewsam.data import select_unlabelled
from fewsam.data.types import Case, SliceRef
from fewsam.distributed import local_part
from fewsam.embedded import CaseSlices
from fewsam.errors import DataError
from fewsam.fitting import FitContext, LabelledLoss
from fewsam.inference import CAVITY_RULE_HELP, POSTPROCESS, CavityRule
from fewsam.labels import value_lut
from fewsam.losses import dice_ce_loss
from fewsam.methods import Method, get_method
from fewsam.methods.student import (SliceSet, StudentFitConfig, build_unet, draw_batch, load_labelled, load_slices,
                                    load_val_cases, strong_photometric, student_label, student_postprocessing_choice,
                                    validate_student, weak_view)
from fewsam.methods.supervised import student_predictor
from fewsam.models.acceleration import prepare_student
from fewsam.progress import tracked
from fewsam.runs import read_config, write_json
from fewsam.train import TrainResult, atomic_torch_save, load_best, train

PSEUDO_FILE = "pseudo_labels.pt"


@dataclass(frozen=True)
class DistillConfig(StudentFitConfig):
    """The shared student recipe, plus where its pseudo-labels come from and how much they weigh."""

    teacher: str | None = option(None, "Fitted run folder (e.g. fewmatch) whose predictions on the unlabelled "
                                 "pool become the student's pseudo-labels (required).")
    unlabeled_batch: int = option(8, "Pseudo-labelled slices per step.", min=1)
    unlabeled_limit: int | None = option(None, "Seeded subset of the unlabelled pool.", min=1)
    unlabeled_split: str | None = option(None, "Split or list file whose training cases form the unlabelled pool "
                                         "(default: every training case not labelled).")
    pseudo_weight: float = option(1.0, "Weight of the Dice + CE loss on the pseudo-labelled slices.", min=0.0)
    noisy: bool = option(True, "Strong photometric noise (brightness, contrast, blur, cutout) on the "
                         "pseudo-labelled slices, as in noisy-student training.", flag="--noisy/--no-noisy")
    cavity_rule: str | None = option(None, CAVITY_RULE_HELP)
    test_mirroring: bool = option(True, "Average each prediction over the slice's four mirror images (as nnU-Net "
                                  "does) if that scores higher on validation; 4 U-Net passes per slice.",
                                  flag="--test-mirroring/--no-test-mirroring")


def teacher_config(ctx: FitContext, cfg: DistillConfig) -> tuple[Path, dict]:
    """The teacher's folder and config.json, refused unless it was fitted on the same labelled
    slices, label values and SAM weights as this fit."""
    if not cfg.teacher:
        raise ConfigError("say which fitted run teaches the student: --teacher RUN")
    folder = Path(cfg.teacher)
    config = read_config(folder)
    refs = [f"{r.case_id}:{r.z}" for r in ctx.labelled]
    if config.get("labelled", {}).get("refs") != refs:
        raise ConfigError(f"the teacher {folder} was fitted on other labelled slices than this fit's budget; "
                          "give the same --labeled-cases / --labeled-slices as the teacher's fit")
    if list(config.get("values", [])) != ctx.values:
        raise ConfigError(f"the teacher {folder} predicts label values {config.get('values')}, this data has "
                          f"{ctx.values}")
    if config.get("weights_sha256") and ctx.model is not None and config["weights_sha256"] != ctx.model.weights_sha256:
        raise ConfigError(f"the teacher {folder} was fitted on other SAM weights; give its --model / --checkpoint")
    return folder, config


def teacher_labels(ctx: FitContext, folder: Path, config: dict, refs: list[SliceRef]) -> list[np.ndarray]:
    """The teacher's predicted label values on each unlabelled slice, at the slice's own size."""
    method = get_method(config.get("method"))
    predictor = method.predictor(folder, config, ctx.model, ctx.device, ctx.values)
    wanted: dict[str, list[int]] = {}
    for ref in refs:
        wanted.setdefault(ref.case_id, []).append(ref.z)
    by_ref: dict[tuple[str, int], np.ndarray] = {}
    for case_id in tracked(list(wanted), "pseudo-label", ctx.show_progress):
        case: Case = ctx.dataset.load(case_id)
        slices = [] if method.pixels_only else CaseSlices(case, ctx.cache, ctx.device)
        volume = predictor.predict_case(case, slices)
        for z in wanted[case_id]:
            by_ref[(case_id, z)] = np.asarray(volume[z])
    return [by_ref[(r.case_id, r.z)] for r in refs]


def pseudo_labelled(ctx: FitContext, cfg: DistillConfig, run_dir: Path) -> SliceSet:
    """The unlabelled pool in the student frame, labelled by the teacher (stored in RUN, reused on resume)."""
    refs = select_unlabelled(ctx.dataset, ctx.labelled, cfg.unlabeled_limit, ctx.seed, cfg.unlabeled_split)
    if not refs:
        raise DataError("no unlabelled training slices are left; use fewer labelled cases or `fit supervised`")
    data = load_slices(ctx.dataset, refs, cfg.image_size, ctx.values)
    names = [f"{r.case_id}:{r.z}" for r in refs]
    stored = run_dir / PSEUDO_FILE
    if stored.exists():
        saved = torch.load(stored, map_location="cpu", weights_only=True)
        if saved["refs"] == names and saved["teacher"] == str(Path(cfg.teacher).resolve()):
            data.labels = saved["labels"]
            return data
    folder, config = teacher_config(ctx, cfg)
    lut = value_lut(ctx.values)
    labels = teacher_labels(ctx, folder, config, refs)
    data.labels = torch.stack([student_label(lab, cfg.image_size, lut) for lab in labels])
    atomic_torch_save({"refs": names, "teacher": str(folder.resolve()), "labels": data.labels}, stored)
    return data


class DistillTask:
    """Each step: augmented labelled slices (their loss, fair scaling included) + augmented, noised
    pseudo-labelled slices (Dice + CE against the teacher), through one forward pass."""

    def __init__(self, module: torch.nn.Module, labelled: SliceSet, pseudo: SliceSet, cfg: DistillConfig,
                 loss_fn: LabelledLoss, val_cases: list[Case], values: list[int], device: str = "cpu") -> None:
        self.module, self.labelled, self.pseudo, self.cfg = module, labelled, pseudo, cfg
        self.loss_fn, self.val_cases, self.values, self.device = loss_fn, val_cases, values, device

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        idx_l, idx_u = draw_batch(rng, self.labelled, cfg.batch_size), draw_batch(rng, self.pseudo, cfg.unlabeled_batch)
        x_l, y_l = weak_view(self.labelled, idx_l, rng, cfg)
        x_u, y_u = weak_view(self.pseudo, idx_u, rng, cfg)
        if cfg.noisy:
            x_u = strong_photometric(x_u, rng)
        part_l, part_u = local_part(len(idx_l)), local_part(len(idx_u))  # torchrun: this rank's share
        idx_l, x_l, y_l, x_u, y_u = idx_l[part_l], x_l[part_l], y_l[part_l], x_u[part_u], y_u[part_u]
        logits = self.module(torch.cat([x_l, x_u]).to(self.device))
        loss_x = self.loss_fn(logits[: len(x_l)], y_l.to(self.device), [self.labelled.refs[i] for i in idx_l])
        loss_u = dice_ce_loss(logits[len(x_l):], y_u.to(self.device))
        return loss_x + cfg.pseudo_weight * loss_u, {"loss_x": float(loss_x.detach()),
                                                      "loss_u": float(loss_u.detach())}

    def validate(self) -> dict[str, float]:
        return validate_student(self.module, self.val_cases, self.cfg, self.values, self.device)


def fit(ctx: FitContext, cfg: DistillConfig, run_dir: Path) -> TrainResult:
    """Label the pool with the teacher (once), train the student on both sets, then choose its
    post-processing (cavity rule, largest components, mirroring) on the validation cases."""
    teacher_config(ctx, cfg)
    rule = None if cfg.cavity_rule is None else CavityRule.parse(cfg.cavity_rule, ctx.class_map)
    labelled = load_labelled(ctx, cfg)
    val_cases = load_val_cases(ctx)
    pseudo = pseudo_labelled(ctx, cfg, run_dir)
    torch.manual_seed(ctx.seed)
    module = prepare_student(build_unet(cfg, len(ctx.values)).to(ctx.device), ctx.acceleration)
    task = DistillTask(module, labelled, pseudo, cfg, ctx.labelled_loss(None), val_cases, ctx.values, ctx.device)
    result = train(task, cfg.train_config(ctx.seed), run_dir, ctx.show_progress)
    module.load_state_dict(load_best(run_dir)[0])
    choice = student_postprocessing_choice(module, val_cases, cfg, ctx.values, rule, cfg.test_mirroring, ctx.device,
                                           ctx.show_progress)
    write_json(run_dir / POSTPROCESS, choice)
    return result


METHOD = Method("distill", DistillConfig, fit, student_predictor)
