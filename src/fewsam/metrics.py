"""Segmentation metrics per case, class and group; equity scaling; bootstrap CIs; Wilcoxon tests.

Conventions (the JSON that `fewsam evaluate` writes relies on them):

- Metrics are computed per class on a whole case: a (D, H, W) volume or an (H, W) image. A case
  of one slice, (1, H, W) (a PNG, a 2D NIfTI), is measured as the (H, W) image it is.
  Dice and IoU are fractions in [0, 1].
- Both prediction and label empty (``BOTH_EMPTY`` "perfect", the default): dice = iou = 1, hd95 =
  asd = 0, as BraTS and MONAI with ``ignore_empty=False`` count it; "skip": all four None, the class
  left out of that case's means, as nnU-Net counts it (MONAI's default, ``ignore_empty=True``, leaves out
  every empty label, also where the prediction draws the class, which here scores 0). Exactly one of them empty:
  dice = iou = 0 and hd95 = asd = None -- a missing value, never 0 (as the papers report).
- The surface of a mask is the set of its voxels removed by one binary erosion with face
  connectivity, the outside of the array counting as background (medpy and MONAI do the same).
- Distances are in the units of `spacing` (mm, one value per array axis, (z, y, x)) when it is
  given, else in voxels/pixels.
- HD95 follows MONAI's `compute_hausdorff_distance(percentile=95)`: the larger of the two
  directed 95th percentiles (linear interpolation). medpy's `hd95` instead takes the 95th
  percentile of both directions pooled; the two agree on symmetric shapes and differ slightly
  otherwise.
- ASD is the mean distance from the predicted surface to the label surface (directed), as
  medpy's `asd` (used by SSL4MIS, SAM-Match and FairSeg) and MONAI's
  `compute_average_surface_distance` with its default `symmetric=False`.
- Summaries ignore missing values (None or NaN) and count them per class; the overall mean is
  the mean over classes of the per-class means (SSL4MIS style).
- A record may say the unit of its distances ("distance_unit": "mm" or "pixel"). Where both occur,
  the HD95 and ASD summaries are over the mm cases only (``summary_distance_unit``) and count the
  others left out; Dice and IoU are summarised over every case.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from fewsam.errors import DataError

METRICS = ("dice", "iou", "hd95", "asd")
BOTH_EMPTY = ("perfect", "skip")  # how a class absent from both prediction and label scores (see above)
CI_METRICS = ("dice", "iou")
# Equity needs groups to compare: over one group (a single-site test split, bins the data falls in
# one of) ES-Dice would equal the Dice and the worst-group gap be 0, read as perfectly fair.
MIN_GROUPS = 2


def case_metrics(
    pred: np.ndarray,
    label: np.ndarray,
    class_labels: list[int],
    spacing: tuple[float, ...] | None = None,
    both_empty: str = BOTH_EMPTY[0],
    ignore: int | None = None,
    classes_scored: Callable[[int], None] = lambda n: None,
) -> dict[int, dict[str, float | None]]:
    """Dice, IoU, HD95 and ASD of each class in `class_labels` for one case.

    `pred` and `label` are integer label maps of the same shape ((D, H, W) or (H, W)); `both_empty`
    is the convention for a class neither holds (``BOTH_EMPTY``); `ignore` the label value of
    unannotated pixels (``annotated_part``). `classes_scored` is told of each class scored (with 1):
    the distances of one large volume take minutes, and progress can count them class by class.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise DataError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    if spacing is not None and len(spacing) != pred.ndim:
        raise DataError(f"spacing {tuple(spacing)} needs one value per axis of a {pred.ndim}D case")
    pred, label = annotated_part(pred, label, ignore)
    pred, label, spacing = _as_image(pred, label, spacing)
    scores = {}
    for c in class_labels:
        scores[int(c)] = binary_metrics(pred == c, label == c, spacing, both_empty)
        classes_scored(1)
    return scores


def _as_image(pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...] | None
              ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...] | None]:
    """A one-slice case as its (H, W) image: in 3D the outside of the array lies above and below
    that lone slice, so every voxel would be surface and HD95/ASD would measure areas, not
    contours (ASD 0 for any prediction inside its label)."""
    if pred.ndim != 3 or pred.shape[0] != 1:
        return pred, label, spacing
    return pred[0], label[0], None if spacing is None else tuple(spacing[1:])


def annotated_part(pred: np.ndarray, label: np.ndarray, ignore: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and label with the label's unannotated pixels (value ``ignore``, nnU-Net's ignore
    label) made background in both, so they count in no class's true or false positives, as nnU-Net
    scores them: an annotator who painted a few scribbles has not said what lies elsewhere. Distances
    are then those of the predicted and labelled contours within the annotated part."""
    if ignore is None:
        return pred, label
    unannotated = label == ignore
    if not unannotated.any():
        return pred, label
    return np.where(unannotated, 0, pred).astype(pred.dtype), np.where(unannotated, 0, label).astype(label.dtype)


def dice_per_class(pred: np.ndarray, label: np.ndarray, class_labels: list[int],
                   ignore: int | None = None) -> dict[int, float]:
    """Dice alone per class (same empty-mask conventions): the cheap score for model selection."""
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise DataError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    pred, label = annotated_part(pred, label, ignore)
    return {int(c): _dice(pred == c, label == c) for c in class_labels}


def volume_score(pred: np.ndarray, label: np.ndarray, foreground: list[int], ignore: int | None = None) -> float:
    """Mean over the foreground classes of one volume's 3D Dice: the score every method's model
    selection, post-processing choice and refinement choice is made on (``ignore`` as in ``annotated_part``)."""
    return float(np.mean(list(dice_per_class(pred, label, foreground, ignore).values())))


def selection_score(volume_scores: list[float]) -> dict[str, float]:
    """The validation record the training loop selects on: the mean of ``volume_score`` over volumes."""
    score = float(np.mean(volume_scores)) if volume_scores else 0.0
    return {"score": score, "dice": score}


def _dice(pred: np.ndarray, label: np.ndarray) -> float:
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(label))
    return 1.0 if total == 0 else 2 * int(np.count_nonzero(pred & label)) / total


def binary_metrics(
    pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...] | None = None, both_empty: str = BOTH_EMPTY[0]
) -> dict[str, float | None]:
    """Dice, IoU, HD95 and ASD of two boolean masks, with the empty-mask conventions above."""
    n_pred, n_label = int(np.count_nonzero(pred)), int(np.count_nonzero(label))
    if n_pred == 0 and n_label == 0:
        if both_empty == "skip":
            return {"dice": None, "iou": None, "hd95": None, "asd": None}
        return {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}
    if n_pred == 0 or n_label == 0:
        return {"dice": 0.0, "iou": 0.0, "hd95": None, "asd": None}
    overlap = int(np.count_nonzero(pred & label))
    pred_to_label, label_to_pred = surface_distances(pred, label, spacing)
    hd95 = max(np.percentile(pred_to_label, 95), np.percentile(label_to_pred, 95))
    return {
        "dice": 2 * overlap / (n_pred + n_label),
        "iou": overlap / (n_pred + n_label - overlap),
        "hd95": float(hd95),
        "asd": float(pred_to_label.mean()),
    }


def surface_distances(
    pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of `pred` to the surface of `label`, and back.

    Both masks must be non-empty. They are cropped to their joint bounding box plus one voxel
    first, which changes no distance (every surface voxel lies inside) but saves time.
    """
    box = _joint_box(pred, label)
    pred_surface, label_surface = _surface(pred[box]), _surface(label[box])
    to_label = ndimage.distance_transform_edt(~label_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_label[pred_surface], to_pred[label_surface]


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: a mask touching the array edge has its surface there.
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _joint_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    coords = np.nonzero(a | b)
    return tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)


def summarise(cases: list[dict[str, Any]], distance_unit: str | None = None) -> dict[str, Any]:
    """The evaluate JSON from per-case records.

    A record is `{"case": id, "per_class": {name: {"dice", "iou", "hd95", "asd"}}, "group": g}`, and
    may name its "subject" (patient), the unit `bootstrap_ci` resamples, and its "distance_unit".
    Returns `{"mean": {metric: value}, "per_class": {name: {metric: mean, "<metric>_missing": k}},
    "cases": cases, "n_cases": N, "distance_cases_left_out": k}`; a mean with no value to average is None.
    HD95 and ASD are summarised over the records in ``distance_unit`` (default: ``summary_distance_unit``
    of ``cases``; a record that names no unit counts as in it): a mean of millimetres and pixels has no
    unit, and a group must be measured in the unit of the whole evaluation its table stands in.
    """
    unit = distance_unit or summary_distance_unit(cases)
    measured = [c for c in cases if in_distance_unit(c, unit)]
    names = _class_names(cases)
    per_class = {name: _class_summary([c["per_class"].get(name, {}) for c in cases],
                                      [c["per_class"].get(name, {}) for c in measured]) for name in names}
    mean = {m: _mean([per_class[name][m] for name in names]) for m in METRICS}
    return {"mean": mean, "per_class": per_class, "cases": cases, "n_cases": len(cases),
            "distance_cases_left_out": len(cases) - len(measured)}


DISTANCE_METRICS = ("hd95", "asd")  # measured in each case's distance unit; the others have none
DISTANCE_UNITS = ("mm", "pixel")  # a case's: mm where its files give the voxel spacing, else pixels


def summary_distance_unit(cases: list[dict[str, Any]]) -> str | None:
    """The unit the distance summaries of ``cases`` are in: "mm" where any record is in mm (the unit the
    papers and MONAI / nnU-Net users report; a case without spacing cannot be turned into it), else
    "pixel" where any is; None where no record names its unit."""
    units = {c.get("distance_unit") for c in cases} - {None}
    return "mm" if "mm" in units else units.pop() if units else None


def in_distance_unit(case: dict[str, Any], unit: str | None) -> bool:
    """Whether ``case``'s distances count in a summary in ``unit`` (a record naming no unit always does)."""
    return unit is None or case.get("distance_unit", unit) == unit


def _class_names(cases: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(name for case in cases for name in case["per_class"]))


def _class_summary(records: list[dict[str, float | None]], measured: list[dict[str, float | None]]
                   ) -> dict[str, float | int | None]:
    """One class's means and missing counts: Dice and IoU over ``records``, HD95 and ASD over ``measured``
    (the records in the summary's distance unit)."""
    summary: dict[str, float | int | None] = {}
    for m in METRICS:
        values = [r.get(m) for r in (measured if m in DISTANCE_METRICS else records)]
        summary[m] = _mean(values)
        summary[f"{m}_missing"] = sum(_is_missing(v) for v in values)
    return summary


def _is_missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if not _is_missing(v)]
    return float(np.mean(present)) if present else None


def equity_scaled(overall: float, group_scores: list[float], alpha: float = 1.0, mode: str = "sum") -> float:
    """FairSeg's equity-scaled metric: `overall / (1 + alpha * spread)`.

    spread is `sum_g |M_g - overall|` for mode "sum" (the paper's default), or the sample standard
    deviation (ddof=1, as FairSeg's `statistics.stdev`) of the group scores for mode "std"; with
    fewer than two groups the standard deviation counts as 0.
    """
    if mode == "sum":
        spread = sum(abs(score - overall) for score in group_scores)
    elif mode == "std":
        spread = statistics.stdev(group_scores) if len(group_scores) > 1 else 0.0
    else:
        raise ValueError(f"mode must be 'sum' or 'std', got {mode!r}")
    return float(overall / (1.0 + alpha * spread))


def group_summary(
    cases: list[dict[str, Any]],
    alpha: float = 1.0,
    es_mode: str = "sum",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """`summarise` plus per-group metrics, ES-Dice/ES-IoU, the worst-group gap and bootstrap CIs.

    Cases whose "group" is None count in the overall scores but in no group ("missing_group"), and
    not in ES-Dice / ES-IoU: those measure the spread of the group means around the mean of the
    cases the groups hold ("grouped": n, mean, per_class), as the paper's groups hold every case.
    Measured around the mean of all cases, the cases of no group would count as a disparity: two
    groups scoring alike would get an ES-Dice below their Dice. Groups are keyed by `str(group)`
    in `group_order`. With fewer than two groups (`MIN_GROUPS`), es_dice, es_iou and worst_group_gap
    are None. CIs are 95% percentile bootstraps over subjects (a record's optional
    "subject", else its case) of the same mean as the point estimate; a group of one subject has
    none (`bootstrap_ci`). Each group resamples its own subjects with a generator of its own, seeded
    by ``seed`` and the group's name (`bootstrap_stream`): deterministic, and a group's interval does
    not change when another group gains a case. The intervals of ES-Dice, ES-IoU and the gap
    ("es_dice_ci95", "es_iou_ci95", "worst_group_gap_ci95") come from the stratified bootstrap those
    draws make together (`equity_intervals`). Every group's HD95 and ASD are in the unit of the whole
    summary (`summarise`), each group counting its "distance_cases_left_out".
    """
    unit = summary_distance_unit(cases)  # each group's distances in the unit of the whole table
    summary = summarise(cases, unit)
    summary["overall_ci95"] = bootstrap_ci(cases, bootstrap_stream(seed, OVERALL_STREAM), n_boot)
    by_group: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        if case.get("group") is not None:
            by_group.setdefault(str(case["group"]), []).append(case)
    groups = {}
    for g in group_order(by_group):
        part = summarise(by_group[g], unit)
        ci = bootstrap_ci(by_group[g], bootstrap_stream(seed, g), n_boot)
        groups[g] = {"n": part["n_cases"], "mean": part["mean"], "per_class": part["per_class"], "ci95": ci,
                     "distance_cases_left_out": part["distance_cases_left_out"]}
    summary["groups"] = groups
    summary["missing_group"] = sum(case.get("group") is None for case in cases)
    grouped = summarise([case for case in cases if case.get("group") is not None], unit)
    summary["grouped"] = {"n": grouped["n_cases"], "mean": grouped["mean"], "per_class": grouped["per_class"]}
    for m in CI_METRICS:
        scores = [g["mean"][m] for g in groups.values()]
        overall = grouped["mean"][m]
        usable = len(groups) >= MIN_GROUPS and overall is not None and None not in scores
        summary[f"es_{m}"] = equity_scaled(overall, scores, alpha, es_mode) if usable else None
    dice = [g["mean"]["dice"] for g in groups.values() if g["mean"]["dice"] is not None]
    summary["worst_group_gap"] = max(dice) - min(dice) if len(dice) >= MIN_GROUPS else None
    summary.update(equity_intervals({g: by_group[g] for g in groups}, alpha, es_mode, n_boot, seed))
    return summary


OVERALL_STREAM = "\x00all cases"  # no group is named so: the overall interval draws apart from every group


def bootstrap_stream(seed: int, name: str) -> np.random.Generator:
    """The bootstrap generator of one group (or of all cases): from ``seed`` and the group's name, so each
    group draws its own subjects, the same for the same seed whatever the other groups hold. One
    generator passed from group to group made a group's interval depend on the groups drawn before it."""
    words = np.frombuffer(hashlib.sha256(name.encode("utf-8")).digest(), dtype=np.uint32)
    return np.random.default_rng(np.random.SeedSequence([seed, *words.tolist()]))


def equity_intervals(by_group: dict[str, list[dict[str, Any]]], alpha: float, es_mode: str, n_boot: int,
                     seed: int) -> dict[str, list[float] | None]:
    """95% intervals of ES-Dice, ES-IoU and the worst-group gap, by a stratified bootstrap: each replicate
    draws every group's subjects within that group (the draws of the group's own interval, so the
    replicate's group means are those intervals' replicates) and recomputes the measure from the group
    means and the mean of the cases they hold. Drawn across groups instead, a replicate would change the
    groups' sizes, which are part of the design, not of the chance. None with fewer than two groups, or
    with a group of one subject, whose mean has no spread to draw and would make the interval too narrow."""
    keys = ("es_dice_ci95", "es_iou_ci95", "worst_group_gap_ci95")
    if len(by_group) < MIN_GROUPS or any(_subject_indices(part)[1] < 2 for part in by_group.values()):
        return {key: None for key in keys}
    counts = {g: subject_draws(part, bootstrap_stream(seed, g), n_boot) for g, part in by_group.items()}
    all_cases = [case for part in by_group.values() for case in part]
    all_counts = np.concatenate(list(counts.values()), axis=1)
    out: dict[str, list[float] | None] = {}
    for m in CI_METRICS:
        means = np.stack([replicate_means(part, counts[g], m) for g, part in by_group.items()], axis=1)
        overall = replicate_means(all_cases, all_counts, m)
        out[f"es_{m}_ci95"] = percentile_interval(equity_scaled_replicates(overall, means, alpha, es_mode))
        if m == "dice":
            out["worst_group_gap_ci95"] = percentile_interval(means.max(axis=1) - means.min(axis=1))
    return {key: out[key] for key in keys}


def equity_scaled_replicates(overall: np.ndarray, group_means: np.ndarray, alpha: float, mode: str) -> np.ndarray:
    """`equity_scaled` of each replicate: ``overall`` (B,), ``group_means`` (B, G)."""
    if mode == "sum":
        spread = np.abs(group_means - overall[:, None]).sum(axis=1)
    elif mode == "std":
        spread = group_means.std(axis=1, ddof=1)
    else:
        raise ValueError(f"mode must be 'sum' or 'std', got {mode!r}")
    return overall / (1.0 + alpha * spread)


def group_order(names: Any) -> list[str]:
    """Group names in the order people read them: by value when every name is a number (sites 2
    before 10, -1 before 0, as text sorting put "10" before "2"); bands by their bounds when every
    name is one ("<40", "40-59", "60+", as a table's age groups are written: natural order put "<40"
    last); else in natural order ("site2" before "site10")."""
    from fewsam.data.readers.common import natural_key

    names = list(names)
    try:
        return sorted(names, key=lambda name: (_number(name), name))
    except ValueError:
        pass
    bands = [_band(name) for name in names]
    if names and all(bands) and len({(prefix, suffix) for prefix, suffix, _ in bands}) == 1:
        bounds = dict(zip(names, (band[2] for band in bands)))
        return sorted(names, key=lambda name: (bounds[name], name))
    return sorted(names, key=natural_key)


NUMBER = r"\d+(?:\.\d+)?"  # unsigned: "site-2" is site 2, not minus 2
BAND = re.compile(rf"(?P<prefix>[^\d<>≤≥]*?)\s*(?:(?P<below><=?|≤)|(?P<above>>=?|≥))?\s*(?P<low>{NUMBER})"
                  rf"(?:\s*(?:-|–|to)\s*(?P<high>{NUMBER})|\s*(?P<plus>\+))?\s*(?P<suffix>[^\d]*)")


def _band(name: str) -> tuple[str, str, tuple[float, float]] | None:
    """(word before, word after, (lower, upper) bound) of a band label such as "<25", "25-30", ">=30",
    "60+" or "age 40-59 years"; None for other names. Bands are ordered by bounds only when every
    name has the same words before and after its numbers: "GE 3" and "Siemens 1.5" are no bands of one scale."""
    match = BAND.fullmatch(name.strip())
    if not match:
        return None
    low = float(match["low"])
    if match["below"]:
        bounds = (-math.inf, low)
    elif match["above"] or match["plus"]:
        bounds = (low, math.inf)
    else:
        bounds = (low, float(match["high"]) if match["high"] else low)
    return match["prefix"].strip().casefold(), match["suffix"].strip().casefold(), bounds


def _number(name: str) -> float:
    value = float(name)
    if math.isnan(value):  # NaN orders against nothing
        raise ValueError(name)
    return value


def bootstrap_ci(
    cases: list[dict[str, Any]], rng: np.random.Generator, n_boot: int = 1000
) -> dict[str, list[float] | None]:
    """95% percentile-bootstrap interval of the summary mean Dice and IoU, resampling subjects.

    Each replicate draws as many subjects as there are with replacement (``subject_draws``),
    every case of a drawn subject with it, and recomputes the mean over classes of the per-class
    means, missing values ignored as in `summarise`. A record's subject is its "subject" (the
    patient), else its case: a patient's ED and ES frames, or its slices, are not independent
    samples, and resampling them one by one gave intervals too narrow, and one for a group of a
    single patient. With one case per subject this is the bootstrap over cases.

    One subject gives no interval (None): every replicate redraws that subject, so the "interval"
    would be the spread of its own cases, read as a group mean's uncertainty where nothing is known
    of the spread between patients.
    """
    if not cases:
        return {m: None for m in CI_METRICS}
    counts = subject_draws(cases, rng, n_boot)
    if _subject_indices(cases)[1] < 2:
        return {m: None for m in CI_METRICS}
    return {m: percentile_interval(replicate_means(cases, counts, m)) for m in CI_METRICS}


def subject_draws(cases: list[dict[str, Any]], rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, n_cases): how often each replicate draws each case, as multinomial counts of its subjects
    (every case of a drawn subject drawn with it)."""
    subject_of_case, n_subjects = _subject_indices(cases)
    draws = rng.multinomial(n_subjects, np.full(n_subjects, 1 / n_subjects), size=n_boot)
    return draws[:, subject_of_case].astype(float)


def replicate_means(cases: list[dict[str, Any]], counts: np.ndarray, metric: str) -> np.ndarray:
    """(n_boot,): each replicate's mean over classes of the per-class means of ``metric``, cases weighted by
    ``counts`` (n_boot, n_cases) and missing values ignored, as `summarise` computes the mean."""
    names = _class_names(cases)
    table = np.array([[_as_float(c["per_class"].get(n, {}).get(metric)) for n in names] for c in cases])
    present = ~np.isnan(table)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_means = (counts @ np.where(present, table, 0.0)) / (counts @ present)
    return _nanmean_rows(class_means)


def percentile_interval(replicates: np.ndarray) -> list[float] | None:
    """[2.5th, 97.5th] percentile of the replicates that have a value; None when none has."""
    replicates = replicates[~np.isnan(replicates)]
    if not replicates.size:
        return None
    lo, hi = np.percentile(replicates, [2.5, 97.5])
    return [float(lo), float(hi)]


def _subject_indices(cases: list[dict[str, Any]]) -> tuple[list[int], int]:
    """(index of each case's subject, number of subjects), subjects numbered in order of first case."""
    subjects = [str(case.get("subject") or case["case"]) for case in cases]
    index = {subject: i for i, subject in enumerate(dict.fromkeys(subjects))}
    return [index[subject] for subject in subjects], len(index)


def _as_float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    present = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present, values, 0.0).sum(axis=1) / present.sum(axis=1)


def wilcoxon_compare(a: dict[str, float], b: dict[str, float], n_comparisons: int = 1) -> dict[str, float | int]:
    """Paired Wilcoxon signed-rank test of per-case Dice `a` vs `b` (dicts case id -> Dice).

    Uses the cases both runs have. Returns n, n_no_difference (the pairs whose scores are equal, which
    the signed-rank test drops: zero_method "wilcox", so a reader is not told it ranked n pairs when it
    ranked fewer), median_diff (of a - b), statistic, p and p_bonferroni = min(1, p * n_comparisons).
    Identical scores give statistic 0 and p = 1.
    """
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise DataError(
            f"the two runs share {len(common)} case(s); a paired test needs at least 2 — "
            "evaluate both runs on the same split"
        )
    if n_comparisons < 1:
        raise ValueError(f"n_comparisons must be >= 1, got {n_comparisons}")
    x = np.array([a[k] for k in common], dtype=float)
    y = np.array([b[k] for k in common], dtype=float)
    if np.all(x == y):
        statistic, p = 0.0, 1.0
    else:
        from scipy.stats import wilcoxon  # here: importing scipy.stats takes ~0.4 s of every command's start

        result = wilcoxon(x, y, zero_method="wilcox")
        statistic, p = float(result.statistic), float(result.pvalue)
    return {
        "n": len(common),
        "n_no_difference": int(np.count_nonzero(x == y)),
        "median_diff": float(np.median(x - y)),
        "statistic": statistic,
        "p": p,
        "p_bonferroni": min(1.0, p * n_comparisons),
    }
