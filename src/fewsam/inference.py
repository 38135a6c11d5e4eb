"""From decoder logits in the model frame to label maps in the case's own geometry.

Shared by every method: validation during fitting, ``fewsam predict`` and the post-processing choice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from fewsam.data.types import Case, ClassMap
from fewsam.embedded import EmbeddedSlice
from fewsam.errors import DataError
from fewsam.labels import index_lut
from fewsam.metrics import volume_score
from fewsam.models.sam import PreprocessInfo, postprocess_logits

CAVITY_RULE_HELP = ("Nested anatomy as RING:INNER:OUTER class names (ACDC: Myo:LV:RV): where RING closes around a "
                    "cavity predicted background, the cavity becomes INNER and INNER outside the ring becomes OUTER.")
POSTPROCESS = "postprocess.json"
"""A fitted run's post-processing choices (cavity rule, largest components, mirroring, ...),
made on its validation cases at the end of the fit and read back by its predictor."""


def labels_from_logits(logits: torch.Tensor, info: PreprocessInfo, values: list[int]) -> np.ndarray:
    """(Q, 256, 256) low-res logits of one slice (query order = ``values``) -> (H, W) label values (``index_lut``)."""
    full = postprocess_logits(logits[None].float(), info)[0]
    index = full.argmax(dim=0).cpu().numpy()
    return index_lut(values)[index]


def stack_volume(slices: list[np.ndarray]) -> np.ndarray:
    """(H, W) label value slices as a (D, H, W) volume of their type (8 bits, or 16 for values above 255)."""
    stacked = np.stack(slices)
    return stacked if stacked.dtype in (np.uint8, np.uint16) else stacked.astype(np.uint8)


def check_labelled(samples: list[EmbeddedSlice]) -> None:
    if not samples:
        raise DataError("the labelled set is empty; give --labeled-cases N or --labeled-slices K with N, K >= 1")
    if any(s.label_frame is None for s in samples):
        raise DataError("some labelled slices have no label file; the labelled set must be labelled")



def keep_largest_components(volume: np.ndarray, values: list[int]) -> np.ndarray:
    """Per class, keep only the largest connected component (3D, face-connected); the rest -> background.

    Anatomy such as the ventricles is one connected structure, so isolated islands are errors;
    whether this helps is decided on the validation list (``choose_postprocessing``), as nnU-Net does.
    """
    out = volume.copy()
    for value in values:
        mask = volume == value
        labels, n = ndimage.label(mask)
        if n <= 1:
            continue
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        out[mask & (labels != int(np.argmax(sizes)) + 1)] = 0
    return out


def choose_postprocessing(predictions: list[np.ndarray], labels: list[np.ndarray], values: list[int],
                          ignores: Sequence[int | None] | None = None) -> dict[str, Any]:
    """Compare raw vs largest-component predictions on validation volumes by mean Dice; with the
    chosen one's Dice per volume (``val_dice_per_volume``, in validation order) for paired choices after it.
    ``ignores``: each label's unannotated pixels' value (``Case.ignore``), none by default."""
    ignores = list(ignores) if ignores is not None else [None] * len(labels)
    raw = [volume_score(p, y, values, i) for p, y, i in zip(predictions, labels, ignores)]
    lcc = [volume_score(keep_largest_components(p, values), y, values, i)
           for p, y, i in zip(predictions, labels, ignores)]
    raw_mean, lcc_mean = float(np.mean(raw)), float(np.mean(lcc))
    keep = lcc_mean > raw_mean
    return {"largest_component": keep, "val_dice_raw": raw_mean, "val_dice_largest_component": lcc_mean,
            "val_dice_per_volume": [float(x) for x in (lcc if keep else raw)]}


@dataclass(frozen=True)
class CavityRule:
    """Nested anatomy the masks must respect: ``inner`` fills the cavity that ``ring`` encloses.

    ACDC's left-ventricle cavity lies inside the myocardium ring (``Myo:LV:RV``). On patients unlike
    the labelled ones the decoder can find the ring yet call the right ventricle "LV" and leave the
    real cavity background: a swap no per-class clean-up can see. In a slice where the ring closes
    around a cavity (at least ``min_cavity`` pixels) that the prediction leaves mostly background,
    the cavity becomes ``inner`` and every ``inner`` region that does not touch the ring's filled
    area becomes ``outer``. Slices whose ring is open (basal and apical slices) or whose cavity is
    already labelled are left as predicted, so the rule only acts on that swap. The rule is declared
    by the user (anatomy, not a tuned choice); its validation effect is recorded beside the others.
    """

    ring: int
    inner: int
    outer: int
    min_cavity: int = 20

    @classmethod
    def parse(cls, text: str, class_map: ClassMap) -> CavityRule:
        """``RING:INNER:OUTER``, each a class name or label value of ``class_map`` (e.g. ``Myo:LV:RV``)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise DataError(f"--cavity-rule {text!r}: give RING:INNER:OUTER, e.g. Myo:LV:RV")
        by_name = {name.lower(): value for value, name in class_map.names.items()}
        values = []
        for part in parts:
            key = part.strip()
            value = int(key) if key.isdigit() else by_name.get(key.lower())
            if value not in class_map.names:
                known = ", ".join(class_map.names.values())
                raise DataError(f"--cavity-rule {text!r}: {key!r} is not a class of this dataset ({known})")
            values.append(value)
        if len(set(values)) != 3:
            raise DataError(f"--cavity-rule {text!r}: RING, INNER and OUTER must be three different classes")
        return cls(*values)

    def to_json(self) -> list[int]:
        return [self.ring, self.inner, self.outer]

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """(D, H, W) label values -> the same with the rule applied slice by slice."""
        return np.stack([self._apply_slice(s) for s in volume]).astype(volume.dtype)

    def _apply_slice(self, labels: np.ndarray) -> np.ndarray:
        ring = labels == self.ring
        filled = ndimage.binary_fill_holes(ring)
        cavity = filled & ~ring
        if cavity.sum() < self.min_cavity or (labels[cavity] == 0).mean() < 0.5:
            return labels
        out = labels.copy()
        regions, n = ndimage.label(labels == self.inner)
        touching = set(np.unique(regions[filled]).tolist())
        for region in range(1, n + 1):
            if region not in touching:
                out[regions == region] = self.outer
        out[cavity & (labels == 0)] = self.inner
        return out


MIRROR_OFF_P = 0.05
"""Test-time mirroring is turned off only when validation says the single view is better at this
significance (one-sided paired Wilcoxon signed-rank test over the validation subjects)."""


def mirroring_choice(single: dict[str, Any], mirrored: dict[str, Any], subjects: Sequence[str] | None = None
                     ) -> dict[str, Any]:
    """The post-processing record of test-time mirroring unless validation shows the single view
    significantly better (each after its own post-processing choice); with both scores and the test's p.

    Mirroring is the default, as in nnU-Net, and validation only has to veto it: ten validation
    patients rank the two within their noise (an ACDC fit lost 0.016 mean Dice mirrored while
    mirroring won 11 of its 20 volumes), while on other patients mirroring scored higher in every
    fit measured; the veto is there for a decoder tied to one orientation (a 1-case FewMatch fit
    scored 0.64 mirrored against 0.83). The test needs each record's ``val_dice_per_volume`` and at least 5
    volumes (below that it cannot reach p < 0.05); without them the higher mean wins, a tie
    keeping the mirrored view. ``subjects`` names each validation volume's subject, in the records'
    order: the volumes of one subject (an ACDC patient's two frames) make one pair, since pairs that
    are not independent would make p too small. The top-level ``val_dice_*`` figures are the chosen
    view's; ``views`` keeps both records whole, so that the single view's raw score is not read off
    the mirrored record."""
    scores = {"val_dice_single_view": chosen_val_dice(single), "val_dice_mirrored": chosen_val_dice(mirrored)}
    p = single_view_better_p(single.get("val_dice_per_volume"), mirrored.get("val_dice_per_volume"), subjects)
    if p is None:
        keep_single = scores["val_dice_single_view"] > scores["val_dice_mirrored"]
    else:
        keep_single = p < MIRROR_OFF_P
    chosen = single if keep_single else mirrored
    return {**chosen, "mirror": chosen is mirrored, **scores, "mirror_off_p": p,
            "views": {"single": single, "mirrored": mirrored}}


def single_view_better_p(single: list[float] | None, mirrored: list[float] | None,
                         subjects: Sequence[str] | None = None) -> float | None:
    """One-sided p of "the single view scores higher per subject" (paired Wilcoxon signed-rank over
    each subject's mean difference; without ``subjects`` every volume is its own), or None when
    fewer than 5 subjects are paired (or no scores recorded)."""
    if single is None or mirrored is None or len(single) != len(mirrored):
        return None
    differences = subject_means(np.asarray(single, dtype=float) - np.asarray(mirrored, dtype=float), subjects)
    if len(differences) < 5:
        return None
    if not np.any(differences):
        return 1.0
    from scipy.stats import wilcoxon  # here: importing scipy.stats takes ~0.4 s of every command's start

    return float(wilcoxon(differences, alternative="greater").pvalue)


def subject_means(values: np.ndarray, subjects: Sequence[str] | None) -> np.ndarray:
    """Per-volume ``values`` averaged per subject (first-appearance order); as they are without ``subjects``."""
    if subjects is None:
        return values
    if len(subjects) != len(values):
        raise ValueError(f"{len(values)} volume scores but {len(subjects)} subjects")
    groups: dict[str, list[float]] = {}
    for subject, value in zip(subjects, values):
        groups.setdefault(subject, []).append(float(value))
    return np.array([np.mean(v) for v in groups.values()])


def chosen_val_dice(record: dict[str, Any]) -> float:
    """The validation Dice of a post-processing record's own choice (largest component or raw)."""
    return float(record["val_dice_largest_component"] if record["largest_component"] else record["val_dice_raw"])


KEPT_STEPS = (("cavity_rule", "the cavity rule"), ("mirror", "mirrored views"), ("sam_refine", "SAM refinement"),
              ("teacher_blend", "the teacher blend"), ("largest_component", "largest components"))


def describe_kept(record: dict[str, Any]) -> str:
    """One line on what a fitted run predicts with and the validation Dice that choice scored: the
    training loop's best score is the raw network's, which mirroring, refinement or a blend may
    raise, so a user reading only the loop's figure would under-rate the run."""
    steps = [name for key, name in KEPT_STEPS if record.get(key)]
    return (f"kept for prediction, chosen on validation: {', '.join(steps) or 'the raw network output'}; "
            f"validation Dice {chosen_val_dice(record):.4f}")


def kept_line(run_dir: Path) -> str | None:
    """``describe_kept`` of RUN/postprocess.json; None for runs that make no such choice."""
    post = Path(run_dir) / POSTPROCESS
    return describe_kept(json.loads(post.read_text())) if post.is_file() else None


def postprocessing_choice(predictions: list[tuple[Case, np.ndarray]], values: list[int],
                          rule: CavityRule | None) -> dict[str, Any]:
    """RUN/postprocess.json: the declared cavity rule (always applied) and, after it, whether keeping
    each class's largest component helps on the validation volumes; with the Dice of each choice."""
    volumes, labels = [p for _, p in predictions], [case.label for case, _ in predictions]
    ignores = [case.ignore for case, _ in predictions]
    record: dict[str, Any] = {"cavity_rule": None}
    if rule is not None:
        before = float(np.mean([volume_score(p, y, values[1:], i) for p, y, i in zip(volumes, labels, ignores)]))
        volumes = [rule.apply(v) for v in volumes]
        record = {"cavity_rule": rule.to_json(), "val_dice_without_cavity_rule": before}
    return {**record, **choose_postprocessing(volumes, labels, values[1:], ignores)}


def postprocess_volume(volume: np.ndarray, rule: CavityRule | None, largest_component: bool,
                       values: list[int]) -> np.ndarray:
    """A run's post-processing of a (D, H, W) label volume: the cavity rule, then largest components."""
    if rule is not None:
        volume = rule.apply(volume)
    return keep_largest_components(volume, values[1:]) if largest_component else volume
