"""Pictures and tables people read: overlays of predictions on images, and the group (fairness)
report: Markdown + HTML with per-group Dice bars and 95% CIs, ES-Dice and worst-group gap tables."""

from __future__ import annotations

import fnmatch
import io
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image
from scipy import ndimage

from fewsam.atomic import atomic_write_bytes, check_folder_path, staged_folder
from fewsam.config import argument_name, checked_arguments, home_expanded

log = logging.getLogger("fewsam")
PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 90], [70, 120, 240], [240, 200, 40],
                    [200, 80, 220], [40, 210, 220]], dtype=np.uint8)


def overlay(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: prediction as translucent fill, ground truth (if any) as white contours."""
    grey = image if image.ndim == 2 else image.mean(axis=-1)
    pred = _class_indices(pred, "pred", grey.shape)
    label = None if label is None else _class_indices(label, "label", grey.shape)
    lo, hi = float(grey.min()), float(grey.max())
    base = ((grey - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8)
    rgb = np.repeat(base[..., None], 3, axis=-1).astype(np.float32)
    colours = PALETTE[np.minimum(pred, len(PALETTE) - 1)].astype(np.float32)
    fg = pred > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours[fg]
    if label is not None:
        edges = label != ndimage.grey_erosion(label, size=3)
        rgb[edges & (label > 0)] = 255
    return rgb.astype(np.uint8)


def _class_indices(mask: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` as integer class indices of the image's ``shape``: a label map read as floats (nibabel's
    get_fdata) is taken as the whole numbers it holds; probabilities, or a mask of another size, are refused
    naming it, where numpy's IndexError named neither."""
    from fewsam.errors import DataError

    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise DataError(f"{name} has shape {mask.shape} but the image {tuple(shape)}; give the mask of this slice")
    if mask.dtype.kind == "f" and not np.array_equal(mask, np.round(mask)):
        raise DataError(f"{name} must hold class indices (0 background, 1, 2, ...), not fractions such as "
                        f"{mask[mask != np.round(mask)].flat[0]:g}; threshold probabilities first")
    return mask.astype(np.int64) if mask.dtype.kind in "fb" else mask


def save_overlay(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None, path: Path) -> Path:
    """The overlay as a PNG at ``path``, written atomically: a stop while it is drawn leaves no cut-off file."""
    buf = io.BytesIO()
    Image.fromarray(overlay(image, pred, label)).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


# --- group (fairness) report ------------------------------------------------------------------
# A report is a list of blocks, rendered twice (Markdown, HTML) from the same numbers:
# ("h", text), ("p", text), ("table", (header, rows)), ("img", (png path, caption)).

INTRO = (
    "Dice measures the overlap of predicted and true masks (0 = none, 1 = perfect); IoU is the "
    "stricter intersection over union; HD95 and ASD are boundary distances (lower is better). "
    "Cases are split into groups by one attribute. ES-Dice (equity-scaled Dice, FairSeg) divides "
    "the Dice of the cases with a group by 1 + alpha x the summed distance of the group Dices from it: "
    "it equals that Dice when every group does equally well and drops as groups diverge. The worst-group "
    "gap is the best group's Dice minus the worst group's. Intervals are 95% bootstrap confidence "
    "intervals over patients (a patient's cases are drawn together); a group of a few patients has a "
    "wide interval, so read small gaps with care, and a group of one patient has none (n/a). The intervals "
    "beside ES-Dice and the gap redraw each group's patients within the group (a stratified bootstrap)."
)
PLOTS = "group_dice*.png"  # the report's plots: group_dice.png and group_dice_<class>.png
PLOT_LINK = re.compile(r"\]\(([^()/\\\s]+\.png)\)")  # an image link of report.md: ![caption](group_dice.png)


def earlier_plots(out: Path) -> list[str]:
    """The plots the report already in ``out`` shows, by the image links of its report.md: those a new
    report does not draw again (of classes it lacks) are removed with it. Only they: any file named like
    a plot was removed before, a user's own copy (group_dice_before.png, kept to set beside the new
    plot) with them. No readable report.md names none: what cannot be told to be the report's is kept."""
    try:
        text = (out / "report.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [name for name in dict.fromkeys(PLOT_LINK.findall(text)) if fnmatch.fnmatchcase(name, PLOTS)]


@checked_arguments
def write_group_report(evaluations: list[str | Path], out_dir: str | Path, labels: list[str] | None = None,
                       title: str = "fewsam group report", overwrite: bool = False) -> dict[str, Path]:
    """report.md + report.html (+ PNG plots) from one or more ``fewsam evaluate`` JSONs.

    Two or more evaluations are shown side by side (e.g. before/after fair scaling), with a
    paired Wilcoxon test of per-case Dice between the first and each other run. A non-empty
    ``out_dir`` needs ``overwrite`` (as ``fewsam predict --out``): the report's own files are then
    replaced (an earlier report's plots this one does not draw, of classes it lacks, removed),
    anything else in the folder is left alone.
    """
    from fewsam.compare import read_evaluation, refuse_one_file_twice
    from fewsam.errors import DataError

    evaluations = [home_expanded(path) for path in evaluation_paths(evaluations)]
    refuse_one_file_twice(*evaluations)
    if labels is not None:
        _check_labels(labels, len(evaluations))
    out = Path(out_dir)
    _check_out_folder(out, overwrite)
    names = labels or _unique_names(evaluations)
    runs = [(name, read_evaluation(path, summary=True)) for name, path in zip(names, evaluations)]
    if (warning := different_cases_warning(runs)) is not None:
        log.warning(warning)
    with staged_folder(out, overwrite, replaces=earlier_plots(out)) as staging:  # a failure half-way leaves no partial report
        blocks = [("h", title), ("p", INTRO), *_overview(runs), *_group_blocks(runs, staging),
                  *_class_blocks(runs, staging), *_test_blocks(runs)]
        atomic_write_bytes(staging / "report.md", _markdown(blocks).encode())
        atomic_write_bytes(staging / "report.html", _html(blocks, title).encode())
    return {"markdown": out / "report.md", "html": out / "report.html"}


def evaluation_paths(evaluations: Any) -> list[str | os.PathLike]:
    """The paths of a list, tuple or other iterable (``Path.glob``'s generator, read once) of at least one
    path: one path as text was read letter by letter ("cannot read evaluation /"), a Path alone could not be
    unpacked, a generator was used up before the report read it, and an empty list wrote a report of nothing."""
    from fewsam.errors import DataError

    what = "evaluations must be a list of evaluation JSON paths (`fewsam evaluate --json` writes them)"
    if isinstance(evaluations, (str, os.PathLike)):
        raise DataError(f"{what}, not one path: [{str(evaluations)!r}]")
    paths = list(evaluations) if isinstance(evaluations, Iterable) and not isinstance(evaluations, dict) else None
    if paths is None or not all(isinstance(path, (str, os.PathLike)) for path in paths):
        shown = repr(evaluations)
        raise DataError(f"{what}, not {shown if len(shown) <= 80 else shown[:77] + '...'}")
    if not paths:
        raise DataError("evaluations names no evaluation; give at least one evaluation JSON path")
    return paths


def _check_labels(labels: Any, n: int) -> None:
    """One distinct, non-empty name per evaluation: the report's tables, legends and "B vs A" rows
    tell the runs apart by these names alone. A list: ``"A,B"``, the text of --labels, was counted as
    three names, one per character."""
    from fewsam.errors import DataError

    if not isinstance(labels, (list, tuple)) or not all(isinstance(name, str) for name in labels):
        shown = [part.strip() for part in labels.split(",")] if isinstance(labels, str) else ["A", "B"][:n]
        raise DataError(f"labels must be a list of names, one per evaluation ({shown!r}), not {labels!r}")
    if len(labels) != n:
        raise DataError(f"{argument_name('labels')} gives {len(labels)} names for {n} evaluations")
    if not all(labels):
        given = repr(labels) if argument_name("labels") == "labels" else repr(",".join(labels))  # as typed
        raise DataError(f"{argument_name('labels')} {given} leaves a run without a name; give one name per evaluation")
    twice = sorted({name for name in labels if labels.count(name) > 1})
    if twice:
        raise DataError(f"{argument_name('labels')} names two runs {twice[0]!r}; give each evaluation its own name")


def _check_out_folder(out: Path, overwrite: bool) -> None:
    """A report folder must be a folder, and empty unless ``overwrite`` (nothing replaced silently)."""
    from fewsam.errors import RunError

    check_folder_path(out, "--out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunError(f"{out} is not empty; choose another --out or pass --overwrite")


def _unique_names(paths: list[str | Path]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [f"{i + 1}: {s}" for i, s in enumerate(stems)]


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


DISTANCES_LEFT_OUT = (
    "HD95 and ASD have no value where a prediction or its label is empty (a structure missed or drawn where "
    "there is none): the mean leaves those out, and \"(k n/a)\" counts them over the group's cases and classes. "
    "A group with many such values has distances measured on its better cases only, so compare its Dice too.")


def _distance(summary: dict, metric: str, shown: bool = True) -> str:
    """A group's mean HD95 or ASD, with the count of values it leaves out (``<metric>_missing`` of its
    classes): a group whose predictions are often empty has its distances taken over the cases it did
    find, which made it look closer to the labels than groups the model never missed. "n/a" where not
    ``shown`` (a mean of millimetres and pixels alike, which has no unit)."""
    if not shown:
        return "n/a"
    value = _num(summary["mean"].get(metric), 2)
    missing = sum(int(c.get(f"{metric}_missing") or 0) for c in (summary.get("per_class") or {}).values())
    return f"{value} ({missing} n/a)" if missing and value != "n/a" else value


def _ci(ci: list[float] | None) -> str:
    return "n/a" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _with_ci(result: dict, key: str) -> str:
    """A measure of the groups with its stratified interval, where the evaluation has one (an evaluation
    of one-patient groups, or one written before such intervals, shows the value alone)."""
    ci = result.get(f"{key}_ci95")
    return _num(result.get(key)) + (f" {_ci(ci)}" if ci else "")


def _overview(runs: list[tuple[str, dict]]) -> list[tuple]:
    header = ["run", "cases", "Dice", "Dice 95% CI", "IoU", "ES-Dice", "ES-IoU", "worst-group gap",
              "grouped by", "cases with no group"]
    rows = [[name, r["n_cases"], _num(r["mean"]["dice"]), _ci((r.get("overall_ci95") or {}).get("dice")),
             _num(r["mean"]["iou"]), _with_ci(r, "es_dice"), _with_ci(r, "es_iou"),
             _with_ci(r, "worst_group_gap"), r.get("group_by") or "-", r.get("missing_group", "-")]
            for name, r in runs]
    warning = different_cases_warning(runs)
    return [("h2", "Overview"), ("table", (header, rows)), *([("p", "W" + warning[1:] + ".")] if warning else [])]


def different_cases_warning(runs: list[tuple[str, dict]]) -> str | None:
    """A warning when the runs were not scored on the same cases (another split, or another dataset):
    their means side by side would rank the case sets, not the runs; None when they were."""
    case_sets = [frozenset(case["case"] for case in r["cases"]) for _, r in runs]
    if len(set(case_sets)) <= 1:
        return None
    scored = "; ".join(f"{name}: {len(cases)} case(s)" + (f" of split {r['split']!r}" if r.get("split") else "")
                       for (name, r), cases in zip(runs, case_sets))
    shared = len(frozenset.intersection(*case_sets))
    return (f"warning: these runs were scored on different cases ({scored}; {shared} in all of them), so their "
            "means are not comparable: evaluate every run on the same split of the same data")


def _group_names(runs: list[tuple[str, dict]]) -> list[str]:
    """Every run's groups in the order ``evaluate`` gives one run's: bins in their order, then the others
    (``metrics.group_order``). Taken run by run, a group the first run lacks (a site whose cases gained a
    value since) came last, after "site10", and the bars of the runs stood in different orders."""
    from fewsam.metrics import group_order

    names = list(dict.fromkeys(g for _, r in runs for g in r.get("groups", {})))
    bins = list(dict.fromkeys(b for _, r in runs for b in (r.get("bins") or []) if isinstance(b, str)))
    return [b for b in bins if b in names] + group_order(g for g in names if g not in bins)


def _group_blocks(runs: list[tuple[str, dict]], out: Path) -> list[tuple]:
    groups = _group_names(runs)
    if not groups:
        return [("p", "These evaluations have no groups: run `fewsam evaluate --group-by COLUMN`.")]
    by = ", ".join(dict.fromkeys(str(r["group_by"]) for _, r in runs if r.get("group_by")))
    png = _bar_plot(runs, groups, None, out / "group_dice.png", f"Dice by {by}")
    blocks: list[tuple] = [("h2", f"Dice by group ({by})"),
                           ("img", (png, "Mean Dice per group with 95% bootstrap CIs; n = cases per group."))]
    for name, r in runs:
        header = ["group", "n", "Dice", "Dice 95% CI", "IoU", "IoU 95% CI", "HD95", "ASD"]
        shown = r.get("distance_unit") != "mixed"
        rows = [[g, v["n"], _num(v["mean"]["dice"]), _ci(v["ci95"]["dice"]), _num(v["mean"]["iou"]),
                 _ci(v["ci95"]["iou"]), _distance(v, "hd95", shown), _distance(v, "asd", shown)]
                for g, v in r.get("groups", {}).items()]
        rows.append(["all cases", r["n_cases"], _num(r["mean"]["dice"]), _ci((r.get("overall_ci95") or {}).get("dice")),
                     _num(r["mean"]["iou"]), _ci((r.get("overall_ci95") or {}).get("iou")),
                     _distance(r, "hd95", shown), _distance(r, "asd", shown)])
        blocks += [("h3", f"{name}: groups (distances in {distance_units(r.get('distance_unit'))})"),
                   ("table", (header, rows))]
        if any("n/a)" in cell for row in rows for cell in row[-2:]):
            blocks.append(("p", DISTANCES_LEFT_OUT))
        note = distance_unit_note(r)
        if note:
            blocks.append(("p", note))
    if len(runs) > 1:
        blocks += _difference_table(runs, groups)
    return blocks


DISTANCE_UNITS = {"mm": "mm", "pixel": "pixels", "mixed": "mm or pixels (cases with and without spacing)"}


def distance_unit_note(result: dict) -> str | None:
    """What a run's HD95 and ASD leave out for their unit: the cases in pixels, where its split also holds
    cases in mm (``metrics.summarise``), or every distance of an evaluation whose means average mm with
    pixels ("mixed"), which has no unit to show them in; None where every case is in one unit."""
    if result.get("distance_unit") == "mixed":
        return ("HD95 and ASD are not shown: this evaluation averages cases in mm with cases in pixels (files "
                "without voxel spacing); evaluate it again with `fewsam evaluate` to have them over the cases in mm.")
    left_out = result.get("distance_cases_left_out") or 0
    if not left_out:
        return None
    return (f"HD95 and ASD are over the cases in {distance_units(result.get('distance_unit'))}: {left_out} of the "
            f"{result['n_cases']} cases, whose files give no voxel spacing, are measured in pixels and left out of "
            "them (each group's n counts them; Dice and IoU are over every case).")


def distance_units(unit: str | None) -> str:
    """How HD95 and ASD are measured, as the report says it: an evaluation records "mm", "pixel" or
    "mixed", which an appended "s" turned into "mms" and "mixeds"."""
    return DISTANCE_UNITS.get(unit or "pixel", str(unit))


def _difference_table(runs: list[tuple[str, dict]], groups: list[str]) -> list[tuple]:
    """Each run's group Dice, ES-Dice and gap minus the first run's, for the runs grouped as the first
    one is: a run grouped by another column (or other bins) has groups that merely share names ("1"
    of site and "1" of scanner), and an ES-Dice over other groups, so its differences would measure
    the grouping, not the run. Those runs are named below the table instead."""
    base_name, base = runs[0]
    alike = [(name, r) for name, r in runs[1:] if _grouping(r) == _grouping(base)]
    others = [f"{name} (grouped by {r.get('group_by') or 'nothing'})" for name, r in runs[1:] if (name, r) not in alike]
    blocks: list[tuple] = [("h3", f"Change in Dice against {base_name}")]
    if alike:
        header = ["group", *[f"{name} - {base_name}" for name, _ in alike]]
        rows = []
        for g in (g for g in groups if any(g in r.get("groups", {}) for _, r in [(base_name, base), *alike])):
            a = base.get("groups", {}).get(g, {}).get("mean", {}).get("dice")
            rows.append([g, *[_diff(r.get("groups", {}).get(g, {}).get("mean", {}).get("dice"), a) for _, r in alike]])
        for key, label in (("es_dice", "ES-Dice"), ("worst_group_gap", "worst-group gap")):
            rows.append([label, *[_diff(r.get(key), base.get(key)) for _, r in alike]])
        blocks.append(("table", (header, rows)))
    if others:
        blocks.append(("p", f"Not compared with {base_name}, grouped by {base.get('group_by') or 'nothing'}: "
                            f"{', '.join(others)}, whose groups are not {base_name}'s."))
    return blocks


def _grouping(result: dict) -> tuple:
    """What an evaluation's groups are: the column and its bins."""
    return result.get("group_by"), result.get("bins")


def _diff(x: float | None, y: float | None) -> str:
    return "n/a" if x is None or y is None else f"{round(x - y, 4) + 0.0:+.4f}"


def _class_blocks(runs: list[tuple[str, dict]], out: Path) -> list[tuple]:
    blocks: list[tuple] = [("h2", "Per class")]
    for name, r in runs:
        classes = list(r["per_class"])
        groups = list(r.get("groups", {}))
        header = ["group", *[f"{c} Dice" for c in classes]]
        rows = [[g, *[_num(r["groups"][g]["per_class"].get(c, {}).get("dice")) for c in classes]] for g in groups]
        rows.append(["all cases", *[_num(r["per_class"][c]["dice"]) for c in classes]])
        equity = r.get("per_class_equity") or {}
        if equity:
            rows.append(["ES-Dice", *[_num(equity.get(c, {}).get("es_dice")) for c in classes]])
            rows.append(["worst-group gap", *[_num(equity.get(c, {}).get("worst_group_gap")) for c in classes]])
        blocks += [("h3", name), ("table", (header, rows))]
    classes = _class_names(runs)
    if len(classes) > 1 and _group_names(runs):
        for c, file_name in zip(classes, _plot_file_names(classes)):
            png = _bar_plot(runs, _group_names(runs), c, out / file_name, f"{c} Dice by group")
            blocks.append(("img", (png, f"{c}: mean Dice per group (no CIs per class).")))
    return blocks


def _class_names(runs: list[tuple[str, dict]]) -> list[str]:
    """Every class any run scored, in the order the runs name them: runs on datasets with other
    classes each get their classes plotted (the first run's alone left the others' out unseen)."""
    return list(dict.fromkeys(c for _, r in runs for c in r["per_class"]))


def _plot_file_names(classes: list[str]) -> list[str]:
    """``group_dice_<class>.png`` per class, with characters a file name may not hold replaced; two
    classes that map to one name ("a b", "a_b") get numbered files, so neither plot overwrites the other."""
    safe = ["".join(ch if ch.isalnum() else "_" for ch in c) for c in classes]
    names: list[str] = []
    for i, s in enumerate(safe):
        clash = safe.count(s) > 1
        names.append(f"group_dice_{s}_{i + 1}.png" if clash else f"group_dice_{s}.png")
    return names


def _test_blocks(runs: list[tuple[str, dict]]) -> list[tuple]:
    if len(runs) < 2:
        return []
    from fewsam.compare import no_difference_note, paired_scores, subject_pairs
    from fewsam.errors import DataError
    from fewsam.metrics import wilcoxon_compare

    base_name, base = runs[0]
    header = ["comparison", "paired subjects", "median Dice difference", "W", "p"]
    rows = []
    for name, r in runs[1:]:
        try:
            check_pairable(r, base, name, base_name)
            t = wilcoxon_compare(*subject_pairs(r, *paired_scores(r, base)[:2]))
            pairs = f"{t['n']}{no_difference_note(t)}"  # the pairs the test ranked are fewer when some tie
            rows.append([f"{name} vs {base_name}", pairs, f"{round(t['median_diff'], 4) + 0.0:+.4f}", f"{t['statistic']:.1f}", f"{t['p']:.4g}"])
        except DataError as err:
            rows.append([f"{name} vs {base_name}", "-", "-", "-", str(err)])
    text = ("Paired Wilcoxon signed-rank test on per-case mean Dice (cases both runs scored), the cases of "
            "one subject averaged into one pair. "
            "With several comparisons, multiply p by their number (Bonferroni; `fewsam compare --n-comparisons`).")
    return [("h2", "Are the runs different?"), ("p", text), ("table", (header, rows))]


def check_pairable(run: dict, base: dict, name: str, base_name: str) -> None:
    """Refuse, as ``fewsam compare`` refuses, to test two runs whose cases were scored on other classes, other
    labels (same case ids of two datasets, or labels corrected in between), another ``--both-empty`` rule or
    other slices (``--annotated-slices-only``): the report printed a p value for pairs compare would not make."""
    from fewsam.compare import (check_same_classes, check_same_empty_convention, check_same_labels,
                                check_same_slices_scored)

    for check in (check_same_classes, check_same_labels, check_same_empty_convention, check_same_slices_scored):
        check(run, base, name, base_name)


def _bar_plot(runs: list[tuple[str, dict]], groups: list[str], cls: str | None, path: Path, title: str) -> Path:
    """Grouped bars: one bar per run within each group; CIs as error bars for the mean Dice.

    Group, class and run names are the user's text: shown as written, never parsed as math ("$50k"
    in an income group, or a "$" in a class name, ended the report in matplotlib's TeX parser)."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        return _draw_bar_plot(runs, groups, cls, path, title)


def _draw_bar_plot(runs: list[tuple[str, dict]], groups: list[str], cls: str | None, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(11.0, max(5.0, 0.8 * len(groups) * len(runs) + 2.5)), 3.8), dpi=110)
    ax = fig.subplots()
    width = 0.8 / len(runs)
    for i, (name, r) in enumerate(runs):
        means, lows, highs = [], [], []
        for g in groups:
            v = r.get("groups", {}).get(g)
            m = None if v is None else (v["mean"]["dice"] if cls is None else v["per_class"].get(cls, {}).get("dice"))
            ci = None if v is None or cls is not None else v["ci95"]["dice"]
            means.append(float("nan") if m is None else m)
            lows.append(0.0 if ci is None or m is None else max(0.0, m - ci[0]))
            highs.append(0.0 if ci is None or m is None else max(0.0, ci[1] - m))
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(groups))]
        ax.bar(xs, means, width, yerr=[lows, highs] if cls is None else None, capsize=3, label=name,
               color=[c / 255 for c in PALETTE[1 + i % (len(PALETTE) - 1)]])
    counts = {g: next((r["groups"][g]["n"] for _, r in runs if g in r.get("groups", {})), 0) for g in groups}
    ax.set_xticks(range(len(groups)), [f"{g}\n(n={counts[g]})" for g in groups])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(runs) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for kind, payload in blocks:
        if kind in ("h", "h2", "h3"):
            lines += [f"{'#' * {'h': 1, 'h2': 2, 'h3': 3}[kind]} {_text(_one_line(payload))}", ""]
        elif kind == "p":
            lines += [_text(payload), ""]
        elif kind == "img":
            path, caption = payload
            lines += [f"![{_text(_one_line(caption))}]({path.name})", "", f"*{_text(_one_line(caption))}*", ""]
        else:
            header, rows = payload
            lines += ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows] + [""]
    return "\n".join(lines)


def _cell(value: object) -> str:
    """A Markdown table cell: run labels, group values and class names are the user's text, and a
    "|" in one ("site A|B", --labels "a|b") split its cell in two, shifting the row's numbers under
    the wrong columns; a line break (a quoted CSV cell) ended the table."""
    return _text(_one_line(str(value))).replace("|", "\\|")


MARKUP = str.maketrans({"<": "\\<", "&": "\\&"})


def _text(text: str) -> str:
    """The user's text (group values, class and run names, the title) as Markdown shows it: a "<" opens an
    HTML tag there, so a group "<unknown>" vanished from its row where report.md is rendered (GitHub,
    editors' previews), and "<b>x</b>" turned bold; an "&" opens an entity ("&amp;" shown as "&")."""
    return text.translate(MARKUP)


def _one_line(text: str) -> str:
    """A heading or cell on one line: Markdown ends either at a line break."""
    return " ".join(text.splitlines())


def _html(blocks: list[tuple], title: str) -> str:
    import base64
    import html

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eee}</style></head><body>"]
    for kind, payload in blocks:
        if kind in ("h", "h2", "h3"):
            tag = {"h": "h1", "h2": "h2", "h3": "h3"}[kind]
            parts.append(f"<{tag}>{html.escape(payload)}</{tag}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(payload)}</p>")
        elif kind == "img":
            path, caption = payload
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        else:
            header, rows = payload
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
    return "\n".join(parts + ["</body></html>"])
