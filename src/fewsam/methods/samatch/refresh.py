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

import numpy as np
import torch
from torch import nn

from fewsam.labels import IGNORE
from fewsam.methods.samatch.config import SamMatchConfig
from fewsam.methods.samatch.pseudo_labels import PseudoLabeller, pooled_dice, student_probs, student_samples
from fewsam.methods.samatch.sam_decoder import SamRounds
from fewsam.methods.student import SliceSet, student_label
from fewsam.progress import record
from fewsam.runs import write_json
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
                 cfg: SamMatchConfig, values: list[int], run_dir: Path, device: str = "cpu") -> None:
        self.student, self.unlabelled, self.labeller, self.rounds = student, unlabelled, labeller, rounds
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

        The labels file is written last: a resumed run reads it instead of refreshing again, so a
        stop between the two must find the labels missing, or RUN/pseudo_label_quality.json would
        lack this refresh for good. Written twice, the report's record of a step is replaced."""
        self.student.eval()
        probs = student_probs(self.student, self.unlabelled, self.device)
        self.student.train()
        if self.rounds is not None:
            self.rounds.run(step, student_samples(probs, self.labeller.slices, self.values, self.cfg.threshold))
        sam_labels, n_prompts = self.labeller.refine(probs)
        size = self.cfg.image_size
        identity = np.arange(256, dtype=np.int64)
        labels = torch.stack([torch.full((size, size), IGNORE, dtype=torch.uint8) if lab is None
                              else student_label(lab, size, identity) for lab in sam_labels])
        quality = None
        if self.unlabelled.originals and all(g is not None for g in self.unlabelled.originals):
            quality = self._report(step, probs, sam_labels, n_prompts)
        record(refresh_line(step, sam_labels, n_prompts, quality))
        atomic_torch_save({"step": step, "labels": labels}, path)
        return labels

    def _report(self, step: int, probs: list[torch.Tensor], sam_labels: list[np.ndarray | None],
                n_prompts: list[int]) -> dict:
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
        return record


def refresh_line(step: int, sam_labels: list[np.ndarray | None], n_prompts: list[int], quality: dict | None) -> str:
    """The fit log's line for one refresh: a refresh labels the whole pool (minutes on real data), and
    without it RUN/fit.log showed the loop standing still and never said how the pseudo-labels fared."""
    refined = sum(lab is not None for lab in sam_labels)
    line = (f"pseudo-labels refreshed at step {step}: SAM refined {refined} of {len(sam_labels)} unlabelled slices "
            f"({int(sum(n_prompts))} prompts)")
    if quality is not None:
        sam = quality.get("sam_refined") or {}
        line += f"; pooled Dice against the pool's labels: student {quality['student_all']['mean']:.4f}" + (
            f", SAM-refined slices {sam['mean']:.4f}" if "mean" in sam else "")
    return line
