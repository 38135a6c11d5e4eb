"""Average a fitted few-shot / FewMatch run's class probabilities over chosen dihedral views, per
validation volume: the study behind test-time mirroring (which views to average, if any).

Prints per volume the Dice of the stored view alone, of the average, and of each view alone
(each after the run's own post-processing), then the means. Views are ``fewsam.embedded.dihedral``
indices: 0 as stored, 1-3 rotations, 4-7 transposes; the mirrors are 7 (left-right), 5 (up-down)
and 2 (both).
Usage: .venv/bin/python benchmarks/view_average.py RUN DATA SPLIT VIEWS CACHE   (VIEWS e.g. 0,7,5,2)
"""

import sys
from pathlib import Path

import numpy as np

from fewsam.data import open_dataset
from fewsam.embedded import CaseSlices, undo_dihedral
from fewsam.labels import index_lut
from fewsam.methods.fewshot import slice_probabilities
from fewsam.metrics import volume_score
from fewsam.models.precision import resolve_precision
from fewsam.predict import case_predictor
from fewsam.runs import check_run


def main(run: Path, data: str, split: str, views: list[int], cache_root: str) -> None:
    dataset = open_dataset(data)
    predictor, cache = case_predictor(run, check_run(run), dataset, False, cache_root,
                                      resolve_precision("auto", "cpu"), "cpu")
    lut, foreground = index_lut(predictor.values), predictor.values[1:]
    rows = []
    for case_id in dataset.split(split):
        case = dataset.load(case_id)
        slices = CaseSlices(case, cache)
        probs = [np.stack([undo_dihedral(p, v) for p in
                           slice_probabilities(predictor.decoder, predictor.tokens, slices.view(v))], axis=1)
                 for v in views]  # each (Q, D, H, W) in the stored orientation

        def score(p: np.ndarray) -> float:
            return volume_score(predictor.postprocess(lut[p.argmax(axis=0)].astype(np.uint8)), case.label, foreground)

        row = [score(probs[0]), score(np.mean(probs, axis=0))] + [score(p) for p in probs]
        rows.append(row)
        print(case_id, " ".join(f"{x:.4f}" for x in row), flush=True)
    mean = np.mean(rows, axis=0)
    print(f"mean: first view {mean[0]:.4f}, average of views {views} {mean[1]:.4f}; each view alone "
          + " ".join(f"{v}:{m:.4f}" for v, m in zip(views, mean[2:])))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], [int(v) for v in sys.argv[4].split(",")], sys.argv[5])
