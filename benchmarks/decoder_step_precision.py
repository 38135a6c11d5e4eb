"""The few-shot decoder's training step and the U-Net student's in fp32, bf16 autocast and pure bf16.

Times one training step of each trained module (the bench's: few-shot decoder, batch 8; SAM-Match
student, 8 labelled + 8 unlabelled slices at 256^2) three ways, alternating call by call in one
process (median of the repeats, wall and CPU seconds):

- ``fp32``: fewsam's fp32 path (the student channels-last);
- ``autocast``: the same modules under ``torch.autocast("cpu", bfloat16)`` (casts around each op);
- ``pure-bf16``: the module's weights and activations in bf16 end to end (inputs cast once,
  output handed back in fp32): the upper bound of what bf16 arithmetic can give without autocast's
  casts. It is a timing probe only: training would also need fp32 master weights.

Needs a CPU with bf16 instructions (elsewhere bf16 is emulated and far slower).
Usage: .venv/bin/python benchmarks/decoder_step_precision.py DATA [N_SLICES] [REPEATS]
"""

import copy
import sys
from typing import Any

import torch

from fewsam.bench import alternating, decoder_step, student_step
from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.embedded import embed_refs
from fewsam.methods.fewshot import remap_label_frames
from fewsam.models import acceleration as acc
from fewsam.models.precision import resolve_precision
from fewsam.models.registry import load_model

PURE = acc.Acceleration("pure-bf16", channels_last=True)


def _to(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, dtype) for v in value)
    return value


def _prepared(prepare):
    """``prepare`` (fewsam's), then, for the pure-bf16 probe, the whole module cast to bf16."""
    def wrapped(module: torch.nn.Module, acceleration: acc.Acceleration) -> torch.nn.Module:
        module = prepare(module, acceleration)
        if acceleration is PURE:
            module.to(torch.bfloat16)
            module.register_forward_pre_hook(lambda m, args: _to(args, torch.bfloat16))
            module.register_forward_hook(lambda m, args, out: _to(out, torch.float32))
        return module
    return wrapped


def main(data: str, n: int = 6, repeats: int = 5) -> None:
    import fewsam.bench as bench

    bench.prepare_decoder = _prepared(acc.prepare_decoder)
    bench.prepare_student = _prepared(acc.prepare_student)
    dataset = open_dataset(data)
    refs = dataset.labelled_budget_order()[:n]
    model = load_model("litemedsam")
    cache = EmbeddingCache("decoder_step_cache", model, resolve_precision("auto", "cpu"))
    samples = embed_refs(dataset, refs, cache, "cpu", show_progress=False)
    values = [0] + dataset.class_map.labels
    remap_label_frames(samples, values)
    paths = {"fp32": acc.FP32_FAST, "autocast": acc.BF16_AUTOCAST, "pure-bf16": PURE}
    # each decoder gets its own SAM: PrototypeDecoder shares the model's mask decoder, which pure-bf16 casts
    decoders = {k: decoder_step(copy.deepcopy(model), samples, values, a, "cpu") for k, a in paths.items()}
    students = {k: student_step(dataset, refs, values, a, "cpu") for k, a in paths.items()}
    for what, steps in (("few-shot decoder step, batch 8", decoders), ("SAM-Match student step", students)):
        times = alternating(steps, repeats)
        print(what + ": " + ", ".join(f"{k} {w:.3f} s (CPU {c:.3f} s, {times['fp32'][0] / w:.2f}x)"
                                      for k, (w, c) in times.items()))


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
