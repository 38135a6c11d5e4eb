"""``fewsam bench``: speed figures on this machine (never asserted in unit tests).

Measures, on real slices of a dataset: the encoder in every precision this host offers, side by
side (seconds per slice on a cache miss, achieved GFLOP/s, cosine similarity to the fp32
reference), beside the machine's fp32 and bf16 matmul peak (a 2048^2 matmul timed in the same
run); cache-hit load seconds per slice; one few-shot decoder training step (batch n), decoder
inference per slice; and from a warm cache: predicting one validation volume (read, cache hits,
decode, post-process) and a 30-step few-shot fit (with its validation); and peak memory.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.embedded import embed_case, embed_cases, embed_refs
from fewsam.fitting import FitContext
from fewsam.methods import fewshot
from fewsam.losses import dice_ce_loss
from fewsam.methods.fewshot import PrototypeDecoder, bank_tokens, remap_label_frames, shot_prototypes
from fewsam.models.precision import cpu_flags, resolve_precision
from fewsam.models.registry import load_model

RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                  "amx_int8")


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run_bench(data: str | Path, n: int = 8, cache_dir: str | Path = "bench_cache", device: str = "cpu") -> dict[str, Any]:
    cache_dir = Path(cache_dir)
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    dataset = open_dataset(data)
    refs = dataset.labelled_budget_order()[:n]
    model = load_model("litemedsam", device=device)
    encoders = _encoder_table(dataset, refs, model, cache_dir, device)
    cache = EmbeddingCache(cache_dir, model)
    samples = embed_refs(dataset, refs, cache, device, show_progress=False)
    start = time.perf_counter()
    embed_refs(dataset, refs, EmbeddingCache(cache_dir, model), device, show_progress=False)
    hit_s = (time.perf_counter() - start) / n
    values = [0] + dataset.class_map.labels
    remap_label_frames(samples, values)
    decoder = PrototypeDecoder(model, len(values)).to(device)
    tokens = bank_tokens(shot_prototypes(samples, list(range(len(values)))), 1).to(device)
    emb = torch.stack([s.embedding_tensor() for s in samples]).to(device)
    target = torch.stack([torch.from_numpy(np.where(s.label_frame == 255, 0, s.label_frame).astype(np.int64))
                          for s in samples]).to(device)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-5)

    def step() -> None:
        loss = dice_ce_loss(decoder(emb, tokens), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    train_times = _timed(step, 3)
    with torch.no_grad():
        decoder(emb, tokens)
        infer_times = _timed(lambda: decoder(emb, tokens), 3)
    volume_s, fit_s = _predict_and_fit_times(dataset, model, cache, refs, device, cache_dir)
    shutil.rmtree(cache_dir)
    return {
        "machine": machine(),
        "matmul_peak_gflops": matmul_peaks(),
        "encoder_gflop_per_slice": round(encoder_gflop(model, model.image_size), 1),
        "encoder": encoders,
        "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "torch": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads, device {device}",
        "allocator": os.environ.get("GLIBC_TUNABLES", "glibc default"),
        "slices": n,
        "cache_hit_s_per_slice": round(hit_s, 5),
        f"fewshot_train_step_s_batch{n}": round(statistics.median(train_times), 4),
        "decoder_inference_s_per_slice": round(statistics.median(infer_times) / n, 4),
        "predict_s_per_volume_warm_cache": round(volume_s, 3),
        "fit_s_30_steps_warm_cache": round(fit_s, 2),
    }


def _predict_and_fit_times(dataset, model, cache, refs, device: str, cache_dir: Path) -> tuple[float, float]:
    """Wall time of predicting one validation volume and of a 30-step few-shot fit, both from a warm cache."""
    val_id = dataset.split("val")[0]
    embed_cases(dataset, [val_id], cache, device, show_progress=False)  # warm the cache
    ctx = FitContext(dataset, model, cache, device, show_progress=False, labelled=refs, val_ids=[val_id])
    start = time.perf_counter()
    fewshot.fit(ctx, fewshot.FewShotConfig(steps=30, val_every=30, lr=1e-4, ema=0.0, views=1), cache_dir / "run")
    fit_s = time.perf_counter() - start
    predictor = fewshot.FewShotPredictor(cache_dir / "run", model, device)
    start = time.perf_counter()
    case = dataset.load(val_id)
    predictor.predict_case(case, embed_case(case, cache, device))
    return time.perf_counter() - start, fit_s


def machine() -> dict[str, Any]:
    """The CPU model and the instruction-set flags that decide which precisions pay off."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in RELEVANT_FLAGS if f in cpu_flags()],
            "torch_threads": torch.get_num_threads()}


def matmul_peaks(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a size^2 matmul in fp32 and bf16: how far the encoder is from this machine's limit."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.rand(size, size, dtype=dtype), torch.rand(size, size, dtype=dtype)
        a @ b
        seconds = statistics.median(_timed(lambda: a @ b, repeats))
        out[name] = round(2 * size**3 / seconds / 1e9, 1)
    return out


def encoder_gflop(model, image_size: int) -> float:
    """GFLOP of one encoder pass (matmuls and convolutions, as torch's flop counter counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.image_encoder(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 1e9


def _encoder_table(dataset, refs, model, cache_dir: Path, device: str) -> dict[str, dict[str, float]]:
    """Per precision on offer: s/slice (cache miss, after compiling), GFLOP/s, cosine to fp32."""
    names = ["fp32"] if device != "cpu" else ["fp32", "fp32-openvino"] + (
        ["bf16-openvino"] if cpu_flags() & {"avx512_bf16", "amx_bf16"} else [])
    gflop = encoder_gflop(model, model.image_size)
    table, reference = {}, None
    for name in names:
        precision = resolve_precision(name, device)
        cache = EmbeddingCache(cache_dir, model, precision)
        start = time.perf_counter()
        cache.embed([np.zeros((64, 64), np.float32)], device)  # compiles (or converts) the encoder once
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        samples = embed_refs(dataset, refs, cache, device, show_progress=False)
        seconds = (time.perf_counter() - start) / len(refs)
        flat = torch.stack([torch.from_numpy(s.embedding.astype(np.float64)).flatten() for s in samples])
        reference = flat if reference is None else reference
        cosine = torch.nn.functional.cosine_similarity(flat, reference, dim=1)
        table[name] = {"s_per_slice": round(seconds, 4), "gflops": round(gflop / seconds, 1),
                       "cosine_to_fp32_mean": round(float(cosine.mean()), 5),
                       "cosine_to_fp32_min": round(float(cosine.min()), 5), "first_call_s": round(compile_s, 1)}
    return table
