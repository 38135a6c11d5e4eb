"""Which of LiteMedSAM's encoder stages can run in bf16: cosine to the fp32 encoder and time per stage.

Compiles each stage of ``TinyViT.precision_stages()`` with OpenVINO in fp32 and in bf16, then
encodes real slices through every plan below (a chain of stages, each at its own precision) and
prints, per plan, the mean and minimum cosine similarity of the embeddings to the PyTorch fp32
encoder and the seconds per slice of each stage. It is how the ``mixed`` plan (convolutional
stages fp32, attention stages and neck bf16) was chosen: the all-bf16 error is spread over the
stages, and the first two carry over half of it.

Needs a CPU with bf16 instructions (avx512_bf16 / amx_bf16): elsewhere OpenVINO computes bf16 in
fp32 and every plan shows cosine 1. With ``f16`` (a CPU with avx512_fp16, where OpenVINO also
computes in fp16) it adds the plans with fp16 in place of fp32: fp16's 10-bit mantissa keeps more
of fp32 than bf16's 7, at the cost of running without AMX.
Usage: .venv/bin/python benchmarks/encoder_stage_precision.py DATA [N_SLICES] [f16]
"""

import sys
import time
import warnings

import openvino as ov
import torch

from fewsam.data import open_dataset
from fewsam.models.precision import OPENVINO_HINTS
from fewsam.models.registry import load_model

STAGES = ["patch", "conv stage", "attention 1", "attention 2", "attention 3", "neck"]


def plans(f16: bool = False) -> list[list[str]]:
    """All fp32, all bf16, each stage alone in bf16, each alone in fp32, and the mixed plan; with
    ``f16``, all fp16 and the mixed plan with fp16 where it has fp32."""
    n = len(STAGES)
    alone = lambda hint, other: [[hint if j == i else other for j in range(n)] for i in range(n)]  # noqa: E731
    fp16 = [["f16"] * n, ["f16", "f16"] + ["bf16"] * (n - 2)] if f16 else []
    return ([["fp32"] * n, ["bf16"] * n] + alone("bf16", "fp32") + alone("fp32", "bf16")
            + [["fp32", "fp32"] + ["bf16"] * (n - 2)] + fp16)


def main(data: str, n: int = 10, f16: bool = False) -> None:
    dataset = open_dataset(data)
    refs = dataset.labelled_budget_order()
    refs = refs[:: max(1, len(refs) // n)][:n]
    model = load_model("litemedsam")
    encoder = model.image_encoder.eval()
    x = torch.stack([model.preprocess(dataset.load(r.case_id).slice_image(r.z))[0] for r in refs]).float()
    core, compiled, example = ov.Core(), [], x[:1]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = encoder(x)
        for module, _ in encoder.precision_stages():
            converted = ov.convert_model(module.eval(), example_input=example)
            compiled.append({hint: core.compile_model(converted, "CPU", {
                "INFERENCE_PRECISION_HINT": {**OPENVINO_HINTS, "f16": "f16"}[hint],
                "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"})
                for hint in ("fp32", "bf16", *(("f16",) if f16 else ()))})
            example = module(example)
    run(compiled, x, reference, ["bf16"] * len(STAGES))  # warm-up
    print(f"{len(x)} slices of {data}; stages: {', '.join(STAGES)}")
    for plan in plans(f16):
        cos_mean, cos_min, seconds = run(compiled, x, reference, plan)
        print(f"{' '.join(h.rjust(4) for h in plan)}  cosine {cos_mean:.5f} (min {cos_min:.5f})  "
              f"{sum(seconds):.3f} s/slice  [{' '.join(f'{s:.3f}' for s in seconds)}]", flush=True)


def run(compiled: list[dict], x: torch.Tensor, reference: torch.Tensor, plan: list[str]
        ) -> tuple[float, float, list[float]]:
    outputs, seconds = [], [0.0] * len(plan)
    for i in range(len(x)):
        h = x[i:i + 1].numpy()
        for s, (stage, hint) in enumerate(zip(compiled, plan)):
            start = time.perf_counter()
            h = stage[hint](h)[0]
            seconds[s] += time.perf_counter() - start
        outputs.append(torch.from_numpy(h))
    cos = torch.nn.functional.cosine_similarity(torch.cat(outputs).flatten(1).double(),
                                                reference.flatten(1).double(), dim=1)
    return float(cos.mean()), float(cos.min()), [s / len(x) for s in seconds]


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10, sys.argv[3:4] == ["f16"])
