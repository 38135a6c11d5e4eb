"""Per-volume Dice of slice predictions, for datasets stored as single slices (ACDC's training set).

ACDC's training slices are files of their own (``patientXXX_frameYY_slice_Z``); `fewsam evaluate`
scores each file, while the papers score volumes. This regroups a prediction folder's slices by
volume, scores each volume (Dice per class), and prints the mean per class and pathology group,
the Dice pooled over all slices, and the volumes whose last class (ACDC: LV) scores below 0.3.

For diagnosis only: `acdc_other_patients.list` holds every slice of 20 training patients that are
neither labelled nor in `val.list` (4 per pathology); checkpoints and settings are never chosen
on it.
Usage: .venv/bin/python benchmarks/volume_dice.py PRED DATA LIST [RING:INNER:OUTER]
The optional last argument applies fewsam's cavity rule (``--cavity-rule``) to each predicted slice
first, to see its effect on predictions made without it.
"""

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from fewsam.data import load_labelled_case, open_dataset, read_prediction
from fewsam.inference import CavityRule
from fewsam.metrics import dice_per_class


def volumes(pred: Path, data: Path, split: str, rule: str | None = None
            ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[int]]:
    """{volume id: (predicted labels, ground truth)} over the slices of ``split``, and the foreground values."""
    dataset = open_dataset(data)
    cavity = None if rule is None else CavityRule.parse(rule, dataset.class_map)
    pairs: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for case_id in dataset.split(split):
        case = load_labelled_case(dataset, case_id, "score")
        key = re.sub(r"_slice_\d+$", "", case_id)
        predicted = np.asarray(read_prediction(case, pred, dataset.class_map))
        predicted = predicted if cavity is None else cavity.apply(predicted.reshape(case.label.shape))
        pairs[key][0].append(predicted.ravel())
        pairs[key][1].append(np.asarray(case.label).ravel())
    foreground = dataset.class_map.labels
    return {k: (np.concatenate(p), np.concatenate(y)) for k, (p, y) in sorted(pairs.items())}, foreground


def main(pred: Path, data: Path, split: str, rule: str | None = None) -> None:
    vols, foreground = volumes(pred, data, split, rule)
    groups = {r["patient"]: r["group"] for r in csv.DictReader(open(data / "patient_info.csv"))}
    scores = {k: [dice_per_class(p, y, foreground)[v] for v in foreground] for k, (p, y) in vols.items()}
    by_group: dict[str, list[float]] = defaultdict(list)
    for key, row in scores.items():
        by_group[groups.get(key.split("_")[0], "?")].append(float(np.mean(row)))
        print(f"{key:22s} " + " ".join(f"{d:.3f}" for d in row))
    table = np.array(list(scores.values()))
    print("volumes", len(table), "mean per class", table.mean(axis=0).round(4).tolist(), "mean", round(float(table.mean()), 4))
    print("by group", {g: round(float(np.mean(v)), 4) for g, v in sorted(by_group.items())})
    pooled = dice_per_class(np.concatenate([p for p, _ in vols.values()]),
                            np.concatenate([y for _, y in vols.values()]), foreground)
    print("pooled over slices", {k: round(v, 4) for k, v in pooled.items()}, round(float(np.mean(list(pooled.values()))), 4))
    print("last class below 0.3:", [k for k, row in scores.items() if row[-1] < 0.3])


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: .venv/bin/python benchmarks/volume_dice.py PRED DATA LIST [RING:INNER:OUTER]")
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) == 5 else None)
