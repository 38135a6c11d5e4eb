"""``fewsam compare``: is run A better than run B on the same cases? (paired Wilcoxon signed-rank)

Each run is an evaluation JSON written by ``fewsam evaluate --json``. A case's score is the mean
over classes of its per-class metric (missing values left out), as the papers compare methods
on per-case mean Dice. With ``n_comparisons`` K the p value is also Bonferroni-corrected (x K).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fewsam.errors import DataError
from fewsam.metrics import METRICS, wilcoxon_compare


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """An evaluation JSON, checked for the per-case records a comparison needs."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read evaluation {path}: {err}; write it with `fewsam evaluate --json`") from None
    if not isinstance(result, dict) or not isinstance(result.get("cases"), list):
        raise DataError(f"{path} has no per-case records; write it with `fewsam evaluate --json`")
    return result


def per_case_scores(result: dict[str, Any], metric: str = "dice") -> dict[str, float]:
    """case id -> mean over classes of ``metric``; cases with no value at all are left out."""
    if metric not in METRICS:
        raise DataError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    scores = {}
    for case in result["cases"]:
        values = [m.get(metric) for m in case["per_class"].values()]
        values = [v for v in values if v is not None and not math.isnan(v)]
        if values:
            scores[case["case"]] = sum(values) / len(values)
    return scores


def compare_runs(a: str | Path, b: str | Path, metric: str = "dice", n_comparisons: int = 1) -> dict[str, Any]:
    """Wilcoxon signed-rank of per-case ``metric`` of A vs B, on the cases both runs scored."""
    if n_comparisons < 1:
        raise DataError(f"--n-comparisons must be >= 1, got {n_comparisons}")
    score_a = per_case_scores(read_evaluation(a), metric)
    score_b = per_case_scores(read_evaluation(b), metric)
    test = wilcoxon_compare(score_a, score_b, n_comparisons)
    common = sorted(set(score_a) & set(score_b))
    return {
        "a": str(a), "b": str(b), "metric": metric, "n_comparisons": n_comparisons,
        "mean_a": sum(score_a[c] for c in common) / len(common),
        "mean_b": sum(score_b[c] for c in common) / len(common),
        "only_in_a": len(set(score_a) - set(score_b)), "only_in_b": len(set(score_b) - set(score_a)),
        **test,
    }


def describe(result: dict[str, Any]) -> str:
    """Two lines a reader can quote."""
    m = result["metric"]
    lines = [f"{result['n']} paired cases  mean {m}: A {result['mean_a']:.4f}  B {result['mean_b']:.4f}  "
             f"median A-B {round(result['median_diff'], 4) + 0.0:+.4f}",
             f"Wilcoxon signed-rank W={result['statistic']:.1f}  p={result['p']:.4g}"
             + (f"  Bonferroni (x{result['n_comparisons']}) p={result['p_bonferroni']:.4g}"
                if result["n_comparisons"] > 1 else "")]
    if result["only_in_a"] or result["only_in_b"]:
        lines.append(f"left out: {result['only_in_a']} case(s) only in A, {result['only_in_b']} only in B")
    return "\n".join(lines)
