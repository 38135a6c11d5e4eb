"""SAM's side of SAM-Match: its prompt encoder + mask decoder fine-tuned on ground-truth boxes
(stage 1), and short rounds in which it learns from the student's labels (the end-to-end stage).

Both train through the one loop from cached embeddings (RUN/sam/, RUN/sam/round_<step>/). A
round is kept only if SAM's box Dice on validation slices does not drop, so a weak student
cannot spoil SAM; ``load_final_sam`` rebuilds the decoder a run ended with, for prediction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewsam.data.budget import wholly_annotated_slices
from fewsam.data.types import Case, SliceRef
from fewsam.distributed import local_part
from fewsam.embedded import EmbeddedSlice, embed_refs, frame_region
from fewsam.errors import DataError
from fewsam.fitting import FitContext
from fewsam.inference import check_labelled
from fewsam.labels import holds_class, wholly_annotated
from fewsam.losses import binary_dice_bce_loss
from fewsam.methods.samatch.config import SamMatchConfig
from fewsam.models.sam import SamModel
from fewsam.progress import say_once
from fewsam.prompts import box_from_mask, click_prompts, stack_clicks
from fewsam.runs import BEST
from fewsam.train import TrainConfig, load_best, train

SAM_DIR = "sam"  # stage 1 in RUN/sam/, each round in RUN/sam/round_<step>/

class SamDecoder(nn.Module):
    """The trainable part of SAM (prompt encoder + mask decoder), shared with the SamModel."""

    def __init__(self, sam: SamModel) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder


def box_pairs(samples: list[EmbeddedSlice], values: list[int]) -> list[tuple[int, int]]:
    """(slice index, label value) for every class present in a slice's label."""
    return [(i, v) for i, s in enumerate(samples) for v in values[1:] if (s.label == v).any()]


def box_batch(samples: list[EmbeddedSlice], pairs: list[tuple[int, int]], margins: np.ndarray, device: str,
              clicks: str = "none") -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Embeddings (B,256,64,64), prompts {"boxes": (B,4)[, "points", "point_labels"]} and binary
    targets (B,1,S,S) in SAM's frame; ``clicks`` as ``SamMatchConfig.prompt_clicks``."""
    emb = torch.stack([samples[i].embedding_tensor() for i, _ in pairs]).to(device)
    boxes = np.stack([box_from_mask(samples[i].label == v, samples[i].info, m) for (i, v), m in zip(pairs, margins)])
    prompts = {"boxes": torch.from_numpy(boxes).to(device)}
    if clicks != "none":
        others = [[samples[i].label == u for u in np.unique(samples[i].label) if u not in (0, v)] for i, v in pairs]
        points, labels = stack_clicks([click_prompts(samples[i].label == v, rest, samples[i].info, clicks)
                                       for (i, v), rest in zip(pairs, others)])
        prompts |= {"points": points.to(device), "point_labels": labels.to(device)}
    target = torch.stack([torch.from_numpy(frame_region(samples[i].label_frame, samples[i].info, v))
                          for i, v in pairs])[:, None].float()
    return emb, prompts, target.to(device)


class SamBoxTask:
    """Dice + BCE of box-prompted masks, boxes jittered by a random margin (stage 1).

    With ``student_samples`` (slices labelled by the student) each batch adds
    ``cfg.sam_unlabeled_weight`` x the same loss on them: the end-to-end rounds of stage 4.
    """

    loss_weights = ("sam_unlabeled_weight",)

    def __init__(self, sam: SamModel, samples: list[EmbeddedSlice], val: list[EmbeddedSlice], values: list[int],
                 cfg: SamMatchConfig, device: str, student_samples: list[EmbeddedSlice] | None = None) -> None:
        self.sam, self.module = sam, SamDecoder(sam)
        self.samples, self.pairs = samples, box_pairs(samples, values)
        self.val, self.val_pairs = val, box_pairs(val, values)
        self.student_samples = student_samples or []
        self.student_pairs = box_pairs(self.student_samples, values)
        self.values, self.cfg, self.device = values, cfg, device
        if not self.pairs:
            raise DataError("the labelled slices contain no foreground; SAM cannot be fine-tuned on boxes")

    def with_student(self, student_samples: list[EmbeddedSlice]) -> "SamBoxTask":
        """The same task plus slices labelled by the student (a stage-4 round)."""
        return SamBoxTask(self.sam, self.samples, self.val, self.values, self.cfg, self.device, student_samples)

    def _loss(self, samples, pairs, margins) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb, prompts, target = box_batch(samples, pairs, margins, self.device, self.cfg.prompt_clicks)
        logits = self.sam.predict_prompted(emb, **prompts)
        target = F.interpolate(target, size=logits.shape[-2:], mode="nearest")
        return logits, target, binary_dice_bce_loss(logits, target)

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self._sampled_loss(self.samples, self.pairs, rng)
        if not self.student_pairs:
            return loss, {}
        loss_student = self._sampled_loss(self.student_samples, self.student_pairs, rng)
        total = loss + self.cfg.sam_unlabeled_weight * loss_student
        return total, {"loss_labelled": float(loss.detach()), "loss_student": float(loss_student.detach())}

    def _sampled_loss(self, samples, pairs, rng: np.random.Generator) -> torch.Tensor:
        sel = rng.choice(len(pairs), min(self.cfg.sam_batch, len(pairs)), replace=False)
        margins = rng.uniform(0, self.cfg.box_margin, len(sel))
        part = local_part(len(sel))  # torchrun: this rank's share of the boxes every rank drew
        return self._loss(samples, [pairs[i] for i in sel[part]], margins[part])[2]

    def validate(self) -> dict[str, float]:
        """Mean 2D Dice of box-prompted masks (fixed margin) on the validation slices."""
        scores = []
        for start in range(0, len(self.val_pairs), 16):
            pairs = self.val_pairs[start:start + 16]
            logits, target, _ = self._loss(self.val, pairs, np.full(len(pairs), self.cfg.box_margin / 2))
            pred = logits > 0
            inter = (pred & (target > 0)).sum(dim=(1, 2, 3)).float()
            total = pred.sum(dim=(1, 2, 3)) + (target > 0).sum(dim=(1, 2, 3))
            scores.extend((2 * inter / total.clamp_min(1)).tolist())
        score = float(np.mean(scores)) if scores else 0.0
        return {"score": score, "box_dice": score}


def sam_training_slices(ctx: FitContext) -> list[SliceRef]:
    """The labelled slices SAM is fine-tuned on: those whose label marks no pixel unannotated (nnU-Net's
    ignore label), each class on them a whole object to box and to mask. A slice partly annotated (a
    scribble) would box the stroke and teach SAM that the object's unannotated rest is background; the
    student still learns from its annotated pixels. Refused, before any work, when no slice is whole."""
    if ctx.class_map.ignore is None:
        return ctx.labelled
    whole = list(wholly_annotated_slices(ctx.dataset, ctx.labelled))
    if not whole:
        raise DataError(f"every labelled slice marks unannotated pixels (the 'ignore' label, value "
                        f"{ctx.class_map.ignore}), and samatch fine-tunes SAM on wholly annotated slices; label some "
                        "slices whole, or fit fewshot, fewmatch, distill or supervised, or samatch --no-sam "
                        "(FixMatch), which leave those pixels out of their losses")
    if len(whole) < len(ctx.labelled):
        say_once(f"SAM is fine-tuned on the {len(whole)} of the {len(ctx.labelled)} labelled slices that mark no "
                 "pixel unannotated (the 'ignore' label); the student learns from the annotated pixels of all "
                 f"{len(ctx.labelled)}")
    return whole


def val_slice_refs(val_cases: list[Case], n: int) -> list[SliceRef]:
    """Up to ``n`` validation slices with foreground and no unannotated pixel (SAM's box Dice needs each
    class's whole object, as its fine-tuning does), evenly spread over the cases' slices."""
    refs = [SliceRef(c.case_id, z) for c in val_cases for z in range(c.num_slices)
            if holds_class(c.label[z], c.ignore) and wholly_annotated(c.label[z], c.ignore)]
    if not refs and any(c.ignore is not None for c in val_cases):
        say_once("no validation slice with a class is wholly annotated (each marks pixels with the 'ignore' label), "
                 "so SAM's box Dice has nothing to score: its fine-tuning keeps its first validated weights and "
                 "every round; the student is still selected on the annotated pixels")
    if len(refs) <= n:
        return refs
    return [refs[int(i)] for i in np.linspace(0, len(refs) - 1, n).round()]


def fit_sam(ctx: FitContext, val_cases: list[Case], sam_dir: Path, cfg: SamMatchConfig,
            refs: list[SliceRef] | None = None) -> "SamRounds":
    """Fine-tune SAM's decoder on ground-truth boxes (resumable, RUN/sam/) and load the best weights;
    ``refs``: the labelled slices it learns from, ``sam_training_slices`` by default."""
    refs = sam_training_slices(ctx) if refs is None else refs
    samples = embed_refs(ctx.dataset, refs, ctx.cache, ctx.device, ctx.show_progress, "embed labelled")
    check_labelled(samples)
    val = []
    if cfg.sam_steps > 0 or cfg.sam_round_steps > 0:
        val = embed_refs(ctx.dataset, val_slice_refs(val_cases, cfg.sam_val_slices), ctx.cache, ctx.device,
                         ctx.show_progress, "embed SAM val")
    task = SamBoxTask(ctx.model, samples, val, ctx.values, cfg, ctx.device)
    if cfg.sam_steps > 0:
        sam_cfg = TrainConfig(steps=cfg.sam_steps, lr=cfg.sam_lr, val_every=max(1, cfg.sam_steps // 2),
                              seed=ctx.seed, warmup_steps=min(10, cfg.sam_steps // 10))
        train(task, sam_cfg, sam_dir, ctx.show_progress, name="SAM decoder")
        task.module.load_state_dict(load_best(sam_dir)[0])
    task.module.eval()
    return SamRounds(task, sam_dir, ctx.seed)


def kept_sam_weights(sam_dir: Path, before_step: float, stage1: dict, stage1_score: float) -> tuple[dict, float]:
    """SAM decoder weights the chain of rounds had kept before ``before_step`` (inf: the run's final
    SAM): stage 1's, replaced by each later round whose validation box Dice did not drop."""
    weights, score = stage1, stage1_score
    for folder in sorted(sam_dir.glob("round_*")):
        if int(folder.name.split("_")[1]) < before_step and (folder / BEST).exists():
            round_weights, round_score = load_best(folder)
            if round_score >= score:
                weights, score = round_weights, round_score
    return weights, score


def load_final_sam(sam: SamModel, sam_dir: Path) -> None:
    """Load into ``sam`` the decoder a finished (or stopped) run ended with (stage 1, then rounds)."""
    decoder = SamDecoder(sam)
    stage1, score = {k: v.clone() for k, v in decoder.state_dict().items()}, -float("inf")
    if (sam_dir / BEST).exists():
        stage1, score = load_best(sam_dir)
    decoder.load_state_dict(kept_sam_weights(sam_dir, float("inf"), stage1, score)[0])
    decoder.eval()


class SamRounds:
    """Stage 4: SAM's decoder learns from the student in short rounds, one per pseudo-label refresh.

    Rounds chain: each starts from the weights kept so far (stage 1's best, or the last round that
    did not lower SAM's validation box Dice). The chain is rebuilt from RUN/sam/round_*/ on resume,
    so a resumed run starts every round from the very weights the uninterrupted run used.
    """

    def __init__(self, task: SamBoxTask, sam_dir: Path, seed: int) -> None:
        self.task, self.sam_dir, self.seed = task, sam_dir, seed
        self.stage1 = {k: v.clone() for k, v in task.module.state_dict().items()}
        self.stage1_score = load_best(sam_dir)[1] if (sam_dir / BEST).exists() else -float("inf")

    def _kept_before(self, step: int) -> tuple[dict, float]:
        return kept_sam_weights(self.sam_dir, step, self.stage1, self.stage1_score)

    def run(self, step: int, student_samples: list[EmbeddedSlice]) -> None:
        """Train round ``step`` on labelled boxes + the student's labels; keep it if val does not drop."""
        cfg = self.task.cfg
        if cfg.sam_round_steps <= 0 or not student_samples:
            return
        start, _ = self._kept_before(step)
        self.task.module.load_state_dict(start)
        task = self.task.with_student(student_samples)
        if task.student_pairs:
            round_cfg = TrainConfig(steps=cfg.sam_round_steps, lr=cfg.sam_lr, val_every=cfg.sam_round_steps,
                                    seed=self.seed + step, warmup_steps=0)
            with torch.random.fork_rng(devices=[]):  # the student's torch RNG stream is not disturbed
                train(task, round_cfg, self.sam_dir / f"round_{step:07d}", show_progress=False,
                      name=f"SAM round at step {step}")
        self.task.module.load_state_dict(self._kept_before(step + 1)[0])
        self.task.module.eval()
