"""Self-prompting: a model's own class probabilities -> box (+ click) prompts -> SAM's masks ->
one label map per slice.

Two methods use it: SAM-Match labels its unlabelled pool this way (its student's confident
regions prompt the run's fine-tuned SAM), and few-shot SAM / FewMatch may refine their test
masks with SAM's own box decoder, prompted by their masks (kept only where validation says it
helps). Pure functions of probabilities and masks (tested with known answers), plus
``PseudoLabeller``, which runs them through a SAM decoder over a set of embedded slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch

from fewsam.embedded import EmbeddedSlice
from fewsam.labels import IGNORE
from fewsam.models.sam import SamModel, postprocess_logits
from fewsam.prompts import box_from_mask, click_prompts, largest_component, stack_clicks


class PromptRules(Protocol):
    """How probabilities become prompts and SAM's masks a label map (SAM-Match's config has them)."""

    threshold: float
    prompt_region: str
    box_margin: float
    prompt_clicks: str
    background: str
    overlap: str
    unprompted: str


@dataclass(frozen=True)
class SelfPromptRules:
    """``PromptRules`` for refining a fitted model's own test masks: a box around each class's
    largest argmax component (10 pixels of margin) and a click at its deepest pixel, for each class
    with a pixel of probability >= 0.5; the smaller mask wins where SAM's masks overlap; pixels of
    classes SAM was not asked about keep the model's own label."""

    threshold: float = 0.5
    prompt_region: str = "argmax"
    box_margin: float = 10.0
    prompt_clicks: str = "positive"
    background: str = "mean"
    overlap: str = "smaller"
    unprompted: str = "ignore"


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


SAM_BATCH = 16
"""Prompts SAM answers together, in slice order across slices: the batch the pseudo-labels were
made in, kept however the probabilities arrive, so that SAM's numbers do not depend on it."""


@dataclass
class RefinedSlice:
    """One slice's answer from ``PseudoLabeller.refine_each``."""

    index: int
    argmax: np.ndarray  # the model's own (H, W) class indices
    label: np.ndarray | None  # SAM's pseudo-label, None when no class was confident
    prompts: int  # how many classes prompted SAM


@dataclass
class _Waiting:
    """A slice whose prompts SAM has not all answered: what its label is made of, its probabilities let go."""

    argmax: np.ndarray
    regions: list[tuple[int, np.ndarray]]
    logits: dict[int, torch.Tensor] = field(default_factory=dict)


class PseudoLabeller:
    """Student probabilities -> prompts -> SAM masks -> pseudo-labels, on the unlabelled pool."""

    def __init__(self, sam: SamModel, slices: Sequence[EmbeddedSlice], cfg: PromptRules, n_outputs: int,
                 device: str = "cpu") -> None:
        """``slices``: a list, or a case's streamed ``CaseSlices`` (each batch of prompts reads its slices
        once, so a long volume's embeddings need not all be held)."""
        self.sam, self.slices, self.cfg, self.n_outputs, self.device = sam, slices, cfg, n_outputs, device

    def refine(self, probs: list[torch.Tensor]) -> tuple[list[np.ndarray | None], list[int]]:
        """Per slice, SAM's pseudo-label (H, W) class indices, or None when no class is confident."""
        labels: list[np.ndarray | None] = [None] * len(self.slices)
        counts = [0] * len(self.slices)
        for done in self.refine_each(probs):
            labels[done.index], counts[done.index] = done.label, done.prompts
        return labels, counts

    def refine_each(self, probs: Iterable[torch.Tensor]) -> Iterator[RefinedSlice]:
        """``refine`` for probabilities that arrive one slice at a time (a long volume's, a batch at a
        time): each slice is given back as soon as SAM has answered its prompts, in any order, and its
        probabilities are let go once its prompts are drawn, so only the slices waiting for a full
        batch of prompts are held (their argmax and prompt regions), never a volume's probabilities.
        The prompts are answered ``SAM_BATCH`` at a time in slice order, as ``refine`` answers a list."""
        waiting: dict[int, _Waiting] = {}
        jobs: list[tuple[int, int, np.ndarray]] = []
        i = -1
        for p in probs:  # not enumerate: its reused result tuple would hold p while the next is computed
            i += 1
            regions = prompt_regions(p, self.cfg.threshold, self.cfg.prompt_region)
            waiting[i] = _Waiting(p.argmax(dim=0).numpy(), regions)
            del p  # not held while the next slice's probabilities are computed
            jobs += [(i, k, mask) for k, mask in regions]
            while len(jobs) >= SAM_BATCH:
                self._answer(jobs[:SAM_BATCH], waiting)
                jobs = jobs[SAM_BATCH:]
            yield from self._answered(waiting, jobs)
        if jobs:
            self._answer(jobs, waiting)
        yield from self._answered(waiting, [])

    def _answer(self, part: list[tuple[int, int, np.ndarray]], waiting: dict[int, _Waiting]) -> None:
        """SAM's mask logits for one batch of prompts [(slice, class, region)], kept with their slices."""
        read = {i: self.slices[i] for i in dict.fromkeys(i for i, _, _ in part)}
        with torch.no_grad():
            # each slice's embedding read once, however many of its prompts the batch holds: a pool's
            # slices read theirs from the cache
            embedded = {i: s.embedding_tensor() for i, s in read.items()}
            emb = torch.stack([embedded[i] for i, _, _ in part]).to(self.device)
            del embedded
            regions = {i: waiting[i].regions for i in read}
            out = self.sam.predict_prompted(emb, **self._prompts(part, regions, read))
            for (i, k, _), lg in zip(part, out):
                waiting[i].logits[k] = postprocess_logits(lg[None].float(), read[i].info)[0, 0].cpu()

    def _answered(self, waiting: dict[int, _Waiting], jobs: list[tuple[int, int, np.ndarray]]
                  ) -> Iterator[RefinedSlice]:
        """The waiting slices none of whose prompts is among ``jobs`` (the unanswered), labelled and let go."""
        unanswered = {i for i, _, _ in jobs}
        for i in [i for i in waiting if i not in unanswered]:
            slice_ = waiting.pop(i)
            prompted = [k for k, _ in slice_.regions]
            label = self._label(slice_.logits, slice_.argmax, prompted) if prompted else None
            yield RefinedSlice(i, slice_.argmax, label, len(prompted))

    def _prompts(self, jobs: list[tuple[int, int, np.ndarray]], regions: Mapping[int, list[tuple[int, np.ndarray]]],
                 read: dict[int, EmbeddedSlice]) -> dict[str, torch.Tensor]:
        """SAM's prompts for [(slice, class, region)]: the region's box (+ margin), and the
        ``prompt_clicks`` (negatives at the slice's other prompted regions); ``read``: the jobs' slices."""
        infos = [read[i].info for i, _, _ in jobs]
        boxes = np.stack([box_from_mask(m, info, self.cfg.box_margin) for (_, _, m), info in zip(jobs, infos)])
        prompts = {"boxes": torch.from_numpy(boxes).to(self.device)}
        if self.cfg.prompt_clicks != "none":
            points, labels = stack_clicks([click_prompts(m, [o for j, o in regions[i] if j != k], info,
                                                         self.cfg.prompt_clicks)
                                           for (i, k, m), info in zip(jobs, infos)])
            prompts |= {"points": points.to(self.device), "point_labels": labels.to(self.device)}
        return prompts

    def _label(self, logits: dict[int, torch.Tensor], argmax: np.ndarray, prompted: list[int]) -> np.ndarray:
        label = compose_pseudo_label(logits, self.n_outputs, self.cfg.background, self.cfg.overlap)
        if self.cfg.unprompted == "ignore":
            label = ignore_unprompted(label, argmax, prompted)
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



def merge_refined(argmax: np.ndarray, refined: np.ndarray | None) -> np.ndarray:
    """The model's (H, W) class indices where SAM gave no answer (no prompt, or IGNORE), SAM's elsewhere."""
    if refined is None:
        return argmax
    return np.where(refined == IGNORE, argmax, refined)
