"""SAM-Match's pseudo-labels: the student's probabilities on the unlabelled pool, the slices its
confident classes label, and how good those labels are where ground truth exists. Turning
probabilities into SAM prompts and SAM's masks into labels is the shared core's
(``fewsam.self_prompting``), re-exported here for SAM-Match's callers.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewsam.embedded import EmbeddedSlice
from fewsam.labels import IGNORE, index_lut
from fewsam.methods.student import SliceSet
from fewsam.metrics import annotated_part
from fewsam.self_prompting import (PseudoLabeller, compose_pseudo_label, confident_boxes,  # noqa: F401
                                   ignore_unprompted, prompt_regions)


def pooled_dice(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray], n_outputs: int) -> dict[str, float]:
    """Per class Dice pooled over all slices (2 sum|P&G| / (sum|P| + sum|G|)), and their mean."""
    pooled = PooledDice(n_outputs)
    for pred, gt in zip(preds, gts):
        pooled.add(pred, gt)
    return pooled.result()


class PooledDice:
    """``pooled_dice`` counted a slice at a time: a refresh scores the pool's labels as SAM answers each
    slice, so the pool's labels and the student's probabilities need not all be held to score them.
    The counts are integers, so the Dice does not depend on the order the slices come in. A label's
    pixels of IGNORE (unannotated, nnU-Net's ignore label) count in no class: nothing says what lies there."""

    def __init__(self, n_outputs: int) -> None:
        self.n_outputs = n_outputs
        self.inter = [0] * n_outputs  # per class index; background's stays unused
        self.total = [0] * n_outputs

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred, gt = annotated_part(pred, gt, IGNORE)
        for k in range(1, self.n_outputs):
            self.inter[k] += int(np.count_nonzero((pred == k) & (gt == k)))
            self.total[k] += int(np.count_nonzero(pred == k)) + int(np.count_nonzero(gt == k))

    def result(self) -> dict[str, float]:
        out = {str(k): 1.0 if self.total[k] == 0 else 2 * self.inter[k] / self.total[k]
               for k in range(1, self.n_outputs)}
        out["mean"] = float(np.mean([out[str(k)] for k in range(1, self.n_outputs)]))
        return out


def student_samples(probs: Iterable[torch.Tensor], slices: Sequence[EmbeddedSlice], values: list[int],
                    threshold: float) -> list[EmbeddedSlice]:
    """The unlabelled slices labelled by the student's argmax, keeping only its confident classes.

    A class counts where it has at least one pixel of probability >= ``threshold`` (the classes
    that also get a prompt); the others are set to background so SAM is not taught them.
    ``probs`` may come a slice at a time (``streamed_student_probs``): each is let go once its
    label is made, so only the labels are kept.
    """
    lut = index_lut(values)
    out = []
    i = -1
    for p in probs:  # not zip: its reused result tuple would hold p while the next batch is computed
        i += 1
        sample = student_sample(p, slices[i], lut, threshold)
        del p
        if sample is not None:
            out.append(sample)
    return out


def student_sample(probs: torch.Tensor, slice_: EmbeddedSlice, lut: np.ndarray, threshold: float
                   ) -> EmbeddedSlice | None:
    """One slice of ``student_samples``: None when no class is confident (it teaches SAM nothing)."""
    conf, pred = probs.max(dim=0)
    pred = pred.numpy()
    confident = {int(k) for k in np.unique(pred[(conf >= threshold).numpy()]) if k > 0}
    if not confident:
        return None
    label = lut[np.where(np.isin(pred, list(confident)), pred, 0)]
    return slice_.labelled(label)  # a pool's embedding stays in the cache, its frame made when read


def student_probs(module: nn.Module, data: SliceSet, device: str, batch_size: int = 16) -> list[torch.Tensor]:
    """Softmax (Q, H, W) at each slice's original size, from the student-frame images."""
    return list(streamed_student_probs(module, data, device, batch_size))


@torch.no_grad()  # as a decorator: grad mode is set on each resume, not left off for the caller between them
def streamed_student_probs(module: nn.Module, data: SliceSet, device: str, batch_size: int = 16
                           ) -> Iterator[torch.Tensor]:
    """``student_probs`` one slice at a time, in order, ``batch_size`` slices computed at a time and each
    let go once handed over: a pool's are never all held (ACDC's 1,244 unlabelled slices are 1.1 GB of
    float32, a CT pool's tens of GB). The batches are those of ``student_probs``, so every number is the
    same."""
    for start in range(0, len(data.refs), batch_size):
        logits = module(data.images[start:start + batch_size].to(device)).float().cpu()
        batch = [F.interpolate(lg[None], size=shape, mode="bilinear", align_corners=False)[0].softmax(0)
                 for lg, shape in zip(logits, data.shapes[start:start + batch_size])]
        del logits
        batch.reverse()
        while batch:
            yield batch.pop()
