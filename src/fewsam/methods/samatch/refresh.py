"""The loop's step hook that keeps SAM-Match's pseudo-labels current.

After ``warmup_steps`` and then every ``refresh_every`` steps the student labels the unlabelled
pool; SAM (after a round learning from those labels, when rounds are on) turns its confident
regions into pseudo-labels. Each refresh is saved (RUN/pseudo_labels/step_<step>.pt), so that a
resumed run reads the very labels the uninterrupted run made instead of recomputing them, and
scored against the pool's ground truth where it exists (RUN/pseudo_label_quality.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from fewsam.labels import IGNORE
from fewsam.methods.samatch.config import SamMatchConfig
from fewsam.methods.samatch.pseudo_labels import PooledDice, PseudoLabeller, streamed_student_probs, student_samples
from fewsam.methods.samatch.sam_decoder import SamRounds
from fewsam.methods.student import SliceSet, student_label
from fewsam.progress import record
from fewsam.runs import write_json
from fewsam.self_prompting import RefinedSlice
from fewsam.train import atomic_torch_save, load_run_file

PSEUDO_DIR = "pseudo_labels"
QUALITY = "pseudo_label_quality.json"


def latest_refresh(step: int, cfg: SamMatchConfig) -> int | None:
    """The step of the refresh whose labels step ``step`` trains on (None: before the first)."""
    if step < cfg.warmup_steps:
        return None
    return cfg.warmup_steps + (step - cfg.warmup_steps) // cfg.refresh_every * cfg.refresh_every


class PseudoLabelRefresh:
    """``before_step`` hook of the student's loop; ``labels`` holds the current pseudo-labels."""

    def __init__(self, student: nn.Module, unlabelled: SliceSet, labeller: PseudoLabeller, rounds: SamRounds | None,
                 cfg: SamMatchConfig, values: list[int], run_dir: Path, device: str = "cpu",
                 truth: Sequence[np.ndarray | None] | None = None) -> None:
        """``truth``: the pool's labels per slice (``PoolTruth`` reads each as it is scored), by default
        ``unlabelled.originals``; the refreshes are scored when every slice has one."""
        self.student, self.unlabelled, self.labeller, self.rounds = student, unlabelled, labeller, rounds
        self.truth = unlabelled.originals if truth is None else truth
        self.cfg, self.values, self.run_dir, self.device = cfg, values, run_dir, device
        self.labels: torch.Tensor | None = None  # (N_u, S, S) uint8, IGNORE where SAM gave nothing
        self.step: int | None = None
        (run_dir / PSEUDO_DIR).mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int) -> None:
        latest = latest_refresh(step, self.cfg)
        if latest is None or latest == self.step:
            return
        path = self.run_dir / PSEUDO_DIR / f"step_{latest:07d}.pt"
        if path.exists():
            self.labels = load_run_file(path)["labels"]
        else:
            self.labels = self.refresh(latest, path)
        self.step = latest

    def refresh(self, step: int, path: Path) -> torch.Tensor:
        """Label the unlabelled pool with SAM, save the labels and their quality report.

        The student's probabilities come a batch at a time and each slice's are let go once its
        prompts are drawn: a pool's are never all held (ACDC's 1,244 slices are 1.1 GB of float32, a
        CT pool's tens of GB). SAM's training on the student's labels needs them before SAM answers
        the prompts, so when SAM trains on them (``sam_round_steps`` > 0) the student labels the pool
        twice; in eval mode and in the same batches, its numbers are the same both times.

        The labels file is written last: a resumed run reads it instead of refreshing again, so a
        stop between the two must find the labels missing, or RUN/pseudo_label_quality.json would
        lack this refresh for good. Written twice, the report's record of a step is replaced."""
        if self.rounds is not None and self.cfg.sam_round_steps > 0:
            self.rounds.run(step, student_samples(self._probabilities(), self.labeller.slices, self.values,
                                                  self.cfg.threshold))
        labels, tally = self._pseudo_labels()
        quality = None if tally.scores is None else self._report(step, tally)
        record(refresh_line(step, tally.refined, tally.slices, tally.prompts, quality))
        atomic_torch_save({"step": step, "labels": labels}, path)
        return labels

    def _probabilities(self) -> Iterator[torch.Tensor]:
        """The student's probabilities on the pool, in eval mode, a batch computed at a time."""
        self.student.eval()
        try:
            yield from streamed_student_probs(self.student, self.unlabelled, self.device)
        finally:
            self.student.train()

    def _pseudo_labels(self) -> tuple[torch.Tensor, "RefreshTally"]:
        """(N_u, S, S) uint8 pseudo-labels in the student frame (IGNORE where SAM gave nothing), and
        the refresh's counts and Dice, each slice counted as SAM answers it and then let go."""
        size = self.cfg.image_size
        identity = np.arange(256, dtype=np.int64)
        labels = torch.full((len(self.labeller.slices), size, size), IGNORE, dtype=torch.uint8)
        tally = RefreshTally(len(self.values), scored=bool(self.truth))
        for done in self.labeller.refine_each(self._probabilities()):
            if done.label is not None:
                labels[done.index] = student_label(done.label, size, identity)
            tally.add(done, self.truth[done.index] if tally.scores is not None else None)
        return labels, tally

    def _report(self, step: int, tally: "RefreshTally") -> dict:
        student_all, student_refined, sam_refined = tally.scores
        record = {
            "step": step,
            "slices": tally.slices,
            "refined_slices": tally.refined,
            "prompts": tally.prompts,
            "student_all": student_all.result(),
            "student_refined": student_refined.result() if tally.refined else None,
            "sam_refined": sam_refined.result() if tally.refined else None,
        }
        path = self.run_dir / QUALITY
        records = json.loads(path.read_text()) if path.exists() else []
        records = [r for r in records if r["step"] != step] + [record]
        write_json(path, sorted(records, key=lambda r: r["step"]))
        return record


class RefreshTally:
    """What a refresh reports of the pool, counted a slice at a time: how many slices SAM refined and
    with how many prompts, and (``scored``: the pool has ground truth) the pooled Dice of the student's
    argmax on every slice, and of the student's and SAM's labels on the slices SAM refined."""

    def __init__(self, n_outputs: int, scored: bool) -> None:
        self.slices = self.refined = self.prompts = 0
        self.scores = (PooledDice(n_outputs), PooledDice(n_outputs), PooledDice(n_outputs)) if scored else None

    def add(self, done: RefinedSlice, gt: np.ndarray | None) -> None:
        """Count one slice; a slice without a label leaves the pool unscored (its Dice would be of part)."""
        self.slices += 1
        self.prompts += done.prompts
        self.refined += done.label is not None
        if gt is None:
            self.scores = None
        if self.scores is None:
            return
        student_all, student_refined, sam_refined = self.scores
        student_all.add(done.argmax, gt)
        if done.label is not None:
            student_refined.add(done.argmax, gt)
            sam_refined.add(done.label, gt)


def refresh_line(step: int, refined: int, slices: int, prompts: int, quality: dict | None) -> str:
    """The fit log's line for one refresh: a refresh labels the whole pool (minutes on real data), and
    without it RUN/fit.log showed the loop standing still and never said how the pseudo-labels fared."""
    line = (f"pseudo-labels refreshed at step {step}: SAM refined {refined} of {slices} unlabelled slices "
            f"({prompts} prompts)")
    if quality is not None:
        sam = quality.get("sam_refined") or {}
        line += f"; pooled Dice against the pool's labels: student {quality['student_all']['mean']:.4f}" + (
            f", SAM-refined slices {sam['mean']:.4f}" if "mean" in sam else "")
    return line
