"""``fewsam compare``: is run A better than run B on the same cases? (paired Wilcoxon signed-rank)

Each run is an evaluation JSON written by ``fewsam evaluate --json``. A case's score is the mean
over classes of its per-class metric, as the papers compare methods on per-case mean Dice; a class
distance only one run has (HD95 of an empty prediction) is left out of both (``paired_scores``). With
``n_comparisons`` K the p value is also Bonferroni-corrected (x K). Cases of one subject (the ED and
ES frames of an ACDC patient) are averaged into one pair (``subject_pairs``): the test assumes
independent pairs, and two frames of one heart are not. HD95 and ASD pair cases in one unit: over the
mm cases where the evaluations hold cases with and without voxel spacing (``distance_cases``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fewsam.config import argument_name
from fewsam.config import checked_arguments
from fewsam.errors import DataError
from fewsam.metrics import (CI_METRICS, DISTANCE_METRICS, DISTANCE_UNITS, METRICS, summary_distance_unit,
                            wilcoxon_compare)
from fewsam.runs import edited_text


SUMMARY_KEYS = ("n_cases", "mean", "per_class")  # what a report reads beside the per-case records


def read_evaluation(path: str | Path, summary: bool = False) -> dict[str, Any]:
    """An evaluation JSON, checked for the per-case records a comparison needs (and with ``summary``
    the overall scores a report shows), so that a hand-edited or foreign JSON is named in one line
    instead of failing half-way through a comparison or a report."""
    path = Path(path)
    try:
        result = json.loads(edited_text(path))  # a byte-order mark or UTF-16 of an editor that saved it is fine
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read evaluation {path}: {err}; write it with `fewsam evaluate --json`") from None
    if not isinstance(result, dict) or not isinstance(result.get("cases"), list):
        raise DataError(f"{path} has no per-case records; write it with `fewsam evaluate --json`")
    problem = _case_problem(result["cases"])
    if problem is None and summary:
        problem = _summary_problem(result)
    if problem is not None:
        raise DataError(f"{path} is not a fewsam evaluation ({problem}); write it with `fewsam evaluate --json`")
    return result


def _summary_problem(result: dict[str, Any]) -> str | None:
    """What keeps ``result`` from holding the scores a report shows: the overall and per-class means
    of every metric and, when grouped, each group's count, means and confidence intervals (a
    hand-edited group ended the report in a KeyError); None when it holds them."""
    problem = next((f"no {key!r}" for key in SUMMARY_KEYS if key not in result), None)
    if problem is None and not (_all_metrics(result["mean"]) and isinstance(result["per_class"], dict)
                                and all(_all_metrics(scores) for scores in result["per_class"].values())):
        problem = "its 'mean' or 'per_class' is not a table of scores"
    if problem is not None:
        return problem
    groups = result.get("groups", {})
    if not isinstance(groups, dict):
        return "its 'groups' is not a table of groups"
    bad = next((name for name, group in groups.items() if not _group_scores(group)), None)
    return None if bad is None else f"group {bad!r} lacks its n, mean, per_class or ci95"


def _all_metrics(scores: Any) -> bool:
    """Whether ``scores`` gives every metric (``METRICS``) as a number or None."""
    return isinstance(scores, dict) and all(m in scores and _is_score(scores[m]) for m in METRICS)


def _group_scores(group: Any) -> bool:
    """Whether ``group`` is one entry of an evaluation's "groups": {"n", "mean", "per_class", "ci95"}."""
    if not isinstance(group, dict) or not isinstance(group.get("ci95"), dict):
        return False
    intervals = all(m in group["ci95"] and (group["ci95"][m] is None or _is_interval(group["ci95"][m]))
                    for m in CI_METRICS)
    n = group.get("n")
    return (intervals and isinstance(n, int) and not isinstance(n, bool) and _all_metrics(group.get("mean"))
            and _scores_by_class(group.get("per_class")))


def _is_score(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_interval(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_score(v) and v is not None for v in value)


def _case_problem(cases: list[Any]) -> str | None:
    """What keeps ``cases`` from being per-case records ({"case": id, "per_class": {class: {metric:
    number or null}}}), each case once, naming the first bad one; None when they are. A case twice
    (evaluations merged by hand) would be paired by one of its records, the other dropped unseen."""
    seen: set[str] = set()
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("case"), str):
            return f"record {i} of 'cases' names no case"
        if not _scores_by_class(case.get("per_class")):
            return f"the 'per_class' of case {case['case']!r} is not a table of scores"
        if (wrong := _score_out_of_range(case)) is not None:
            return wrong
        if case["case"] in seen:
            return f"case {case['case']!r} has two records"
        seen.add(case["case"])
    return None


def _score_out_of_range(case: dict[str, Any]) -> str | None:
    """A score no evaluation gives, named: Dice and IoU are 0-1 and distances finite and not negative (an
    empty case's is null). A Dice of 75 (a percentage, from another tool's table) or NaN was averaged and
    tested as it stood: a mean Dice of 1.54 and a p-value ranking the scales, not the runs."""
    for name, scores in case["per_class"].items():
        for metric, value in scores.items():
            if value is None or metric not in METRICS:
                continue
            top = 1.0 if metric in ("dice", "iou") else math.inf
            if not (math.isfinite(value) and 0 <= value <= top):
                scale = "0-1" if top == 1.0 else "a finite distance of 0 or more"
                return f"case {case['case']!r} has {metric} {value} for class {name!r}, not {scale}"
    return None


def _scores_by_class(per_class: Any) -> bool:
    """Whether ``per_class`` maps class names to {metric: number or None}."""
    return isinstance(per_class, dict) and all(
        isinstance(scores, dict) and all(_is_score(v) for v in scores.values()) for scores in per_class.values())


def per_case_scores(result: dict[str, Any], metric: str = "dice") -> dict[str, float]:
    """case id -> mean over classes of ``metric``; cases with no value at all are left out."""
    if metric not in METRICS:
        raise DataError(f"{argument_name('metric')} must be one of {', '.join(METRICS)}, not {metric!r}")
    scores = {}
    for case in result["cases"]:
        values = list(_values(case["per_class"], metric).values())
        if values:
            scores[case["case"]] = sum(values) / len(values)
    return scores


# why a shared case has no value of the metric, and what to do, for Dice / IoU (False) and distances (True):
# Dice and IoU are missing only where --both-empty skip left out every class of the case
UNSCORED_WHY = {False: "every class absent from both its label and its prediction, left out by --both-empty skip",
                True: "an empty prediction or label"}
UNSCORED_ADVICE = {False: "evaluate both runs with --both-empty perfect, or on cases that hold the classes",
                   True: "compare them on dice or iou"}


@checked_arguments
def compare_runs(a: str | Path, b: str | Path, metric: str = "dice", n_comparisons: int = 1) -> dict[str, Any]:
    """Wilcoxon signed-rank of per-case ``metric`` of A vs B, on the cases both runs scored.

    Cases left out are counted apart: ``only_in_a``/``only_in_b``, missing from the other
    evaluation, and ``unscored_a``/``unscored_b``, in both but without a value of ``metric`` in
    that run (HD95 and ASD of an empty prediction or label), which a reader must not take for
    cases the run was never evaluated on."""
    if n_comparisons < 1:
        raise DataError(f"--n-comparisons must be >= 1, got {n_comparisons}")
    refuse_one_file_twice(a, b)
    eval_a, eval_b = read_evaluation(a), read_evaluation(b)
    check_same_classes(eval_a, eval_b, a, b)
    check_same_labels(eval_a, eval_b, a, b)
    check_same_empty_convention(eval_a, eval_b, a, b)
    check_same_slices_scored(eval_a, eval_b, a, b)
    unit, other_unit = distance_cases(eval_a, eval_b, metric, a, b)
    cases_a, cases_b = _case_ids(eval_a), _case_ids(eval_b)
    eval_a, eval_b = without_cases(eval_a, other_unit), without_cases(eval_b, other_unit)
    score_a, score_b = per_case_scores(eval_a, metric), per_case_scores(eval_b, metric)
    both = (cases_a & cases_b) - other_unit
    left_out = {"only_in_a": len(cases_a - cases_b), "only_in_b": len(cases_b - cases_a),
                "unscored_a": len(both - set(score_a)), "unscored_b": len(both - set(score_b))}
    paired_a, paired_b, one_sided = paired_scores(eval_a, eval_b, metric)
    common = sorted(paired_a)
    unscored = len(both) - len(common)
    if len(common) < 2 and unscored:
        raise DataError(f"the two runs share {len(common)} case(s) with {metric} scored and {unscored} case(s) "
                        f"without it ({UNSCORED_WHY[metric in DISTANCE_METRICS]}); a paired test needs at least 2 "
                        f"— {UNSCORED_ADVICE[metric in DISTANCE_METRICS]}")
    test = wilcoxon_compare(*subject_pairs(eval_a, paired_a, paired_b), n_comparisons)
    return {
        "a": str(a), "b": str(b), "metric": metric, "n_comparisons": n_comparisons, "n_cases": len(common),
        **({"distance_unit": unit, "other_unit_cases": len(other_unit)} if unit else {}),
        "mean_a": sum(paired_a[c] for c in common) / len(common),
        "mean_b": sum(paired_b[c] for c in common) / len(common),
        **left_out,
        "one_sided_values": one_sided,
        **test,
    }


def without_cases(evaluation: dict[str, Any], cases: set[str]) -> dict[str, Any]:
    """``evaluation`` with the records of ``cases`` left out."""
    if not cases:
        return evaluation
    return {**evaluation, "cases": [case for case in evaluation["cases"] if case["case"] not in cases]}


def refuse_one_file_twice(*paths: str | Path) -> None:
    """Two of ``paths`` naming one evaluation (a typo, or a shell glob that matched one file twice):
    a run would be tested against itself (every difference 0, p = 1) and shown as if two runs had been
    compared (compare, report)."""
    files = [Path(p) for p in paths if Path(p).is_file()]
    for i, first in enumerate(files):
        twice = next((other for other in files[i + 1:] if first.samefile(other)), None)
        if twice is not None:
            raise DataError(f"{first} and {twice} are one evaluation; give each run's own evaluation")


def paired_scores(eval_a: dict[str, Any], eval_b: dict[str, Any], metric: str = "dice"
                  ) -> tuple[dict[str, float], dict[str, float], int]:
    """(A's, B's) case id -> mean of ``metric`` over the classes both runs have a value for in that
    case, for the cases both scored; and how many class values only one run had in those cases, left
    out (a case without any shared value is not paired, and ``compare_runs`` counts it as unscored).

    HD95 and ASD have no value where a prediction is empty: averaged over its own classes, a run
    that left a structure out entirely had only its other classes averaged, and so beat a run that
    found the structure a little off (and the test called it better). Dice and IoU lack a value only
    where ``evaluate --both-empty skip`` left out a class that neither the prediction nor the label
    holds, a correct empty prediction: each run is averaged over its own classes (``per_case_scores``,
    as the evaluation's means count them), so a run that drew the structure there scores its Dice 0.
    Paired over the shared classes, that false positive was left out of both runs and went unseen."""
    if metric not in METRICS:
        raise DataError(f"{argument_name('metric')} must be one of {', '.join(METRICS)}, not {metric!r}")
    classes_b = {case["case"]: case["per_class"] for case in eval_b["cases"]}
    paired_a, paired_b, one_sided = {}, {}, 0
    for case in eval_a["cases"]:
        if case["case"] not in classes_b:
            continue
        values_a = _values(case["per_class"], metric)
        values_b = _values(classes_b[case["case"]], metric)
        if metric not in DISTANCE_METRICS:
            if values_a and values_b:  # fsum: the same scores listed in another class order tie exactly
                paired_a[case["case"]] = math.fsum(values_a.values()) / len(values_a)
                paired_b[case["case"]] = math.fsum(values_b.values()) / len(values_b)
            continue
        shared = [name for name in values_a if name in values_b]
        if shared:
            one_sided += len(values_a) + len(values_b) - 2 * len(shared)
            paired_a[case["case"]] = sum(values_a[n] for n in shared) / len(shared)
            paired_b[case["case"]] = sum(values_b[n] for n in shared) / len(shared)
    return paired_a, paired_b, one_sided


def subject_pairs(evaluation: dict[str, Any], paired_a: dict[str, float], paired_b: dict[str, float]
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """The paired case scores averaged per subject, as ``evaluation``'s records name it (a record
    without a subject is its own): the signed-rank test's pairs must be independent, and the p of
    two frames of one patient counted as two pairs would be too small."""
    # an empty or null subject is no subject (as the bootstrap reads it): "None" was one subject of every such case
    subject = {case["case"]: str(case.get("subject") or case["case"]) for case in evaluation["cases"]}
    by_subject: dict[str, list[str]] = {}
    for case_id in sorted(paired_a):
        by_subject.setdefault(subject.get(case_id, case_id), []).append(case_id)
    mean = lambda scores, ids: sum(scores[i] for i in ids) / len(ids)  # noqa: E731 - one-line helper
    return ({s: mean(paired_a, ids) for s, ids in by_subject.items()},
            {s: mean(paired_b, ids) for s, ids in by_subject.items()})


def _values(per_class: dict[str, Any], metric: str) -> dict[str, float]:
    """class -> value of ``metric``, classes without one (None, NaN) left out."""
    values = {name: scores.get(metric) for name, scores in per_class.items()}
    return {name: v for name, v in values.items() if v is not None and not math.isnan(v)}


def scored_classes(result: dict[str, Any]) -> list[str]:
    """The class names an evaluation's per-case records score, in order of first appearance."""
    return list(dict.fromkeys(name for case in result["cases"] for name in case["per_class"]))


def check_same_classes(eval_a: dict[str, Any], eval_b: dict[str, Any], a: str | Path, b: str | Path) -> None:
    """Refuse to pair evaluations of other classes: a case's score is its mean over classes, so cases
    that share an id in two datasets (case_001) would be compared as if they were one, with no word said."""
    classes_a, classes_b = scored_classes(eval_a), scored_classes(eval_b)
    if set(classes_a) != set(classes_b):
        raise DataError(f"{a} scores classes {', '.join(classes_a) or 'none'} but {b} scores "
                        f"{', '.join(classes_b) or 'none'}; compare evaluations of the same data")


def check_same_empty_convention(eval_a: dict[str, Any], eval_b: dict[str, Any], a: str | Path, b: str | Path
                                ) -> None:
    """Refuse to pair evaluations that score a class absent from both prediction and label differently
    (``evaluate --both-empty``; evaluations without the record counted it as "perfect"): one run's Dice 1
    against the other's left-out class would be tested as a difference of the runs."""
    rule_a, rule_b = eval_a.get("both_empty", "perfect"), eval_b.get("both_empty", "perfect")
    if rule_a != rule_b:
        raise DataError(f"{a} was evaluated with --both-empty {rule_a} but {b} with --both-empty {rule_b}; "
                        "evaluate both the same way")


def check_same_slices_scored(eval_a: dict[str, Any], eval_b: dict[str, Any], a: str | Path, b: str | Path) -> None:
    """Refuse to pair an evaluation of the annotated slices only (``evaluate --annotated-slices-only``) with
    one of whole volumes: the labels are the same, so ``check_same_labels`` passes, but the slices scored
    are not, and the difference would be tested as one of the runs."""
    sparse_a, sparse_b = (bool(e.get("annotated_slices_only")) for e in (eval_a, eval_b))
    if sparse_a != sparse_b:
        with_it, without = (a, b) if sparse_a else (b, a)
        raise DataError(f"{with_it} was evaluated with --annotated-slices-only but {without} without it; "
                        "evaluate both the same way")


def check_same_labels(eval_a: dict[str, Any], eval_b: dict[str, Any], a: str | Path, b: str | Path) -> None:
    """Refuse to pair a case scored against other labels in the two evaluations (``label_sha256`` of
    its records; evaluations written before it was recorded pass): two datasets that name their cases
    alike (phantom_000, case_001) or labels corrected in between would be tested as one set of cases."""
    labels_b = {case["case"]: case.get("label_sha256") for case in eval_b["cases"]}
    shared = [case for case in eval_a["cases"] if case["case"] in labels_b]
    differ = [case["case"] for case in shared
              if case.get("label_sha256") and labels_b[case["case"]] and case["label_sha256"] != labels_b[case["case"]]]
    if differ:
        raise DataError(f"{a} and {b} scored case {differ[0]!r} against different labels ({len(differ)} of the "
                        f"{len(shared)} cases they share): evaluations of different datasets, or labels changed in "
                        "between; compare evaluations of the same data")


def distance_cases(eval_a: dict[str, Any], eval_b: dict[str, Any], metric: str, a: str | Path, b: str | Path
                   ) -> tuple[str | None, set[str]]:
    """(the unit a comparison of ``metric`` is in, the shared cases it leaves out for being in another), as
    ``metrics.summarise`` summarises distances: over the mm cases where the shared cases hold both units.
    Refused where a shared case is in mm in one evaluation and in pixels in the other (a NIfTI dataset and
    a PNG export of it), or where an evaluation does not say which of its cases are in which unit: the
    test would rank the runs by their units. (None, nothing) for Dice and IoU, which have no unit."""
    if metric not in DISTANCE_METRICS:
        return None, set()
    units_a, units_b = case_distance_units(eval_a, metric, a), case_distance_units(eval_b, metric, b)
    shared = [case for case in units_a if case in units_b]
    differ = [case for case in shared if units_a[case] != units_b[case]]
    if differ:
        where = "" if len(differ) == len(shared) else (f" for {len(differ)} of the {len(shared)} cases they "
                                                       f"share (the first: {differ[0]})")
        raise DataError(f"{a} gives {metric} in {units_a[differ[0]]} and {b} in {units_b[differ[0]]} units{where}; "
                        "compare them on dice or iou, or evaluate both on data of the same spacing")
    unit = summary_distance_unit([{"distance_unit": units_a[case]} for case in shared])
    return unit, {case for case in shared if units_a[case] != unit}


def case_distance_units(evaluation: dict[str, Any], metric: str, path: str | Path) -> dict[str, str]:
    """case id -> the unit of its distances: its record's, else the evaluation's (pixels where it names
    none); refused for an evaluation of cases in both units whose records do not say theirs."""
    default = evaluation.get("distance_unit", "pixel")
    units = {case["case"]: case.get("distance_unit", default) for case in evaluation["cases"]}
    unknown = next((case for case, unit in units.items() if unit not in DISTANCE_UNITS), None)
    if unknown is not None:
        raise DataError(f"{path} gives {metric} in mm for some cases and in pixels for others without saying which "
                        f"(case {unknown!r} names no unit); compare on dice or iou, or evaluate it again with "
                        "`fewsam evaluate --json`, which records each case's unit")
    return units


def _case_ids(result: dict[str, Any]) -> set[str]:
    return {case["case"] for case in result["cases"]}


def no_difference_note(result: dict[str, Any]) -> str:
    """The pairs the signed-rank test dropped for having no difference (zero_method "wilcox"): the
    count beside them is the pairs compared, not the pairs ranked. Not said when every pair ties, as
    then no test ran (p = 1)."""
    tied = result.get("n_no_difference", 0)
    return f", {tied} with no difference left out by the test" if 0 < tied < result["n"] else ""


def describe(result: dict[str, Any]) -> str:
    """Two lines a reader can quote."""
    m = result["metric"]
    pairs = (f"{result['n']} paired cases" if result.get("n_cases", result["n"]) == result["n"]
             else f"{result['n']} paired subjects ({result['n_cases']} cases, averaged per subject)")
    pairs += no_difference_note(result)
    # each case's mean over its classes, averaged: evaluate's mean is over classes, which --both-empty skip can part
    lines = [f"{pairs}  mean of the cases' {m}: A {result['mean_a']:.4f}  B {result['mean_b']:.4f}  "
             f"median A-B {round(result['median_diff'], 4) + 0.0:+.4f}",
             f"Wilcoxon signed-rank W={result['statistic']:.1f}  p={result['p']:.4g}"
             + (f"  Bonferroni (x{result['n_comparisons']}) p={result['p_bonferroni']:.4g}"
                if result["n_comparisons"] > 1 else "")]
    if result["only_in_a"] or result["only_in_b"]:
        lines.append(f"left out: {result['only_in_a']} case(s) only in A, {result['only_in_b']} only in B")
    unscored_a, unscored_b = result.get("unscored_a", 0), result.get("unscored_b", 0)
    if unscored_a or unscored_b:
        lines.append(f"left out: {unscored_a} case(s) without a {m} value in A (an empty prediction or label), "
                     f"{unscored_b} in B")
    if result.get("other_unit_cases"):
        lines.append(f"left out: {result['other_unit_cases']} case(s) whose {m} is in pixels (their files give no "
                     f"voxel spacing); the test pairs the cases in {result['distance_unit']}")
    if result.get("one_sided_values"):
        lines.append(f"left out: {result['one_sided_values']} class value(s) of {m} that only one run had (the "
                     "other left that class empty); each case is averaged over the classes both runs scored")
    return "\n".join(lines)
