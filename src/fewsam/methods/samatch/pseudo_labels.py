"""SAM-Match's pseudo-labels: the student's confident regions -> box (+ click) prompts -> SAM's
masks -> one label map per slice, and how good those labels are where ground truth exists.

Pure functions of probabilities and masks (tested with known answers), plus ``PseudoLabeller``,
which runs them through a SAM decoder over a set of embedded slices (the unlabelled pool during
fitting, test slices for ``predict --refine-with-sam``).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewsam.embedded import EmbeddedSlice, frame_label
from fewsam.labels import IGNORE, index_lut
from fewsam.methods.samatch.config import SamMatchConfig
from fewsam.methods.student import SliceSet
from fewsam.models.sam import SamModel, postprocess_logits
from fewsam.prompts import box_from_mask, click_prompts, largest_component, stack_clicks


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


def student_samples(probs: list[torch.Tensor], slices: list[EmbeddedSlice], values: list[int], threshold: float
                    ) -> list[EmbeddedSlice]:
    """The unlabelled slices labelled by the student's argmax, keeping only its confident classes.

    A class counts where it has at least one pixel of probability >= ``threshold`` (the classes
    that also get a prompt); the others are set to background so SAM is not taught them.
    """
    lut = index_lut(values)
    out = []
    for p, s in zip(probs, slices):
        conf, pred = p.max(dim=0)
        pred = pred.numpy()
        confident = {int(k) for k in np.unique(pred[(conf >= threshold).numpy()]) if k > 0}
        pred = np.where(np.isin(pred, list(confident)), pred, 0)
        if confident:
            label = lut[pred]
            out.append(EmbeddedSlice(s.ref, s.embedding, s.info, frame_label(label, s.info), label, s.view))
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
