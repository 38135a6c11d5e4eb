"""Zero-shot SAM with point or box prompts taken from the ground truth: the papers' oracle baselines.

Nothing is trained. At predict time each class present in a slice's label gets one prompt (the
tight bounding box, or one positive click at the point deepest inside the class's largest
region); SAM's single-mask output per class is combined by taking, at each pixel, the class
with the highest positive logit. Classes absent from the label get no prompt, so the baseline
is never penalised for a missing structure - it is an upper bound on what prompting achieves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fewsam.config import Config, ConfigError, field_default, option
from fewsam.data.types import Case
from fewsam.embedded import EmbeddedSlice
from fewsam.errors import DataError
from fewsam.inference import labels_from_logits, stack_volume
from fewsam.methods import Method
from fewsam.models.sam import SamModel
from fewsam.prompts import box_from_mask, point_from_mask

PROMPTS = ("points", "box")


@dataclass(frozen=True)
class PromptedConfig(Config):
    """Which oracle prompt each class gets at predict time."""

    prompt: str = option("box", "points | box (taken from the labels at predict time).", choices=PROMPTS)
    box_margin: float = option(0.0, "Pixels added around the tight box (--prompt box).", min=0.0)

    def check_together(self) -> None:
        """--box-margin widens the box prompt: with --prompt points no box is drawn, and the run would
        record a margin that changed nothing."""
        super().check_together()
        if self.prompt != "box" and self.box_margin != field_default(PromptedConfig.__dataclass_fields__["box_margin"]):
            raise ConfigError(f"--box-margin widens the box prompt, and --prompt {self.prompt} draws no box; use "
                              "--prompt box or leave --box-margin out")


class PromptedPredictor:
    """Oracle-prompted zero-shot SAM; needs the case's label at predict time."""

    reads_labels = True  # predict loads each case with its label (other predictors read images only)

    def __init__(self, model: SamModel, values: list[int], cfg: PromptedConfig, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.values = values
        self.cfg = cfg
        self.device = device

    def predict_case(self, case: Case, slices: list[EmbeddedSlice]) -> np.ndarray:
        if case.label is None:
            raise DataError(f"{case.case_id}: prompted baselines take their prompts from the label, "
                            "and this case has none")
        return stack_volume([self.predict_slice(s) for s in slices])

    def predict_slice(self, s: EmbeddedSlice) -> np.ndarray:
        """(H, W) label values for one slice."""
        present, boxes, points = [], [], []
        for i, value in enumerate(self.values[1:], start=1):
            mask = s.label == value
            prompt = box_from_mask(mask, s.info, self.cfg.box_margin) if self.cfg.prompt == "box" \
                else point_from_mask(mask, s.info)
            if prompt is not None:
                present.append(i)
                (boxes if self.cfg.prompt == "box" else points).append(prompt)
        if not present:
            return np.zeros(s.label.shape, dtype=np.uint8)
        emb = s.embedding_tensor(self.device)[None].expand(len(present), -1, -1, -1)
        with torch.no_grad():
            if boxes:
                out = self.model.predict_prompted(emb, boxes=torch.from_numpy(np.stack(boxes)).to(self.device))
            else:
                pts = torch.from_numpy(np.stack(points))[:, None, :].to(self.device)
                out = self.model.predict_prompted(emb, points=pts,
                                                  point_labels=torch.ones(len(points), 1, device=self.device))
        logits = torch.full((len(self.values), *out.shape[-2:]), -1e4)
        logits[0] = 0.0
        for row, i in enumerate(present):
            logits[i] = out[row, 0].cpu()
        return labels_from_logits(logits, s.info, self.values)


def _predictor(run_dir: Path, config: dict, model: SamModel, device: str, values: list[int]) -> PromptedPredictor:
    return PromptedPredictor(model, values, PromptedConfig.from_json(config["prompted"]), device)


METHOD = Method("prompted", PromptedConfig, None, _predictor, fit_options=("run", "model", "checkpoint"))
