"""Validation Dice of several fitted few-shot (or FewMatch) runs and of the average of their class
probabilities (single view, each run with its own inference tokens): whether a seed ensemble of
decoders buys more than its training time (one fit per member).
Usage: .venv/bin/python benchmarks/seed_ensemble.py CACHE RUN RUN [RUN ...]
"""

import sys
from pathlib import Path

import numpy as np

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.embedded import embed_cases
from fewsam.inference import postprocessing_choice, stack_volume
from fewsam.labels import index_lut
from fewsam.methods.fewshot import FewShotPredictor, slice_probabilities
from fewsam.models.acceleration import acceleration_of_run
from fewsam.models.precision import resolve_precision
from fewsam.predict import load_run_model
from fewsam.runs import check_run


def main(cache_root: str, runs: list[Path]) -> None:
    configs = [check_run(run) for run in runs]
    dataset = open_dataset(configs[0]["data"])
    predictors = [FewShotPredictor(run, load_run_model(config, "cpu"), "cpu", acceleration_of_run(config, "cpu"))
                  for run, config in zip(runs, configs)]
    cache = EmbeddingCache(cache_root, load_run_model(configs[0], "cpu"), resolve_precision("auto", "cpu"))
    val_cases = embed_cases(dataset, dataset.split(configs[0]["val_split"]), cache, "cpu", show_progress=False)
    values = predictors[0].values
    lut = index_lut(values)
    members: list[list] = [[] for _ in predictors]
    ensemble = []
    for case, slices in val_cases:
        probabilities = [list(slice_probabilities(p.decoder, p.tokens, slices)) for p in predictors]
        for member, per_slice in zip(members, probabilities):
            member.append((case, stack_volume([lut[p.argmax(0)] for p in per_slice])))
        ensemble.append((case, stack_volume([lut[np.mean(ps, axis=0).argmax(0)] for ps in zip(*probabilities)])))
    for name, volumes in [*zip(map(str, runs), members), ("ensemble", ensemble)]:
        choice = postprocessing_choice(volumes, values, None)
        print(f"{name}: raw {choice['val_dice_raw']:.4f}  largest component {choice['val_dice_largest_component']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1], [Path(r) for r in sys.argv[2:]])
