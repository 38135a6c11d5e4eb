"""Pseudo-label quality of a finished SAM-Match run under each composition rule, offline.

Rebuilds the run's unlabelled pool, runs its best student and its stage-1 SAM decoder (later
rounds are not applied) on it, composes SAM's per-class masks with every ``overlap`` x ``background``
rule, and prints pooled Dice against the pool's ground truth (the slices must be labelled, as
ACDC's are). Embeddings come from the run's cache (encoded on a miss). The measured tables are in
docs/results.md, section 2.5 "Pseudo-label quality: prompt rules and clicks".
Usage: .venv/bin/python benchmarks/pseudo_label_rules.py RUN [--device cpu]
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset, select_unlabelled
from fewsam.data.types import SliceRef
from fewsam.embedded import embed_refs
from fewsam.methods.samatch import SAM_DIR, PseudoLabeller, SamMatchConfig, pooled_dice, student_probs
from fewsam.methods.samatch.sam_decoder import SamDecoder
from fewsam.methods.student import StudentConfig, build_unet, load_slices
from fewsam.models.registry import load_model
from fewsam.runs import read_config
from fewsam.train import load_best


def load_pool(run: Path, device: str):
    """A finished run's unlabelled pool: (SamMatchConfig, slices with originals, best student's
    probabilities, SAM with the stage-1 decoder, embedded slices, label values)."""
    config = read_config(run)
    # a run whose config names no prompt_clicks prompted with boxes only; from_json drops keys
    # this fewsam no longer knows, so runs recorded by other versions load too
    cfg = SamMatchConfig.from_json({"prompt_clicks": "none", **config["samatch"]})
    scfg = StudentConfig.from_json(config["student"])
    dataset = open_dataset(config["data"])
    values = config["values"]
    labelled = [SliceRef(r.rsplit(":", 1)[0], int(r.rsplit(":", 1)[1])) for r in config["labelled"]["refs"]]
    refs = select_unlabelled(dataset, labelled, cfg.unlabeled_limit, config["train"]["seed"])
    data = load_slices(dataset, refs, scfg.image_size, values, keep_originals=True)
    student = build_unet(scfg, len(values))
    student.load_state_dict(load_best(run)[0])
    student.to(device).eval()
    probs = student_probs(student, data, device)
    sam = load_model(config["model"], config.get("checkpoint"), device=device)
    SamDecoder(sam).load_state_dict(load_best(run / SAM_DIR)[0])  # stage 1: prompt encoder + mask decoder
    slices = embed_refs(dataset, refs, EmbeddingCache(config["cache"], sam), device, True, "embed unlabelled")
    return cfg, data, probs, sam, slices, values


def main(run: Path, device: str) -> None:
    cfg, data, probs, sam, slices, values = load_pool(run, device)
    rounds = sorted((run / SAM_DIR).glob("round_*"))
    n_out = len(values)
    student_labels = [p.argmax(dim=0).numpy() for p in probs]
    rows = []
    rules = [(region, overlap, background) for region in ("confident", "argmax")
             for overlap, background in [("argmax", "mean"), ("argmax", "max"), ("smaller", "-")]]
    for region, overlap, background in rules:
        rule = replace(cfg, prompt_region=region, overlap=overlap, background="mean" if background == "-" else background)
        labeller = PseudoLabeller(sam, slices, rule, n_out, device)
        labels, _ = labeller.refine(probs)
        refined = [i for i, lab in enumerate(labels) if lab is not None]
        rows.append({"region": region, "overlap": overlap, "background": background, "refined_slices": len(refined),
                     "sam": pooled_dice([labels[i] for i in refined], [data.originals[i] for i in refined], n_out),
                     "student": pooled_dice([student_labels[i] for i in refined],
                                            [data.originals[i] for i in refined], n_out)})
        print(json.dumps(rows[-1]))
    print(f"(SAM weights: stage 1 of {run / SAM_DIR}; {len(rounds)} rounds not applied)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    main(args.run, args.device)
