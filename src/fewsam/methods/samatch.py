"""Seed 2: SAM-Match. A FixMatch student on labelled + unlabelled slices, whose confident
predictions prompt a fine-tuned SAM decoder; SAM's refined masks come back as pseudo-labels.

Stages, all through the one training loop:
1. SAM's prompt encoder + mask decoder are fine-tuned on the labelled slices with boxes from the
   ground truth (binary Dice + BCE), from cached embeddings (RUN/sam/).
2. The student (U-Net, ``methods.student``) trains with its supervised Dice + CE and FixMatch's
   consistency: CE of the strong view against the weak view's argmax where its softmax is
   >= ``threshold``. The strong view is the weak (geometric) view plus colour jitter, blur and
   cutout; only the student sees augmented pixels, SAM stays on un-augmented cached embeddings.
3. After ``warmup_steps`` and then every ``refresh_every`` steps, the student labels the
   unlabelled pool; per slice and class the box of the largest confident component (+ margin)
   prompts SAM; SAM's masks are composed into a pseudo-label (background = 1 - mean class
   probability, argmax) and the student also fits them with a ramped weight. Each refresh is
   saved (RUN/pseudo_labels/) so that a resumed run uses the very same labels, and scored
   against the unlabelled slices' ground truth when it exists (RUN/pseudo_label_quality.json).
``use_sam=False`` is the plain FixMatch baseline (stages 1 and 3 skipped).
4. The end-to-end stage (``sam_round_steps`` > 0): at each refresh, before it labels the pool,
   SAM's decoder trains a short round on the labelled ground-truth boxes plus
   ``sam_unlabeled_weight`` x the student's confident classes on the unlabelled slices (boxes and
   binary targets from the student's argmax), so SAM learns from the student as the student
   learns from SAM. A round is kept only if SAM's box Dice on the validation slices does not drop
   (a weak student must not spoil SAM); each round lives in RUN/sam/round_<step>/ and resumes.
Not implemented: the MSE on SAM's IoU head (fewsam never reads that head).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewsam.data import unlabelled_pool
from fewsam.data.types import Dataset, SliceRef
from fewsam.embedded import EmbeddedSlice, embed_refs, frame_label
from fewsam.errors import DataError
from fewsam.inference import FitContext, check_labelled
from fewsam.losses import binary_dice_bce_loss, consistency_ce, dice_ce_loss
from fewsam.methods.student import (IGNORE, SliceSet, StudentConfig, augment_labelled, build_unet, load_slices,
                                    random_affine, strong_photometric, student_label, volume_dice_score,
                                    warp, warp_labels)
from fewsam.methods.supervised import load_labelled, load_val_cases
from fewsam.models.sam import SamModel, postprocess_logits
from fewsam.prompts import box_from_mask, click_prompts, largest_component, stack_clicks
from fewsam.runs import write_json
from fewsam.train import BEST, TrainConfig, TrainResult, atomic_torch_save, train

PSEUDO_DIR = "pseudo_labels"
QUALITY = "pseudo_label_quality.json"
SAM_DIR = "sam"


@dataclass
class SamMatchConfig:
    """SAM-Match's own settings (the student's optimiser lives in TrainConfig)."""

    use_sam: bool = True
    threshold: float = 0.95  # FixMatch confidence, also the prompt region's confidence
    unlabeled_batch: int = 8
    unlabeled_limit: int | None = None  # seeded subset of the unlabelled pool (None: all of it)
    lambda_u: float = 1.0  # weight of the FixMatch consistency loss
    sam_weight: float = 1.0  # final weight of the loss against SAM's pseudo-labels
    warmup_steps: int = 200  # student steps before the first SAM refresh
    refresh_every: int = 200  # steps between refreshes of SAM's pseudo-labels
    ramp_steps: int = 200  # sigmoid ramp-up of sam_weight after the first refresh
    box_margin: float = 10.0  # original pixels around each prompt box (paper: 10 ACDC, 30 BUSI)
    background: str = "mean"  # pseudo-label background: 1 - "mean" or 1 - "max" class probability
    prompt_region: str = "argmax"  # box around the largest "argmax" (or "confident") component per class
    unprompted: str = "ignore"  # SAM-background pixels the student gives an unprompted class: "ignore" | "background"
    overlap: str = "smaller"  # where SAM's class masks overlap: the "smaller" mask wins, or the "argmax"
    prompt_clicks: str = "positive"  # clicks besides each box: "none", "positive" (the region's deepest pixel), or
    # "contrast" (also negatives at the slice's other structures). "positive" by default: a class-agnostic SAM
    # cannot tell the LV cavity's box from the myocardium's without it (ACDC, benchmarks/samatch_results.md)
    sam_steps: int = 200  # SAM decoder fine-tuning steps on ground-truth boxes (0: zero-shot SAM)
    sam_lr: float = 1e-4
    sam_batch: int = 8
    sam_val_slices: int = 48  # validation slices (evenly spread) for SAM's model selection
    sam_round_steps: int = 50  # SAM decoder steps per refresh, learning from the student (0: SAM fixed)
    sam_unlabeled_weight: float = 0.25  # weight of the student-labelled slices in a SAM round (paper: 0.25)


# --- pure pieces: prompts from confident predictions, pseudo-label composition, scores -------

def prompt_regions(probs: torch.Tensor, threshold: float, region: str = "confident") -> list[tuple[int, np.ndarray]]:
    """(Q, H, W) class probabilities of one slice -> [(class index, (H, W) bool prompt region)].

    Per foreground class with at least one pixel where it is the argmax with probability >=
    ``threshold`` (classes without one get no prompt), the largest 8-connected component of
    ``region="confident"``: those confident pixels; ``region="argmax"``: every pixel where the
    class is the argmax (a thin structure such as the myocardium is often confident only along
    part of its ring, and a box around that part cuts the ring off).
    """
    if region not in ("confident", "argmax"):
        raise ValueError(f"region must be 'confident' or 'argmax', not {region!r}")
    conf, pred = probs.max(dim=0)
    confident = (conf >= threshold).numpy()
    pred = pred.numpy()
    out = []
    for k in range(1, probs.shape[0]):
        mask = confident & (pred == k)
        if mask.any():
            out.append((k, largest_component(mask if region == "confident" else pred == k)))
    return out


def confident_boxes(probs: torch.Tensor, info, threshold: float, margin: float, region: str = "confident"
                    ) -> list[tuple[int, np.ndarray]]:
    """[(class index, xyxy box in SAM's frame)]: the box around each ``prompt_regions`` region,
    widened by ``margin`` original pixels."""
    return [(k, box_from_mask(mask, info, margin)) for k, mask in prompt_regions(probs, threshold, region)]


def compose_pseudo_label(class_logits: dict[int, torch.Tensor], n_outputs: int, background: str = "mean",
                         overlap: str = "argmax") -> np.ndarray:
    """SAM's per-class mask logits {class index: (H, W)} -> (H, W) uint8 class indices.

    ``overlap="argmax"``: class probabilities are sigmoid(logit) (0 for unprompted classes);
    background scores 1 - mean (or max) of the class probabilities; the label is the argmax of
    the softmax. Saturated masks tie, and the lower class index wins the tie.
    ``overlap="smaller"``: each class keeps SAM's own mask (logit > 0); where masks overlap the
    smaller mask wins. Nested anatomy needs this: prompted with the myocardium's box, SAM returns
    the whole disk, and the LV cavity inside it would otherwise be labelled myocardium.
    """
    if not class_logits:
        raise ValueError("compose_pseudo_label needs at least one prompted class")
    if overlap == "smaller":
        masks = {k: (logit > 0).numpy() for k, logit in class_logits.items()}
        label = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
        for k in sorted(masks, key=lambda k: (-int(masks[k].sum()), k)):
            label[masks[k]] = k
        return label
    if overlap != "argmax":
        raise ValueError(f"overlap must be 'argmax' or 'smaller', not {overlap!r}")
    shape = next(iter(class_logits.values())).shape
    probs = torch.zeros(n_outputs - 1, *shape)
    for k, logit in class_logits.items():
        probs[k - 1] = torch.sigmoid(logit.float())
    bg = 1 - (probs.mean(dim=0) if background == "mean" else probs.max(dim=0).values)
    scores = torch.cat([bg[None], probs]).softmax(dim=0)
    return scores.argmax(dim=0).to(torch.uint8).numpy()


def pooled_dice(preds: list[np.ndarray], gts: list[np.ndarray], n_outputs: int) -> dict[str, float]:
    """Per class Dice pooled over all slices (2 sum|P&G| / (sum|P| + sum|G|)), and their mean."""
    out = {}
    for k in range(1, n_outputs):
        inter = sum(int(np.count_nonzero((p == k) & (g == k))) for p, g in zip(preds, gts))
        total = sum(int(np.count_nonzero(p == k)) + int(np.count_nonzero(g == k)) for p, g in zip(preds, gts))
        out[str(k)] = 1.0 if total == 0 else 2 * inter / total
    out["mean"] = float(np.mean([out[str(k)] for k in range(1, n_outputs)]))
    return out


def ramp(step: int, length: int) -> float:
    """Sigmoid ramp-up exp(-5 (1 - t)^2), t = step / length clipped to [0, 1]."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(np.exp(-5.0 * (1.0 - t) ** 2))


def select_unlabelled(dataset: Dataset, labelled: list[SliceRef], limit: int | None, seed: int) -> list[SliceRef]:
    """The unlabelled pool, or a seeded subset of ``limit`` slices of it (kept in pool order)."""
    pool = unlabelled_pool(dataset, labelled)
    if limit is None or limit >= len(pool):
        return pool
    if limit < 1:
        raise DataError(f"--unlabeled-limit must be at least 1, got {limit}")
    idx = np.sort(np.random.default_rng(seed).choice(len(pool), limit, replace=False))
    return [pool[i] for i in idx]


# --- stage 1: SAM's decoder on ground-truth boxes ---------------------------------------------

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
    target = torch.stack([torch.from_numpy(samples[i].label_frame == v) for i, v in pairs])[:, None].float()
    return emb, prompts, target.to(device)


class SamBoxTask:
    """Dice + BCE of box-prompted masks, boxes jittered by a random margin (stage 1).

    With ``student_samples`` (slices labelled by the student) each batch adds
    ``cfg.sam_unlabeled_weight`` x the same loss on them: the end-to-end rounds of stage 4.
    """

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
        return self._loss(samples, [pairs[i] for i in sel], margins)[2]

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


def val_slice_refs(val_cases, n: int) -> list[SliceRef]:
    """Up to ``n`` validation slices with foreground, evenly spread over the cases' slices."""
    refs = [SliceRef(c.case_id, z) for c in val_cases for z in range(c.num_slices) if c.label[z].any()]
    if len(refs) <= n:
        return refs
    return [refs[int(i)] for i in np.linspace(0, len(refs) - 1, n).round()]


def fit_sam(ctx: FitContext, labelled: list[SliceRef], val_cases, run_dir: Path, cfg: SamMatchConfig,
            seed: int) -> "SamRounds":
    """Fine-tune SAM's decoder on ground-truth boxes (resumable, RUN/sam/) and load the best weights."""
    samples = embed_refs(ctx.dataset, labelled, ctx.cache, ctx.device, ctx.show_progress, "embed labelled")
    check_labelled(samples)
    val = []
    if cfg.sam_steps > 0 or cfg.sam_round_steps > 0:
        val = embed_refs(ctx.dataset, val_slice_refs(val_cases, cfg.sam_val_slices), ctx.cache, ctx.device,
                         ctx.show_progress, "embed SAM val")
    task = SamBoxTask(ctx.model, samples, val, ctx.values, cfg, ctx.device)
    if cfg.sam_steps > 0:
        sam_cfg = TrainConfig(steps=cfg.sam_steps, lr=cfg.sam_lr, val_every=max(1, cfg.sam_steps // 2), seed=seed,
                              warmup_steps=min(10, cfg.sam_steps // 10))
        train(task, sam_cfg, run_dir, ctx.show_progress)
        task.module.load_state_dict(_best_weights(run_dir)[0])
    task.module.eval()
    return SamRounds(task, run_dir, seed)


def _best_weights(folder: Path) -> tuple[dict, float]:
    best = torch.load(folder / BEST, map_location="cpu", weights_only=True)
    return best["module"], float(best["metrics"]["score"])


def kept_sam_weights(sam_dir: Path, before_step: float, stage1: dict, stage1_score: float) -> tuple[dict, float]:
    """SAM decoder weights the chain of rounds had kept before ``before_step`` (inf: the run's final
    SAM): stage 1's, replaced by each later round whose validation box Dice did not drop."""
    weights, score = stage1, stage1_score
    for folder in sorted(sam_dir.glob("round_*")):
        if int(folder.name.split("_")[1]) < before_step and (folder / BEST).exists():
            round_weights, round_score = _best_weights(folder)
            if round_score >= score:
                weights, score = round_weights, round_score
    return weights, score


def load_final_sam(sam: SamModel, sam_dir: Path) -> None:
    """Load into ``sam`` the decoder a finished (or stopped) run ended with (stage 1, then rounds)."""
    decoder = SamDecoder(sam)
    stage1, score = {k: v.clone() for k, v in decoder.state_dict().items()}, -float("inf")
    if (sam_dir / BEST).exists():
        stage1, score = _best_weights(sam_dir)
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
        self.stage1_score = _best_weights(sam_dir)[1] if (sam_dir / BEST).exists() else -float("inf")

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
                train(task, round_cfg, self.sam_dir / f"round_{step:07d}", show_progress=False)
        self.task.module.load_state_dict(self._kept_before(step + 1)[0])
        self.task.module.eval()


def student_samples(probs: list[torch.Tensor], slices: list[EmbeddedSlice], values: list[int], threshold: float
                    ) -> list[EmbeddedSlice]:
    """The unlabelled slices labelled by the student's argmax, keeping only its confident classes.

    A class counts where it has at least one pixel of probability >= ``threshold`` (the classes
    that also get a prompt); the others are set to background so SAM is not taught them.
    """
    lut = np.asarray(values)
    out = []
    for p, s in zip(probs, slices):
        conf, pred = p.max(dim=0)
        pred = pred.numpy()
        confident = {int(k) for k in np.unique(pred[(conf >= threshold).numpy()]) if k > 0}
        pred = np.where(np.isin(pred, list(confident)), pred, 0)
        if confident:
            label = lut[pred].astype(np.uint8)
            out.append(EmbeddedSlice(s.ref, s.embedding, s.info, frame_label(label, s.info), label, s.view))
    return out


# --- stage 3: pseudo-labels from the student's confident regions, refined by SAM -------------

class PseudoLabeller:
    """Student probabilities -> prompts -> SAM masks -> pseudo-labels, on the unlabelled pool."""

    def __init__(self, sam: SamModel, slices: list[EmbeddedSlice], cfg: SamMatchConfig, n_outputs: int,
                 device: str = "cpu") -> None:
        self.sam, self.slices, self.cfg, self.n_outputs, self.device = sam, slices, cfg, n_outputs, device

    def refine(self, probs: list[torch.Tensor]) -> tuple[list[np.ndarray | None], list[int]]:
        """Per slice, SAM's pseudo-label (H, W) class indices, or None when no class is confident."""
        regions = [prompt_regions(p, self.cfg.threshold, self.cfg.prompt_region) for p in probs]
        jobs = [(i, k, mask) for i, rs in enumerate(regions) for k, mask in rs]
        logits: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
        with torch.no_grad():
            for start in range(0, len(jobs), 16):
                part = jobs[start:start + 16]
                emb = torch.stack([self.slices[i].embedding_tensor() for i, _, _ in part]).to(self.device)
                out = self.sam.predict_prompted(emb, **self._prompts(part, regions))
                for (i, k, _), lg in zip(part, out):
                    logits[i][k] = postprocess_logits(lg[None].float(), self.slices[i].info)[0, 0].cpu()
        prompts = [[k for k, _ in rs] for rs in regions]
        labels = [self._label(logits[i], probs[i], prompts[i]) if prompts[i] else None
                  for i in range(len(self.slices))]
        return labels, [len(p) for p in prompts]

    def _prompts(self, jobs: list[tuple[int, int, np.ndarray]], regions: list[list[tuple[int, np.ndarray]]]
                 ) -> dict[str, torch.Tensor]:
        """SAM's prompts for [(slice, class, region)]: the region's box (+ margin), and the
        ``prompt_clicks`` (negatives at the slice's other prompted regions)."""
        infos = [self.slices[i].info for i, _, _ in jobs]
        boxes = np.stack([box_from_mask(m, info, self.cfg.box_margin) for (_, _, m), info in zip(jobs, infos)])
        prompts = {"boxes": torch.from_numpy(boxes).to(self.device)}
        if self.cfg.prompt_clicks != "none":
            points, labels = stack_clicks([click_prompts(m, [o for j, o in regions[i] if j != k], info,
                                                         self.cfg.prompt_clicks)
                                           for (i, k, m), info in zip(jobs, infos)])
            prompts |= {"points": points.to(self.device), "point_labels": labels.to(self.device)}
        return prompts

    def _label(self, logits: dict[int, torch.Tensor], probs: torch.Tensor, prompted: list[int]) -> np.ndarray:
        label = compose_pseudo_label(logits, self.n_outputs, self.cfg.background, self.cfg.overlap)
        if self.cfg.unprompted == "ignore":
            label = ignore_unprompted(label, probs.argmax(dim=0).numpy(), prompted)
        return label


def ignore_unprompted(label: np.ndarray, student_argmax: np.ndarray, prompted: list[int]) -> np.ndarray:
    """IGNORE where SAM says background but the student predicts a class SAM was not asked about.

    SAM only answers for prompted classes; a class the student was not confident on got no prompt,
    and labelling its pixels background would teach the student to erase it (seen on ACDC: an RV
    that is never confident early on is pushed to background by every pseudo-label).
    """
    out = label.copy()
    unasked = (student_argmax > 0) & ~np.isin(student_argmax, prompted)
    out[(label == 0) & unasked] = IGNORE
    return out


def student_probs(module: nn.Module, data: SliceSet, device: str, batch_size: int = 16) -> list[torch.Tensor]:
    """Softmax (Q, H, W) at each slice's original size, from the student-frame images."""
    out = []
    with torch.no_grad():
        for start in range(0, len(data.refs), batch_size):
            logits = module(data.images[start:start + batch_size].to(device)).float().cpu()
            for lg, shape in zip(logits, data.shapes[start:start + batch_size]):
                out.append(F.interpolate(lg[None], size=shape, mode="bilinear", align_corners=False)[0].softmax(0))
    return out


# --- the student task -------------------------------------------------------------------------

class SamMatchTask:
    """FixMatch (+ SAM pseudo-labels) for the one loop; ``labeller`` None = plain FixMatch."""

    def __init__(self, module: nn.Module, labelled: SliceSet, unlabelled: SliceSet, student_cfg: StudentConfig,
                 cfg: SamMatchConfig, validate_fn, run_dir: Path, labeller: PseudoLabeller | None = None,
                 device: str = "cpu", loss_fn=None, sam_rounds: SamRounds | None = None) -> None:
        self.module, self.labelled, self.unlabelled = module, labelled, unlabelled
        self.student_cfg, self.cfg, self.validate_fn = student_cfg, cfg, validate_fn
        self.run_dir, self.labeller, self.device = run_dir, labeller, device
        self.sam_rounds = sam_rounds  # stage 4: SAM learns from the student before each refresh
        self.loss_fn = loss_fn  # labelled loss(logits, target, refs), e.g. fairness.FairLoss; None = Dice + CE
        self.pseudo: torch.Tensor | None = None  # (N_u, S, S) uint8, IGNORE where SAM gave nothing
        self.pseudo_step: int | None = None

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if self.labeller is not None:
            self._sync_pseudo_labels(step)
        scfg, cfg = self.student_cfg, self.cfg
        n_l, n_u = len(self.labelled.refs), len(self.unlabelled.refs)
        idx_l = rng.choice(n_l, min(scfg.batch_size, n_l), replace=False)
        idx_u = rng.choice(n_u, min(cfg.unlabeled_batch, n_u), replace=False)
        x_l, y_l = augment_labelled(self.labelled.images[idx_l], self.labelled.labels[idx_l], rng, scfg)
        theta = random_affine(len(idx_u), rng, scfg)
        x_w = warp(self.unlabelled.images[idx_u], theta)
        with torch.no_grad():
            conf, pl = self.module(x_w.to(self.device)).softmax(dim=1).max(dim=1)
        x_s = strong_photometric(x_w, rng)
        logits = self.module(torch.cat([x_l, x_s]).to(self.device))
        logits_l, logits_s = logits[: len(x_l)], logits[len(x_l):]
        confident = conf >= cfg.threshold
        if self.loss_fn is not None:
            loss_x = self.loss_fn(logits_l, y_l.to(self.device), [self.labelled.refs[i] for i in idx_l])
        else:
            loss_x = dice_ce_loss(logits_l, y_l.to(self.device))
        loss_u = consistency_ce(logits_s, pl, confident)
        loss = loss_x + cfg.lambda_u * loss_u
        scalars = {"loss_x": float(loss_x.detach()), "loss_u": float(loss_u.detach()), "confident": float(confident.float().mean())}
        if self.pseudo is not None:
            target = warp_labels(self.pseudo[idx_u], theta, fill=IGNORE).to(self.device)
            if bool((target != IGNORE).any()):
                weight = cfg.sam_weight * ramp(step - cfg.warmup_steps, cfg.ramp_steps)
                loss_sam = dice_ce_loss(logits_s, target, ignore_index=IGNORE)
                loss = loss + weight * loss_sam
                scalars.update(loss_sam=float(loss_sam.detach()), sam_weight=weight)
        return loss, scalars

    def validate(self) -> dict[str, float]:
        return self.validate_fn()

    # pseudo-labels: a refresh at step r is saved, so a run resumed after r uses the same labels

    def _sync_pseudo_labels(self, step: int) -> None:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return
        latest = cfg.warmup_steps + (step - cfg.warmup_steps) // cfg.refresh_every * cfg.refresh_every
        if self.pseudo_step == latest:
            return
        path = self.run_dir / PSEUDO_DIR / f"step_{latest:07d}.pt"
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            self.pseudo = saved["labels"]
        else:
            self.pseudo = self.refresh(latest, path)
        self.pseudo_step = latest

    def refresh(self, step: int, path: Path) -> torch.Tensor:
        """Label the unlabelled pool with SAM, save the labels and their quality report."""
        self.module.eval()
        probs = student_probs(self.module, self.unlabelled, self.device)
        self.module.train()
        if self.sam_rounds is not None:
            values = self.sam_rounds.task.values
            self.sam_rounds.run(step, student_samples(probs, self.labeller.slices, values, self.cfg.threshold))
        sam_labels, n_prompts = self.labeller.refine(probs)
        size = self.student_cfg.image_size
        identity = np.arange(256, dtype=np.int64)
        frames = [torch.full((size, size), IGNORE, dtype=torch.uint8) if lab is None
                  else student_label(lab, size, identity) for lab in sam_labels]
        labels = torch.stack(frames)
        atomic_torch_save({"step": step, "labels": labels}, path)
        if self.unlabelled.originals and all(g is not None for g in self.unlabelled.originals):
            self._report(step, probs, sam_labels, n_prompts)
        return labels

    def _report(self, step: int, probs, sam_labels, n_prompts) -> None:
        n_out = probs[0].shape[0]
        gts = self.unlabelled.originals
        student = [p.argmax(dim=0).numpy().astype(np.uint8) for p in probs]
        refined = [i for i, lab in enumerate(sam_labels) if lab is not None]
        record = {
            "step": step,
            "slices": len(student),
            "refined_slices": len(refined),
            "prompts": int(sum(n_prompts)),
            "student_all": pooled_dice(student, gts, n_out),
            "student_refined": pooled_dice([student[i] for i in refined], [gts[i] for i in refined], n_out)
            if refined else None,
            "sam_refined": pooled_dice([sam_labels[i] for i in refined], [gts[i] for i in refined], n_out)
            if refined else None,
        }
        path = self.run_dir / QUALITY
        records = json.loads(path.read_text()) if path.exists() else []
        records = [r for r in records if r["step"] != step] + [record]
        write_json(path, sorted(records, key=lambda r: r["step"]))


def fit(ctx: FitContext, labelled: list[SliceRef], val_ids: list[str], run_dir: Path, train_cfg: TrainConfig,
        student_cfg: StudentConfig, cfg: SamMatchConfig, loss_fn=None) -> TrainResult:
    """Load labelled / unlabelled / validation data, (fine-tune SAM,) train the student."""
    labelled_set = load_labelled(ctx, labelled, student_cfg)
    val_cases = load_val_cases(ctx, val_ids)
    unl_refs = select_unlabelled(ctx.dataset, labelled, cfg.unlabeled_limit, train_cfg.seed)
    if not unl_refs:
        raise DataError("no unlabelled training slices are left; use fewer labelled cases or `fit supervised`")
    unlabelled = load_slices(ctx.dataset, unl_refs, student_cfg.image_size, ctx.values, keep_originals=True)
    labeller = sam_rounds = None
    if cfg.use_sam:
        sam_rounds = fit_sam(ctx, labelled, val_cases, run_dir / SAM_DIR, cfg, train_cfg.seed)
        slices = embed_refs(ctx.dataset, unl_refs, ctx.cache, ctx.device, ctx.show_progress, "embed unlabelled")
        labeller = PseudoLabeller(ctx.model, slices, cfg, len(ctx.values), ctx.device)
    (run_dir / PSEUDO_DIR).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_cfg.seed)
    module = build_unet(student_cfg, len(ctx.values)).to(ctx.device)
    validate = lambda: volume_dice_score(module, val_cases, student_cfg, ctx.values, ctx.device)  # noqa: E731
    task = SamMatchTask(module, labelled_set, unlabelled, student_cfg, cfg, validate, run_dir, labeller, ctx.device,
                        loss_fn, sam_rounds)
    return train(task, train_cfg, run_dir, ctx.show_progress)
