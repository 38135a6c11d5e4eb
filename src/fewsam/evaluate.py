"""``fewsam evaluate``: a prediction folder + the data folder -> the evaluation JSON contract.

Predictions are paired with cases by relative path, so any tool's output laid out that way can
be evaluated. Metrics are per volume (3D) as in the papers; distances are in mm when the data
knows its spacing and in pixels otherwise, and the JSON says which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewsam.data import open_dataset, read_prediction
from fewsam.errors import DataError
from fewsam.metrics import case_metrics, group_summary, summarise
from fewsam.progress import progress_bar


def evaluate(
    pred: str | Path,
    data: str | Path,
    split: str | None = None,
    group_by: str | None = None,
    alpha: float = 1.0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Per-case, per-class and mean Dice/IoU/HD95/ASD (and group metrics with ``group_by``)."""
    pred = Path(pred)
    if not pred.is_dir():
        raise DataError(f"prediction folder {pred} does not exist; run `fewsam predict` first")
    dataset = open_dataset(data)
    names = dataset.class_map.names
    records, units = [], set()
    case_ids = dataset.split(split or "val")
    with progress_bar(show_progress) as bar:
        job = bar.add_task("evaluate", total=len(case_ids))
        for case_id in case_ids:
            case = dataset.load(case_id)
            if case.label is None:
                raise DataError(f"{case_id} has no label to evaluate against")
            predicted = read_prediction(case, pred)
            if predicted.shape != case.label.shape:
                raise DataError(f"{case_id}: prediction shape {predicted.shape} != label shape {case.label.shape}")
            per_class = case_metrics(predicted, case.label, list(names), case.spacing)
            units.add("mm" if case.spacing else "pixel")
            records.append({
                "case": case_id,
                "per_class": {names[k]: v for k, v in per_class.items()},
                "group": _group_value(case.attributes, group_by),
            })
            bar.update(job, advance=1)
    result = summarise(records)
    if group_by:
        result.update(group_summary(records, alpha=alpha))
        result["group_by"] = group_by
    result["distance_unit"] = units.pop() if len(units) == 1 else "mixed"
    result["split"] = split or "val"
    return result


def _group_value(attributes: dict[str, Any], column: str | None) -> str | None:
    if not column:
        return None
    value = attributes.get(column)
    return None if value is None or value == "" else str(value)
