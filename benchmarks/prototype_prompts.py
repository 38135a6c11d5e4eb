"""Could the few-shot prototype decoder replace SAM's boxes as SAM-Match's refiner? Offline.

For a finished SAM-Match run (its unlabelled pool and best student) and a finished few-shot run
(its decoder and labelled prototype bank, same data and labelled budget), per unlabelled slice
and class the student's confident region's mean embedding becomes the class token (the few-shot
formulation with the student's regions as the "annotation"). Pooled Dice against the pool's
ground truth, for: the student's argmax; the decoder with the labelled prototypes only; with the
student's regions ("self"); with their average ("blend"). Classes the student is not confident on
keep the labelled prototypes. Results: docs/results.md, section 2.8 "Tried, not adopted: prototype
prompts for pseudo-labels".
Usage: .venv/bin/python benchmarks/prototype_prompts.py SAMATCH_RUN FEWSHOT_RUN [--device cpu]
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from fewsam.embedded import frame_label
from fewsam.inference import labels_from_logits
from fewsam.methods.fewshot import FewShotPredictor
from fewsam.methods.samatch import pooled_dice, prompt_regions
from fewsam.models.registry import load_model
from fewsam.runs import read_config
from fewsam.prompts import masked_average_pool, region_weights
from pseudo_label_rules import load_pool


def region_tokens(probs: torch.Tensor, slice_, threshold: float, values: list[int]) -> dict[int, torch.Tensor]:
    """{class index: (256,) mean embedding of the student's largest confident region}."""
    label = np.zeros(probs.shape[1:], np.uint8)
    regions = prompt_regions(probs, threshold, "confident")
    for k, mask in regions:
        label[mask] = k
    weights = region_weights(frame_label(label, slice_.info), list(range(len(values))), slice_.embedding.shape[-1])
    protos = masked_average_pool(slice_.embedding, weights)
    return {k: torch.from_numpy(protos[k]) for k, _ in regions}


def main(run: Path, fewshot_run: Path, device: str) -> None:
    cfg, data, probs, sam, slices, values = load_pool(run, device)
    # a model of its own: `sam` holds SAM-Match's stage-1 prompt encoder, whose trained no-mask
    # embedding the prototype decoder would otherwise add to every embedding it reads
    fewshot_config = read_config(fewshot_run)
    fresh = load_model(fewshot_config["model"], fewshot_config.get("checkpoint"), device=device)
    fewshot = FewShotPredictor(fewshot_run, fresh, device)
    bank = fewshot.tokens  # (Q, K, 256)
    preds: dict[str, list[np.ndarray]] = {"student": [], "bank": [], "self": [], "blend": []}
    for p, s in zip(probs, slices):
        own = region_tokens(p, s, cfg.threshold, values)
        tokens = {"bank": bank, "self": bank.clone(), "blend": bank.clone()}
        for k, t in own.items():
            tokens["self"][k] = t
            tokens["blend"][k] = 0.5 * (bank[k] + t)
        emb = torch.from_numpy(s.embedding.astype(np.float32))[None].to(device)
        preds["student"].append(p.argmax(dim=0).numpy().astype(np.uint8))
        with torch.no_grad():
            for name, tok in tokens.items():
                logits = fewshot.decoder(emb, tok.to(device))[0]
                preds[name].append(labels_from_logits(logits, s.info, list(range(len(values)))).astype(np.uint8))
    for name, labels in preds.items():
        dice = pooled_dice(labels, data.originals, len(values))
        print(f"{name:8s} " + " ".join(f"{dice[str(k)]:.3f}" for k in range(1, len(values))) + f"  mean {dice['mean']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("fewshot_run", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    main(args.run, args.fewshot_run, args.device)
