"""SAM-Match's pseudo-labels: the student's probabilities on the unlabelled pool, the slices its
confident classes label, and how good those labels are where ground truth exists. Turning
probabilities into SAM prompts and SAM's masks into labels is the shared core's
(``fewsam.self_prompting``), re-exported here for SAM-Match's callers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewsam.embedded import EmbeddedSlice, frame_label
from fewsam.labels import index_lut
from fewsam.methods.student import SliceSet
from fewsam.self_prompting import (PseudoLabeller, compose_pseudo_label, confident_boxes,  # noqa: F401
                                   ignore_unprompted, prompt_regions)


def pooled_dice(preds: list[np.ndarray], gts: list[np.ndarray], n_outputs: int) -> dict[str, float]:
    """Per class Dice pooled over all slices (2 sum|P&G| / (sum|P| + sum|G|)), and their mean."""
    out = {}
    for k in range(1, n_outputs):
        inter = sum(int(np.count_nonzero((p == k) & (g == k))) for p, g in zip(preds, gts))
        total = sum(int(np.count_nonzero(p == k)) + int(np.count_nonzero(g == k)) for p, g in zip(preds, gts))
        out[str(k)] = 1.0 if total == 0 else 2 * inter / total
    out["mean"] = float(np.mean([out[str(k)] for k in range(1, n_outputs)]))
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
