"""A fitted few-shot (or FewMatch) run's validation Dice with other inference tokens, the decoder's
weights unchanged: the stored prompt bank (k-means centres of the shot prototypes, seeded by the
fit's seed), the plain mean of the shots (what the training tokens, means of random halves of the
shots, average to), and k-means with other seeds. Single view, before and after the largest
component; it tells whether the inference tokens carry a run's seed-to-seed spread.
Usage: .venv/bin/python benchmarks/inference_tokens.py RUN CACHE [SPLIT]
"""

import sys
from pathlib import Path

import numpy as np
import torch

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.embedded import embed_cases
from fewsam.inference import postprocessing_choice
from fewsam.methods.fewshot import BANK, FewShotPredictor, bank_tokens, predict_volumes
from fewsam.models.acceleration import acceleration_of_run
from fewsam.models.precision import resolve_precision
from fewsam.predict import load_run_model
from fewsam.runs import check_run


def token_variants(shots: list[np.ndarray], stored: torch.Tensor, tokens_per_class: int) -> dict[str, torch.Tensor]:
    means = np.stack([np.repeat(s.mean(axis=0, keepdims=True), tokens_per_class, axis=0) for s in shots])
    variants = {"stored (k-means)": stored, "mean of the shots": torch.from_numpy(means.astype(np.float32))}
    variants.update({f"k-means, seed {seed}": bank_tokens(shots, tokens_per_class, seed) for seed in (1, 2, 3)})
    return variants


def main(run: Path, cache_root: str, split: str | None = None) -> None:
    config = check_run(run)
    dataset = open_dataset(config["data"])
    model = load_run_model(config, "cpu")
    predictor = FewShotPredictor(run, model, "cpu", acceleration_of_run(config, "cpu"))
    cache = EmbeddingCache(cache_root, model, resolve_precision("auto", "cpu"))
    cases = embed_cases(dataset, dataset.split(split or config["val_split"]), cache, "cpu", show_progress=False)
    bank = torch.load(run / BANK, weights_only=True)
    shots = [s.numpy() for s in bank["shots"]]
    print(f"{run}: shots per class {[len(s) for s in shots]}")
    for name, tokens in token_variants(shots, bank["tokens"], bank["tokens"].shape[1]).items():
        with torch.no_grad():
            volumes = predict_volumes(predictor.decoder, tokens, cases, predictor.values)
        choice = postprocessing_choice(volumes, predictor.values, None)
        print(f"{name:20s} raw {choice['val_dice_raw']:.4f}  largest component "
              f"{choice['val_dice_largest_component']:.4f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
