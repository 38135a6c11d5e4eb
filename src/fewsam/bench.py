"""``fewsam bench``: speed figures on this machine (never asserted in unit tests).

Measures, on real slices of a dataset, the default precision (``auto``) against ``--precision
fp32``, the reference, side by side in one run: the encoder's seconds per slice, one few-shot
decoder training step and one SAM-Match U-Net student training step, each timed alternately on
the two paths (so that other jobs on the machine slow both alike), and each path's peak memory
(its workload run in a fresh process of its own: the process high-water mark cannot be reset).
Besides: every encoder precision this host offers (s/slice on a cache miss, achieved GFLOP/s,
cosine similarity to the reference) beside the machine's fp32 and bf16 matmul peak; cache-hit
load time; decoder inference per slice; and on the default path from a warm cache, predicting one
validation volume and a 30-step few-shot fit (with its validation).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fewsam.cache import EmbeddingCache
from fewsam.config import DEFAULT_PRECISION
from fewsam.data import open_dataset
from fewsam.data.types import Dataset, SliceRef
from fewsam.embedded import CaseSlices, EmbeddedSlice, embed_cases, embed_refs
from fewsam.errors import FewsamError
from fewsam.fitting import FitContext
from fewsam.labels import IGNORE
from fewsam.losses import DiceCELoss
from fewsam.methods import fewshot
from fewsam.methods.fewshot import FewShotTask, PrototypeDecoder, bank_tokens, remap_labels, shot_prototypes
from fewsam.methods.samatch.config import SamMatchConfig
from fewsam.methods.samatch.student_task import SamMatchTask
from fewsam.methods.student import build_unet, load_slices
from fewsam.models.acceleration import Acceleration, prepare_decoder, prepare_student, resolve_acceleration
from fewsam.models.precision import EncoderPrecision, has_bf16, machine, resolve_precision
from fewsam.models.registry import load_model
from fewsam.models.sam import SamModel
from fewsam.progress import stages

REFERENCE = "fp32"
BF16 = "bf16-openvino"
STEP_REPEATS = 3  # timed training steps per path, after one warm-up step each


@dataclass(frozen=True)
class PathChoice:
    """One side of the comparison: the --precision value and what it resolves to on this host."""

    requested: str
    encoder: EncoderPrecision
    acceleration: Acceleration

    @property
    def encoder_name(self) -> str:
        """The encoder as --precision spells it (the key of the encoder table)."""
        return "fp32" if self.encoder.backend == "torch" else f"{self.encoder.name}-{self.encoder.backend}"

    @property
    def description(self) -> str:
        return f"{self.requested}: encoder {self.encoder_name}, decoder/student {self.acceleration.name}"


def path_choice(requested: str, device: str) -> PathChoice:
    return PathChoice(requested, resolve_precision(requested, device), resolve_acceleration(requested, device))


def _timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def alternating(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each function, called in turn after one warm-up call each:
    load from other jobs then falls on every contender alike. CPU seconds (all threads) count the
    work done, which waiting for a busy core does not inflate."""
    for fn in fns.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}


def run_bench(data: str | Path, n: int = 8, cache_dir: str | Path = "bench_cache",
              device: str = "cpu", show_progress: bool = True) -> dict[str, Any]:
    """The figures of ``fewsam bench`` on ``n`` slices, measured with the scratch cache ``cache_dir``,
    which is removed at the end, also when the bench fails or is stopped (a rerun would otherwise be
    refused for the folder it left). A folder that exists already (empty: the command refuses any
    other) is kept and the bench works in a new folder inside it: ``--cache .`` must not delete the
    user's working folder. ``show_progress``: each measurement said on stderr as it begins (``progress.stages``),
    as the bench runs for minutes."""
    if n < 1:
        raise FewsamError(f"-n must be at least 1, not {n}")
    started = time.perf_counter()
    cache_dir = Path(cache_dir)
    remove_bench_leftovers(cache_dir)
    scratch = cache_dir / BENCH_SCRATCH if cache_dir.exists() else cache_dir
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        scratch.mkdir(parents=True)
        (scratch / BENCH_MARK).write_text("fewsam bench's scratch cache, removed when the bench ends\n")
        return _measure(data, n, scratch, device, started, show_progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


BENCH_SCRATCH = "fewsam-bench-scratch"
BENCH_MARK = ".fewsam-bench"  # in a bench's scratch cache from its start: a killed bench's folder is known by it


def left_by_a_bench(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but the scratch cache of a bench killed before it could remove it
    (kill -9, a power cut): the folder itself, marked, or its one marked ``BENCH_SCRATCH`` folder."""
    if (folder / BENCH_MARK).is_file():
        return True
    entries = list(folder.iterdir()) if folder.is_dir() else []
    return len(entries) == 1 and entries[0].name == BENCH_SCRATCH and (entries[0] / BENCH_MARK).is_file()


def remove_bench_leftovers(folder: Path) -> None:
    """A killed bench's scratch cache in ``folder`` removed (``left_by_a_bench``): it blocked every later
    bench there ("not empty"); an existing folder the user gave (``--cache .``) is kept, emptied of it."""
    if (folder / BENCH_MARK).is_file():
        shutil.rmtree(folder, ignore_errors=True)
    elif left_by_a_bench(folder):
        shutil.rmtree(folder / BENCH_SCRATCH, ignore_errors=True)


STAGES_BESIDE_ENCODERS_AND_PATHS = 8
"""The bench's stages (``progress.stages``) besides one per encoder precision and one per compared path."""


def _measure(data: str | Path, n: int, cache_dir: Path, device: str, started: float,
             show_progress: bool = True) -> dict[str, Any]:
    """Every figure, each measurement said as it begins (between the timed regions, never inside one)."""
    paths = compared_paths(device)
    total = STAGES_BESIDE_ENCODERS_AND_PATHS + len(encoder_names(device)) + len(paths)
    with stages("bench", total, show_progress) as begin:
        begin("reading the data and loading the model")
        dataset = open_dataset(data)
        refs = dataset.labelled_budget_order()[:n]
        n = len(refs)  # a dataset with fewer labelled slices than asked: figures per slice it has
        model = load_model("litemedsam", device=device)
        encoders = _encoder_table(dataset, refs, model, cache_dir, device, begin)
        begin(f"cache hits ({_slices(n)})")
        cache = EmbeddingCache(cache_dir, model, paths["default"].encoder)
        samples = embed_refs(dataset, refs, cache, device, show_progress=False)
        start = time.perf_counter()
        embed_refs(dataset, refs, EmbeddingCache(cache_dir, model, paths["default"].encoder), device,
                   show_progress=False)
        hit_s = (time.perf_counter() - start) / n
        values = [0] + dataset.class_map.labels
        samples = remap_labels(samples, values)
        compared = f"{', '.join(paths)}, taking turns"
        begin(f"few-shot decoder training step ({compared})")
        decoder_steps = alternating({name: decoder_step(model, samples, values, p.acceleration, device)
                                     for name, p in paths.items()}, STEP_REPEATS)
        begin(f"U-Net student training step ({compared})")
        student_steps = alternating({name: student_step(dataset, refs, values, p.acceleration, device)
                                     for name, p in paths.items()}, STEP_REPEATS)
        begin(f"decoder inference ({_slices(n)})")
        infer_s = _decoder_inference_s(model, samples, values, device)
        memory = {}
        for name, p in paths.items():
            begin(f"peak memory of {name} (a process of its own)")
            memory[name] = path_peak_memory(data, refs, cache_dir, device, p.requested)
        begin("a 30-step few-shot fit and one volume's prediction, from a warm cache")
        volume_s, fit_s = _predict_and_fit_times(dataset, model, cache, refs, device, cache_dir, paths["default"])
        begin("matmul peak (fp32, bf16) and the encoder's GFLOP per slice")
        matmul = matmul_peaks()
        gflop = encoder_gflop(model, model.image_size)
    return {
        "machine": machine(),
        "default_vs_fp32": {
            "default": paths["default"].description,
            "encoder_s_per_slice": {**{k: encoders[p.encoder_name]["s_per_slice"] for k, p in paths.items()},
                                    "speedup": round(encoders["fp32"]["s_per_slice"]
                                                     / encoders[paths["default"].encoder_name]["s_per_slice"], 2)},
            "fewshot_train_step_s_batch8": _pair(decoder_steps),
            "student_train_step_s_samatch_batch": _pair(student_steps),
            "peak_memory_gib": {**{k: round(v, 2) for k, v in memory.items()},
                                "ratio": round(memory["default"] / memory[REFERENCE], 3)},
        },
        **({"bf16_vs_fp32": _bf16_row(paths, encoders, decoder_steps, student_steps, memory)}
           if BF16 in paths else {}),
        "matmul_peak_gflops": matmul,
        "encoder_gflop_per_slice": round(gflop, 1),
        "encoder": encoders,
        "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "torch": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads, device {device}",
        "allocator": os.environ.get("GLIBC_TUNABLES", "glibc default"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp spins, then sleeps)"),
        "slices": n,
        "cache_hit_s_per_slice": round(hit_s, 5),
        "decoder_inference_s_per_slice": round(infer_s, 4),
        "predict_s_per_volume_warm_cache": round(volume_s, 3),
        "fit_s_30_steps_warm_cache": round(fit_s, 2),
        "bench_s": round(time.perf_counter() - started, 1),
    }


def compared_paths(device: str, flags: frozenset[str] | None = None) -> dict[str, PathChoice]:
    """The default and the fp32 reference, and on a CPU with bf16 instructions ``bf16-openvino``
    too: there the bf16 path's training steps are worth seeing beside the others even though
    ``auto`` does not take it."""
    paths = {"default": path_choice(DEFAULT_PRECISION, device), REFERENCE: path_choice(REFERENCE, device)}
    if device.startswith("cpu") and has_bf16(flags):
        paths[BF16] = path_choice(BF16, device)
    return paths


def _pair(seconds: dict[str, tuple[float, float]], faster: str = "default") -> dict[str, Any]:
    """The paths' wall seconds, CPU seconds, and how many times faster ``faster`` is than fp32."""
    wall, cpu = ({k: v[i] for k, v in seconds.items()} for i in (0, 1))
    return {**{k: round(v, 4) for k, v in wall.items()}, "speedup": round(wall[REFERENCE] / wall[faster], 2),
            "cpu_s": {k: round(v, 4) for k, v in cpu.items()}, "cpu_speedup": round(cpu[REFERENCE] / cpu[faster], 2)}


def _bf16_row(paths: dict[str, PathChoice], encoders: dict, decoder_steps: dict, student_steps: dict,
              memory: dict[str, float]) -> dict[str, Any]:
    """``bf16-openvino`` against the reference: the encoder, both training steps, peak memory."""
    pick = ("fp32", BF16)
    return {
        "path": paths[BF16].description,
        "encoder_s_per_slice": {**{k: encoders[k]["s_per_slice"] for k in pick},
                                "speedup": round(encoders["fp32"]["s_per_slice"] / encoders[BF16]["s_per_slice"], 2)},
        "fewshot_train_step_s_batch8": _pair({k: decoder_steps[k] for k in pick}, BF16),
        "student_train_step_s_samatch_batch": _pair({k: student_steps[k] for k in pick}, BF16),
        "peak_memory_gib": {**{k: round(memory[k], 2) for k in pick}, "ratio": round(memory[BF16] / memory["fp32"], 3)},
    }


def _cycled(items: list, size: int) -> list:
    """``items`` repeated to ``size`` entries: a batch of the recipe's size from fewer slices."""
    return [items[i % len(items)] for i in range(size)]


def decoder_step(model: SamModel, samples: list[EmbeddedSlice], values: list[int], acceleration: Acceleration,
                 device: str) -> Callable[[], None]:
    """One few-shot training step (the default recipe's batch of 8, token sampling included) on a
    decoder of its own, prepared for ``acceleration``."""
    cfg = fewshot.FewShotConfig()
    shots = shot_prototypes(samples, list(range(len(values))))
    decoder = prepare_decoder(PrototypeDecoder(model, len(values)).to(device), acceleration)
    task = FewShotTask(decoder, _cycled(samples, cfg.batch_size), shots, cfg, DiceCELoss(IGNORE),
                       bank_tokens(shots, cfg.tokens_per_class), [], values, device)
    return _training_step(task, np.random.default_rng(0))


def student_step(dataset: Dataset, refs: list[SliceRef], values: list[int], acceleration: Acceleration,
                 device: str) -> Callable[[], None]:
    """One SAM-Match student step at its default batch (labelled + unlabelled, weak and strong views)."""
    cfg = SamMatchConfig()
    labelled = load_slices(dataset, _cycled(refs, cfg.batch_size), cfg.image_size, values)
    unlabelled = load_slices(dataset, _cycled(refs, cfg.unlabeled_batch), cfg.image_size, values)
    torch.manual_seed(0)
    module = prepare_student(build_unet(cfg, len(values)).to(device), acceleration)
    task = SamMatchTask(module, labelled, unlabelled, cfg, DiceCELoss(None), [], values, device)
    return _training_step(task, np.random.default_rng(0))


def _training_step(task: Any, rng: np.random.Generator) -> Callable[[], None]:
    """What the training loop does per step: loss, backward, optimiser step."""
    optimizer = torch.optim.AdamW([p for p in task.module.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        task.module.train()
        loss, _ = task.training_loss(rng, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _decoder_inference_s(model: SamModel, samples: list[EmbeddedSlice], values: list[int], device: str) -> float:
    decoder = PrototypeDecoder(model, len(values)).to(device).eval()
    tokens = bank_tokens(shot_prototypes(samples, list(range(len(values)))), 1).to(device)
    emb = torch.stack([s.embedding_tensor() for s in samples]).to(device)
    with torch.no_grad():
        decoder(emb, tokens)
        return statistics.median(_timed(lambda: decoder(emb, tokens), 3)) / len(samples)


def path_peak_memory(data: str | Path, refs: list[SliceRef], cache_dir: Path, device: str, requested: str) -> float:
    """Peak resident memory (GiB) of one path's workload, in a fresh process: encoding slices
    (cache misses), few-shot decoder steps and SAM-Match student steps. A plain child interpreter,
    not multiprocessing: that would re-run ``python -m fewsam``'s main module in the child."""
    job = json.dumps({"data": str(data), "refs": [[r.case_id, r.z] for r in refs[:2]], "cache_dir": str(cache_dir),
                      "device": device, "requested": requested})
    done = subprocess.run([sys.executable, "-c", "import sys; from fewsam.bench import path_workload; "
                           "print(path_workload(sys.argv[1]))", job], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def path_workload(job: str) -> float:
    """The child of ``path_peak_memory``; returns its peak memory in GiB. Its slices are flipped, so
    that the encoder runs (the bench's cache holds them as they are; the compiled encoder is read
    back from there)."""
    spec = json.loads(job)
    device, choice = spec["device"], path_choice(spec["requested"], spec["device"])
    refs = [SliceRef(case_id, z) for case_id, z in spec["refs"]]
    dataset = open_dataset(spec["data"])
    model = load_model("litemedsam", device=device)
    cache = EmbeddingCache(spec["cache_dir"], model, choice.encoder)
    cache.embed([np.flipud(dataset.load(r.case_id).slice_image(r.z)).copy() for r in refs], device)
    samples = embed_refs(dataset, refs, cache, device, show_progress=False)
    values = [0] + dataset.class_map.labels
    samples = remap_labels(samples, values)
    for step in (decoder_step(model, samples, values, choice.acceleration, device),
                 student_step(dataset, refs, values, choice.acceleration, device)):
        step()
        step()
    return own_peak_memory_gib()


def own_peak_memory_gib() -> float:
    """This process's peak resident memory (GiB). Linux's VmHWM, because ru_maxrss of a child
    starts at its parent's resident size at fork time (it carries over exec); elsewhere ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _predict_and_fit_times(dataset, model, cache, refs, device: str, cache_dir: Path,
                           choice: PathChoice) -> tuple[float, float]:
    """Wall time of predicting one validation volume and of a 30-step few-shot fit, both from a warm cache."""
    val_id = dataset.split("val")[0]
    embed_cases(dataset, [val_id], cache, device, show_progress=False)  # warm the cache
    ctx = FitContext(dataset, model, cache, device, show_progress=False, labelled=refs, val_ids=[val_id],
                     acceleration=choice.acceleration)
    start = time.perf_counter()
    recipe = fewshot.FewShotConfig(steps=30, val_every=30, lr=1e-4, ema=0.0, views=1, augmented_views=0)
    fewshot.fit(ctx, recipe, cache_dir / "run")
    fit_s = time.perf_counter() - start
    predictor = fewshot.FewShotPredictor(cache_dir / "run", model, device, choice.acceleration)
    start = time.perf_counter()
    case = dataset.load(val_id)
    predictor.predict_case(case, CaseSlices(case, cache, device, streamed=True))  # read as `fewsam predict` reads it
    return time.perf_counter() - start, fit_s


def matmul_peaks(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a size^2 matmul in fp32 and bf16: how far the encoder is from this machine's limit.
    Without bf16 instructions bf16 is emulated (~0.3 GFLOP/s): a 512^2 matmul, timed once, shows it
    in a second where 2048^2 would take minutes."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n, times = (size, repeats) if name == "fp32" or has_bf16() else (512, 1)
        a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
        a @ b
        seconds = statistics.median(_timed(lambda: a @ b, times))
        out[name] = round(2 * n**3 / seconds / 1e9, 1)
    return out


def encoder_gflop(model, image_size: int) -> float:
    """GFLOP of one encoder pass (matmuls and convolutions, as torch's flop counter counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.image_encoder(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 1e9


def encoder_names(device: str, flags: frozenset[str] | None = None) -> list[str]:
    """The encoder precisions this host offers, as --precision spells them (the encoder table's rows)."""
    if device != "cpu":
        return ["fp32"]
    return ["fp32", "fp32-openvino"] + (["mixed-openvino", "bf16-openvino"] if has_bf16(flags) else [])


def _slices(n: int) -> str:
    return f"{n} slice{'' if n == 1 else 's'}"


def _encoder_table(dataset, refs, model, cache_dir: Path, device: str,
                   begin: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Per precision on offer: s/slice (cache miss, after compiling; the precisions take turns
    slice by slice), GFLOP/s, cosine to fp32. ``begin`` says each of its stages as it begins: the first
    call of each encoder (OpenVINO's conversion and compiling), then their turns on the slices."""
    names = encoder_names(device)
    gflop = encoder_gflop(model, model.image_size)
    caches, first_call = {}, {}
    for name in names:
        precision = resolve_precision(name, device)
        begin(f"encoder {name} first call" + (" (OpenVINO converts and compiles it)"
                                               if precision.backend == "openvino" else ""))
        caches[name] = EmbeddingCache(cache_dir, model, precision)
        start = time.perf_counter()
        caches[name].embed([np.zeros((64, 64), np.float32)], device)  # compiles (or converts) the encoder once
        first_call[name] = time.perf_counter() - start
    begin(f"encoder {', '.join(names)} ({_slices(len(refs))}, taking turns)")
    images = [dataset.load(r.case_id).slice_image(r.z) for r in refs]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    embeddings: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for image in images:
        for name in names:
            start = time.perf_counter()
            embeddings[name].append(caches[name].embed([image], device)[0].array)
            seconds[name].append(time.perf_counter() - start)
    flat = {name: torch.stack([torch.from_numpy(e.astype(np.float64)).flatten() for e in embs])
            for name, embs in embeddings.items()}
    table = {}
    for name in names:
        per_slice = sum(seconds[name]) / len(images)
        cosine = torch.nn.functional.cosine_similarity(flat[name], flat["fp32"], dim=1)
        table[name] = {"s_per_slice": round(per_slice, 4), "gflops": round(gflop / per_slice, 1),
                       "cosine_to_fp32_mean": round(float(cosine.mean()), 5),
                       "cosine_to_fp32_min": round(float(cosine.min()), 5), "first_call_s": round(first_call[name], 1)}
    return table
