"""Where do SAM-Match's per-class pseudo-labels go wrong: the student's box or SAM itself?

On a finished run's unlabelled pool (which must carry ground truth, as ACDC's does), for every
foreground class the student prompts, SAM's raw mask (logit > 0, before any composition rule) is
scored against that class's ground truth with three boxes: the student's (the run's prompt
rule), the ground-truth box with the run's margin, and the tight ground-truth box. Also printed:
where SAM's mask spills (the share of its pixels on each other ground-truth class) and how much
larger the student's box is than the ground-truth one. First line: the composed pseudo-labels
(the run's rules) against the student's own, pooled Dice on the slices SAM refined.
With ``--retrain-steps N`` SAM's stage 1 is first retrained (from the pretrained decoder, on the
run's labelled slices, into OUT) with ``--prompt-clicks``, to compare prompt kinds on
the same student; ``--prompt-clicks positive|contrast`` adds clicks to every prompt (as in fit).
The measured tables are in docs/results.md, section 2.5, "Nested anatomy: box vs box + click".
Usage: .venv/bin/python benchmarks/sam_box_diagnosis.py RUN [--device cpu]
           [--retrain-steps 100 --prompt-clicks contrast --out DIR] [--composed-only]
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.data.types import SliceRef
from fewsam.fitting import FitContext
from fewsam.methods.samatch import PseudoLabeller, SamMatchConfig, pooled_dice, prompt_regions
from fewsam.methods.samatch.sam_decoder import fit_sam
from fewsam.methods.student import load_val_cases
from fewsam.models.registry import load_model
from fewsam.models.sam import postprocess_logits
from fewsam.prompts import box_from_mask, click_prompts, largest_component, stack_clicks
from fewsam.runs import read_config

from pseudo_label_rules import load_pool


def retrain_stage1(run: Path, sam, cfg: SamMatchConfig, steps: int, out: Path, device: str) -> None:
    """SAM's stage 1 again (``fit_sam``, as in ``fit samatch``), from the pretrained decoder, on the
    run's labelled slices and validation cases, with this ``cfg``'s prompt kind; the best weights
    end up in ``sam``."""
    config = read_config(run)
    dataset = open_dataset(config["data"])
    labelled = [SliceRef(r.rsplit(":", 1)[0], int(r.rsplit(":", 1)[1])) for r in config["labelled"]["refs"]]
    ctx = FitContext(dataset, sam, EmbeddingCache(config["cache"], sam), device, True, labelled,
                     dataset.split(config["val_split"]), config["train"]["seed"])
    fit_sam(ctx, load_val_cases(ctx), out, replace(cfg, sam_steps=steps))


def sam_masks(sam, slices, jobs, device: str, with_clicks: bool) -> list[np.ndarray]:
    """[(slice index, xyxy box, (points, labels))] -> SAM's binary masks at the original size."""
    out = []
    with torch.no_grad():
        for start in range(0, len(jobs), 16):
            part = jobs[start:start + 16]
            emb = torch.stack([slices[i].embedding_tensor() for i, _, _ in part]).to(device)
            prompts = {"boxes": torch.from_numpy(np.stack([b for _, b, _ in part])).to(device)}
            if with_clicks:
                points, labels = stack_clicks([q for _, _, q in part])
                prompts |= {"points": points.to(device), "point_labels": labels.to(device)}
            for (i, _, _), lg in zip(part, sam.predict_prompted(emb, **prompts)):
                out.append((postprocess_logits(lg[None].float(), slices[i].info)[0, 0] > 0).cpu().numpy())
    return out


def box_area(box: np.ndarray) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def main(run: Path, device: str, retrain_steps: int, prompt_clicks: str | None, out: Path | None,
         composed_only: bool = False) -> None:
    cfg, data, probs, sam, slices, values = load_pool(run, device)
    prompt_clicks = prompt_clicks or cfg.prompt_clicks  # None: the run's own prompts
    cfg = replace(cfg, prompt_clicks=prompt_clicks)
    if retrain_steps:
        config = read_config(run)
        sam.load_state_dict(load_model(config["model"], config.get("checkpoint"), device="cpu").state_dict())
        retrain_stage1(run, sam, cfg, retrain_steps, out, device)
    labels, _ = PseudoLabeller(sam, slices, cfg, len(values), device).refine(probs)
    refined = [i for i, lab in enumerate(labels) if lab is not None]
    gts = [data.originals[i] for i in refined]
    print(json.dumps({"composed_pseudo_labels": {
        "refined_slices": len(refined), "sam": pooled_dice([labels[i] for i in refined], gts, len(values)),
        "student": pooled_dice([probs[i].argmax(dim=0).numpy() for i in refined], gts, len(values))}}))
    if composed_only:
        return
    mode = None if prompt_clicks == "none" else prompt_clicks
    for k in range(1, len(values)):
        student_jobs, gt_jobs, tight_jobs, gts = [], [], [], []
        for i, (p, s) in enumerate(zip(probs, slices)):
            gt = data.originals[i] == k
            regions = dict(prompt_regions(p, cfg.threshold, cfg.prompt_region))
            if k not in regions or not gt.any():
                continue
            truth = [data.originals[i] == j for j in range(1, len(values)) if j != k]
            gt_clicks = click_prompts(gt, truth, s.info, mode) if mode else None
            region = regions[k]
            others = [m for j, m in regions.items() if j != k]
            student_clicks = click_prompts(region, others, s.info, mode) if mode else None
            student_jobs.append((i, box_from_mask(region, s.info, cfg.box_margin), student_clicks))
            gt_jobs.append((i, box_from_mask(largest_component(gt), s.info, cfg.box_margin), gt_clicks))
            tight_jobs.append((i, box_from_mask(largest_component(gt), s.info, 0), gt_clicks))
            gts.append(gt)
        if not gts:
            print(json.dumps({"class": k, "prompted_slices_with_class": 0}))
            continue
        ratios = [box_area(a) / max(box_area(b), 1.0) for (_, a, _), (_, b, _) in zip(student_jobs, gt_jobs)]
        row = {"class": k, "prompted_slices_with_class": len(gts), "box_area_ratio_student_vs_gt": float(np.median(ratios))}
        for name, jobs in [("student_box", student_jobs), ("gt_box", gt_jobs), ("tight_gt_box", tight_jobs)]:
            masks = sam_masks(sam, slices, jobs, device, mode is not None)
            inter = sum(int((m & g).sum()) for m, g in zip(masks, gts))
            total = sum(int(m.sum()) + int(g.sum()) for m, g in zip(masks, gts))
            spill = {str(j): sum(int((m & (data.originals[i] == j)).sum()) for (i, _, _), m in zip(jobs, masks))
                     / max(sum(int(m.sum()) for m in masks), 1) for j in range(len(values)) if j != k}
            row[name] = {"dice": 2 * inter / max(total, 1), "spill": spill}
        print(json.dumps(row))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--retrain-steps", type=int, default=0)
    parser.add_argument("--prompt-clicks", choices=["none", "positive", "contrast"],
                        help="prompt kind to measure (default: the run's own)")
    parser.add_argument("--composed-only", action="store_true", help="skip the per-class box comparison")
    parser.add_argument("--out", type=Path, help="folder for the retrained stage 1 (with --retrain-steps)")
    args = parser.parse_args()
    if args.retrain_steps and args.out is None:
        parser.error("--retrain-steps needs --out")
    main(args.run, args.device, args.retrain_steps, args.prompt_clicks, args.out, args.composed_only)
