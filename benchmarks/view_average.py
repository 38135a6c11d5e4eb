"""Average a fitted few-shot / FewMatch run's class probabilities over dihedral views: the study
behind test-time mirroring (which views to average, if any).

For VIEWS (``fewsam.embedded.dihedral`` indices: 0 as stored, 1-3 rotations, 4-7 transposes; the
mirrors are 7 (left-right), 5 (up-down) and 2 (both)), prints the mean per-volume Dice (mean over
the foreground classes, after the run's own post-processing) of each view alone and of every
average over a subset of VIEWS that holds the first view, with the number of volumes whose last
class (ACDC: LV) scores below 0.3. Slices of one volume stored as cases of their own
(``..._slice_K``, ACDC's training patients) are scored together as their volume.
Usage: .venv/bin/python benchmarks/view_average.py RUN DATA SPLIT VIEWS CACHE   (VIEWS e.g. 0,7,5,2)
"""

import itertools
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from fewsam.data import open_dataset
from fewsam.embedded import CaseSlices, undo_dihedral
from fewsam.labels import index_lut
from fewsam.methods.fewshot import slice_probabilities
from fewsam.metrics import dice_per_class
from fewsam.models.precision import resolve_precision
from fewsam.predict import case_predictor
from fewsam.runs import check_run


def averages(views: list[int]) -> list[tuple[int, ...]]:
    """Each view alone, then every subset of two or more views that holds the first view."""
    alone = [(i,) for i in range(len(views))]
    return alone + [s for r in range(2, len(views) + 1) for s in itertools.combinations(range(len(views)), r)
                    if 0 in s]


def main(run: Path, data: str, split: str, views: list[int], cache_root: str) -> None:
    dataset = open_dataset(data)
    predictor, cache = case_predictor(run, check_run(run), dataset, False, cache_root,
                                      resolve_precision("auto", "cpu"), "cpu")
    lut, foreground = index_lut(predictor.values), predictor.values[1:]
    subsets = averages(views)
    predicted: dict[str, list[list[np.ndarray]]] = defaultdict(lambda: [[] for _ in subsets])
    truth: dict[str, list[np.ndarray]] = defaultdict(list)
    for case_id in dataset.split(split):
        case = dataset.load(case_id)
        slices = CaseSlices(case, cache)
        probs = [np.stack([undo_dihedral(p, v) for p in
                           slice_probabilities(predictor.decoder, predictor.tokens, slices.view(v))], axis=1)
                 for v in views]  # each (Q, D, H, W) in the stored orientation
        volume = re.sub(r"_slice_\d+$", "", case_id)
        for j, subset in enumerate(subsets):
            labels = lut[np.mean([probs[i] for i in subset], axis=0).argmax(axis=0)].astype(np.uint8)
            predicted[volume][j].append(predictor.postprocess(labels).ravel())
        truth[volume].append(np.asarray(case.label).ravel())
    scores = np.array([[[dice_per_class(np.concatenate(p), np.concatenate(truth[volume]), foreground)[v]
                         for v in foreground] for p in per_subset] for volume, per_subset in predicted.items()])
    for j, subset in enumerate(subsets):  # scores: (volumes, subsets, classes)
        name = "+".join(str(views[i]) for i in subset)
        print(f"{name:10s} mean Dice {scores[:, j].mean():.4f}  last class < 0.3 in "
              f"{int((scores[:, j, -1] < 0.3).sum())} of {len(scores)} volumes", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], [int(v) for v in sys.argv[4].split(",")], sys.argv[5])
