"""The default (`auto`) encoder fed 1, 2 or 4 slices per call: does batching pay on this CPU?

Encodes the same real slices (the middle slice of each validation volume, as the model
preprocesses them) with the compiled encoder that ``--precision auto`` picks here, at each batch
size, alternating the batch sizes in rounds in one process (median of rounds: seconds per slice),
and reports how far the batched embeddings are from the one-slice-per-call ones (max abs
difference, minimum cosine). Batching changes nothing else: the cache stores one entry per slice.

    python benchmarks/encoder_batching.py DATA/acdc [SLICES] [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from fewsam.cache import EmbeddingCache
from fewsam.models.precision import resolve_precision
from fewsam.models.registry import load_model

BATCHES = (1, 2, 4)


def middle_slices(acdc: Path, n: int) -> list[np.ndarray]:
    out = []
    for name in (acdc / "val.list").read_text().split()[:n]:
        with h5py.File(acdc / "data" / f"{name}.h5") as f:
            stack = np.asarray(f["image"], dtype=np.float32)
        out.append(stack[len(stack) // 2])
    return out


def encode(encoder, batch: torch.Tensor, size: int) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([encoder(batch[i:i + size]).numpy() for i in range(0, len(batch), size)])


def main(acdc: str, n: int = 12, rounds: int = 3) -> None:
    model = load_model("litemedsam")
    with tempfile.TemporaryDirectory() as root:
        cache = EmbeddingCache(root, model, resolve_precision("auto", "cpu"))
        batch = torch.stack([model.preprocess(s)[0] for s in middle_slices(Path(acdc), n)])
        reference = encode(cache._encoder, batch, 1)  # also compiles the encoder
        times: dict[int, list[float]] = {b: [] for b in BATCHES}
        outputs: dict[int, np.ndarray] = {}
        for _ in range(rounds):
            for size in BATCHES:
                start = time.perf_counter()
                outputs[size] = encode(cache._encoder, batch, size)
                times[size].append((time.perf_counter() - start) / len(batch))
    print(f"encoder {cache.precision.name}-{cache.precision.backend}, {len(batch)} slices, {rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    base = statistics.median(times[1])
    for size in BATCHES:
        a, b = outputs[size].reshape(len(batch), -1), reference.reshape(len(batch), -1)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        median = statistics.median(times[size])
        print(f"batch {size}: {median:.3f} s / slice ({base / median:.2f}x), rounds "
              f"{', '.join(f'{t:.3f}' for t in times[size])}; vs batch 1: max abs diff "
              f"{np.abs(a - b).max():.2e}, min cosine {cosine.min():.6f}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
