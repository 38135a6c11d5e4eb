"""Levers for the LiteMedSAM encoder on a CPU without bf16 instructions, against the compiled fp32
encoder that ``auto`` uses there (one inference request, all threads, one slice per call):

- the same fp32 graph run two slices per call (batch 2), or as two streams of one thread each
  with two requests in flight (OpenVINO's throughput mode; embedding a dataset has many slices);
- int8 after training (NNCF post-training quantisation, calibrated on pool slices): the whole
  graph, its matrix products only, its convolutions only.

For each: seconds per slice (the contenders alternate, each over all test slices, in rounds, in
one process; median of rounds), and the cosine similarity and max abs difference of its
embeddings to the PyTorch fp32 reference on held-out slices (mid-ventricular slices of the
validation volumes; the calibration slices come from the unlabelled pool).

    python benchmarks/encoder_cpu_levers.py DATA/acdc [CALIBRATION_SLICES] [TEST_SLICES] [--json OUT]

Needs NNCF: ``pip install -e ".[int8-probe]"`` (not a dependency of fewsam: a measurement).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch

from fewsam.models.precision import cpu_flags
from fewsam.models.registry import load_model

THREADS = torch.get_num_threads()
LEVER_FLAGS = frozenset({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
Runner = Callable[[list[np.ndarray]], list[np.ndarray]]


def read_slices(acdc: Path, n_calibration: int, n_test: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Calibration: evenly spaced slices of the pool (after the 7-case budget); test: evenly
    spaced slices of the validation volumes."""
    pool = (acdc / "train_slices.list").read_text().split()[136:]
    picked = [pool[i] for i in np.linspace(0, len(pool) - 1, n_calibration).astype(int)]
    calibration = [_image(acdc / "data" / f"{name}.h5") for name in picked]
    test = []
    volumes = (acdc / "val.list").read_text().split()
    for name in volumes:
        with h5py.File(acdc / "data" / f"{name}.h5") as f:
            stack = np.asarray(f["image"], dtype=np.float32)
        test.append(stack[len(stack) // 2])
    step = max(1, len(test) // n_test)
    return calibration, test[::step][:n_test]


def _image(path: Path) -> np.ndarray:
    with h5py.File(path) as f:
        return np.asarray(f["image"], dtype=np.float32)


def converted(encoder: torch.nn.Module, size: int):
    import openvino as ov

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return ov.convert_model(encoder.eval(), example_input=torch.zeros(1, 3, size, size))


def quantised(model, calibration: list[np.ndarray], **options):
    import nncf

    dataset = nncf.Dataset(calibration)
    return nncf.quantize(model, dataset, subset_size=len(calibration), **options)


def compiled(model, streams: int = 0):
    """``model`` compiled for this CPU in fp32 arithmetic (int8 layers stay int8): one stream of
    all threads (latency, today's setting) or ``streams`` streams sharing them (throughput)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": THREADS,
              "PERFORMANCE_HINT": "THROUGHPUT" if streams else "LATENCY"}
    if streams:
        config["NUM_STREAMS"] = streams
    return ov.Core().compile_model(model, "CPU", config)


def one_at_a_time(engine) -> Runner:
    return lambda xs: [np.array(engine(x)[0]) for x in xs]


def in_pairs(model, size: int) -> Runner:
    batched = model.clone()
    batched.reshape([2, 3, size, size])
    engine = compiled(batched)

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for i in range(0, len(xs), 2):
            pair = xs[i:i + 2]
            y = np.array(engine(np.concatenate(pair + pair[:1] * (2 - len(pair))))[0])
            out += [y[j:j + 1] for j in range(len(pair))]
        return out
    return run


def two_streams(model) -> Runner:
    import openvino as ov

    engine = compiled(model, streams=2)

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        queue, results = ov.AsyncInferQueue(engine, 2), {}
        queue.set_callback(lambda request, i: results.__setitem__(i, np.array(request.get_output_tensor(0).data)))
        for i, x in enumerate(xs):
            queue.start_async({0: x}, i)
        queue.wait_all()
        return [results[i] for i in range(len(xs))]
    return run


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv: list[str]) -> None:
    import nncf

    out = None
    if "--json" in argv:
        out = Path(argv[argv.index("--json") + 1])
        argv = argv[:argv.index("--json")]
    acdc = Path(argv[0])
    n_calibration = int(argv[1]) if len(argv) > 1 else 64
    n_test = int(argv[2]) if len(argv) > 2 else 10
    model = load_model("litemedsam")
    size = model.image_size
    calibration_raw, test_raw = read_slices(acdc, n_calibration, n_test)
    prep = lambda imgs: [model.preprocess(i)[0][None].float().numpy() for i in imgs]  # noqa: E731
    calibration, test = prep(calibration_raw), prep(test_raw)
    with torch.inference_mode():
        reference = [model.image_encoder(torch.from_numpy(x)).numpy() for x in test]
    fp32_model = converted(model.image_encoder, size)
    transformer = nncf.ModelType.TRANSFORMER
    started = time.perf_counter()
    int8 = {
        "int8 (transformer preset)": quantised(fp32_model, calibration, model_type=transformer),
        "int8, matmuls only": quantised(fp32_model, calibration, model_type=transformer,
                                        ignored_scope=nncf.IgnoredScope(types=["Convolution", "GroupConvolution"])),
        "int8, convolutions only": quantised(fp32_model, calibration,
                                             ignored_scope=nncf.IgnoredScope(types=["MatMul"])),
    }
    quantise_s = time.perf_counter() - started
    runners: dict[str, Runner] = {
        "fp32-openvino": one_at_a_time(compiled(fp32_model)),
        "fp32-openvino, batch 2": in_pairs(fp32_model, size),
        "fp32-openvino, 2 streams x 1 thread": two_streams(fp32_model),
        **{name: one_at_a_time(compiled(m)) for name, m in int8.items()},
    }
    rounds = 3
    times: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, list[np.ndarray]] = {}
    for run in runners.values():  # warm-up
        run(test[:2])
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            outputs[name] = run(test)
            times[name].append((time.perf_counter() - start) / len(test))
    fp32_s = float(np.median(times["fp32-openvino"]))
    rows = {}
    for name in runners:
        cos = [cosine(r, o) for r, o in zip(reference, outputs[name])]
        seconds = float(np.median(times[name]))
        rows[name] = {"s_per_slice": round(seconds, 4), "rounds": [round(t, 4) for t in times[name]],
                      "speedup_vs_fp32_openvino": round(fp32_s / seconds, 2),
                      "cosine_mean": round(float(np.mean(cos)), 5), "cosine_min": round(float(np.min(cos)), 5),
                      "max_abs_diff": round(max(float(np.abs(r - o).max()) for r, o in zip(reference, outputs[name])), 4)}
        print(f"{name:36s} {rows[name]}", flush=True)
    result = {"cpu_flags": sorted(cpu_flags() & LEVER_FLAGS), "calibration_slices": n_calibration, "test_slices": len(test), "threads": THREADS,
              "quantise_s_all_int8_variants": round(quantise_s, 1), "nncf": nncf.__version__, "rows": rows}
    if out:
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
