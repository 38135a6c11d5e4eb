"""``fewsam bench``: speed figures on this machine (never asserted in unit tests).

Measures, on real slices of a dataset: encoder seconds per slice (cache miss), cache-hit load
seconds per slice, one few-shot decoder training step (batch 8), decoder inference per slice, and
from a warm cache: predicting one validation volume (read, cache hits, decode, post-process) and a
30-step few-shot fit (with its validation).
"""

from __future__ import annotations

import os
import platform
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
from fewsam.models.registry import load_model


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
    cache = EmbeddingCache(cache_dir, model)
    start = time.perf_counter()
    samples = embed_refs(dataset, refs, cache, device, show_progress=False)
    encode_s = (time.perf_counter() - start) / n
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
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads, device {device}",
        "allocator": os.environ.get("GLIBC_TUNABLES", "glibc default"),
        "slices": n,
        "encoder_s_per_slice": round(encode_s, 4),
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
