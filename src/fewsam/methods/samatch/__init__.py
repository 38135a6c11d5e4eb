"""SAM-Match: a FixMatch student on labelled + unlabelled slices, whose confident predictions
prompt a fine-tuned SAM decoder; SAM's refined masks come back as the student's pseudo-labels.

Stages, all through the one training loop:
1. SAM's prompt encoder + mask decoder are fine-tuned on the labelled slices with boxes (and
   clicks) from the ground truth, from cached embeddings (``sam_decoder``, RUN/sam/); where labels
   mark unannotated pixels (nnU-Net's ignore label), on the slices that mark none, whose objects are whole.
2. The student (U-Net, ``methods.student``) trains with Dice + CE and FixMatch's consistency
   (``student_task``).
3. After ``warmup_steps`` and then every ``refresh_every`` steps the loop's step hook
   (``refresh``) has the student label the unlabelled pool and SAM refine its confident regions
   into pseudo-labels (``pseudo_labels``), which the student also fits with a ramped weight.
4. With ``sam_round_steps`` > 0, before each refresh SAM's decoder trains a short round on the
   labelled boxes plus the student's confident labels, kept only if SAM's validation box Dice
   does not drop: SAM learns from the student as the student learns from SAM.
``use_sam=False`` is the plain FixMatch baseline (stages 1, 3 and 4 skipped). SAM's IoU head is
never read by fewsam, so the paper's MSE on it is not used.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fewsam.embedded import CachedPool
from fewsam.errors import DataError
from fewsam.fitting import FitContext, say_if_warm_up_fills_the_fit, say_unused_options
from fewsam.methods.samatch.config import CONSISTENCY_ONLY, SCHEDULE, SamMatchConfig
from fewsam.methods.samatch.pseudo_labels import (PooledDice, PseudoLabeller, compose_pseudo_label, confident_boxes,
                                                  ignore_unprompted, pooled_dice, prompt_regions,
                                                  streamed_student_probs, student_probs, student_samples)
from fewsam.methods.samatch.refresh import PSEUDO_DIR, QUALITY, PseudoLabelRefresh
from fewsam.methods.samatch.sam_decoder import (SAM_DIR, SamRounds, fit_sam, kept_sam_weights, load_final_sam,
                                                sam_training_slices)
from fewsam.methods.samatch.student_task import SamMatchTask
from fewsam.methods import Method
from fewsam.methods.student import PoolTruth, build_unet, load_labelled, load_slices, load_val_cases
from fewsam.methods.supervised import student_predictor
from fewsam.models.acceleration import prepare_student
from fewsam.train import TrainResult, train

__all__ = ["PSEUDO_DIR", "QUALITY", "SAM_DIR", "PooledDice", "PseudoLabeller", "SamMatchConfig", "SamMatchTask",
           "SamRounds", "compose_pseudo_label", "confident_boxes", "fit", "ignore_unprompted", "kept_sam_weights",
           "load_final_sam", "pooled_dice", "prompt_regions", "sam_training_slices", "streamed_student_probs",
           "student_probs", "student_samples"]


def fit(ctx: FitContext, cfg: SamMatchConfig, run_dir: Path) -> TrainResult:
    """Load labelled / unlabelled / validation data, (fine-tune SAM,) train the student."""
    sam_refs = sam_training_slices(ctx) if cfg.use_sam else []  # refused before any work when none is whole
    labelled = load_labelled(ctx, cfg)
    val_cases = load_val_cases(ctx)
    unl_refs = ctx.unlabelled_pool(cfg)
    if not unl_refs:
        raise DataError("no unlabelled training slices are left; use fewer labelled cases or `fit supervised`")
    # images only: the pool's labels are read a slice at a time when a refresh scores its pseudo-labels
    unlabelled = load_slices(ctx.dataset, unl_refs, cfg.image_size, ctx.values, with_label=False)
    labeller = rounds = None
    say_what_fixmatch_leaves_unused(cfg)
    if cfg.use_sam:
        say_if_warm_up_fills_the_fit(cfg.warmup_steps, cfg.steps, "learning from SAM's pseudo-labels",
                                     "FixMatch, with SAM fine-tuned for nothing (--no-sam skips it)")
        rounds = fit_sam(ctx, val_cases, run_dir / SAM_DIR, cfg, sam_refs)
        slices = CachedPool(ctx.dataset, unl_refs, ctx.cache, ctx.device, ctx.show_progress, "embed unlabelled")
        labeller = PseudoLabeller(ctx.model, slices, cfg, len(ctx.values), ctx.device)
    torch.manual_seed(ctx.seed)
    module = prepare_student(build_unet(cfg, len(ctx.values)).to(ctx.device), ctx.acceleration)
    refresh = None if labeller is None else PseudoLabelRefresh(module, unlabelled, labeller, rounds, cfg, ctx.values,
                                                               run_dir, ctx.device,
                                                               PoolTruth(ctx.dataset, unl_refs, ctx.values))
    task = SamMatchTask(module, labelled, unlabelled, cfg, ctx.labelled_loss(None), val_cases, ctx.values,
                        ctx.device, refresh)
    return train(task, cfg.train_config(ctx.seed), run_dir, ctx.show_progress, before_step=refresh)


def say_what_fixmatch_leaves_unused(cfg: SamMatchConfig) -> None:
    """Plain FixMatch (--no-sam) takes SAM-Match's schedule, so that the two arms of a study share a command
    line, but has no pseudo-labels to schedule; with --lambda-u 0 its consistency loss is off too."""
    if cfg.use_sam:
        return
    say_unused_options(cfg, SCHEDULE, "--no-sam (plain FixMatch) has no SAM pseudo-labels to schedule")
    if cfg.lambda_u == 0:
        say_unused_options(cfg, CONSISTENCY_ONLY, "--lambda-u 0 turns off the consistency loss it gates, and "
                                                  "--no-sam leaves no SAM prompts for it to pick")


METHOD = Method("samatch", SamMatchConfig, fit, student_predictor, needs_sam=lambda cfg: cfg.use_sam,
                pixels_only=True)
