"""How the frozen encoder runs: PyTorch fp32 (the exact reference), or compiled by OpenVINO.

The encoder is the cost every user waits on, and it never trains, so it can be compiled:
OpenVINO fuses its graph and runs it in fp32 (cosine 1.0000 to PyTorch on real slices), or, on CPUs
with bf16 instructions (AVX-512 BF16 on recent AMD and Intel server cores, AMX on Sapphire
Rapids and later), runs its matrix products in bf16, faster again but further from fp32.

``auto``, the default, is the fastest choice that keeps a cosine similarity of 0.999 to the
reference on real slices and the end-to-end Dice within 0.005 of it (docs/results.md, section
4.1): compiled fp32 wherever OpenVINO loads, on any CPU, since bf16 measured cosine 0.9987. Where
OpenVINO does not load, or on a GPU, ``auto`` falls back to the PyTorch reference and says why,
once per process. ``fp32`` asks for the reference explicitly (bit-identical numbers).
``--precision`` also sets how the decoder and the student train (``models.acceleration``).

The converted encoder is kept as OpenVINO IR beside the embeddings it produces (conversion
takes 15-50 s, once per cache folder; reading the IR back, about a second).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewsam.config import PRECISIONS, ConfigError

log = logging.getLogger("fewsam")

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class EncoderPrecision:
    """The resolved choice: ``name`` fp32 | bf16, ``backend`` torch | openvino, and why."""

    name: str
    backend: str
    reason: str = field(default="", compare=False)

    @property
    def signature(self) -> str | None:
        """What the embedding cache adds to its key; None for the fp32 reference path."""
        return None if self.backend == "torch" else f"{self.backend}-{self.name}"


FP32 = EncoderPrecision("fp32", "torch", "the reference path")


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU (or a test's ``flags``) has bf16 instructions."""
    return bool((cpu_flags() if flags is None else flags) & BF16_FLAGS)


def require_bf16(flags: frozenset[str] | None = None) -> None:
    """Refuse bf16 on a CPU without bf16 instructions: it would be emulated, hundreds of times slower."""
    if not has_bf16(flags):
        raise ConfigError("--precision bf16-openvino needs a CPU with bf16 instructions (avx512_bf16 or "
                          "amx_bf16) and this one has none; use --precision fp32-openvino (or auto)")


def openvino_problem() -> str | None:
    """Why OpenVINO cannot be used here (None: it loads). A broken install (a missing shared
    library) counts as not loading, so that ``auto`` falls back instead of failing."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "OpenVINO is not installed (pip install openvino)"
    except (OSError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"OpenVINO does not load ({first})"
    return None


def openvino_available() -> bool:
    return openvino_problem() is None


_said: set[str] = set()


def say_once(message: str) -> None:
    """Log ``message`` the first time this process says it: embed, fit and predict resolve the
    precision more than once, and the user needs to read the choice once."""
    if message not in _said:
        _said.add(message)
        log.info(message)


def check_precision_name(requested: str) -> None:
    """One line naming the choices, for the encoder's and the trained modules' resolution alike."""
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, not {requested!r}")


def resolve_precision(requested: str, device: str = "cpu", flags: frozenset[str] | None = None) -> EncoderPrecision:
    """The encoder's precision for ``--precision requested`` on this host (``flags`` for tests)."""
    check_precision_name(requested)
    if requested == "fp32":
        return FP32
    if not device.startswith("cpu"):
        return _chosen(FP32, f"encoder in fp32 with PyTorch: --precision {requested} applies to CPUs, not {device}")
    if requested == "bf16-openvino":
        require_bf16(flags)
    problem = openvino_problem()
    if problem is not None:
        if requested != "auto":
            raise ConfigError(f"--precision {requested} needs OpenVINO: {problem}; or use --precision fp32")
        return _chosen(FP32, f"encoder in fp32 with PyTorch: {problem}")
    if requested == "bf16-openvino":
        return _chosen(EncoderPrecision("bf16", "openvino"), "encoder in bf16, compiled by OpenVINO "
                       "(--precision fp32 for the PyTorch reference)")
    why_not_bf16 = ("bf16 would be faster but measured cosine 0.9987, below the 0.999 bar; --precision "
                    "bf16-openvino to choose it anyway" if has_bf16(flags) else "this CPU has no bf16 instructions")
    return _chosen(EncoderPrecision("fp32", "openvino"), f"encoder in fp32, compiled by OpenVINO ({why_not_bf16}; "
                   "--precision fp32 for the PyTorch reference)")


def _chosen(precision: EncoderPrecision, message: str) -> EncoderPrecision:
    say_once(message)
    return EncoderPrecision(precision.name, precision.backend, message)


class OpenVinoEncoder:
    """The frozen image encoder compiled by OpenVINO: (B, 3, S, S) float32 -> (B, 256, 64, 64) float32.

    Converted on first use and kept as IR in ``ir_dir`` (written atomically), which later
    processes read back instead of converting again.
    """

    def __init__(self, encoder: torch.nn.Module, image_size: int, precision: EncoderPrecision, ir_dir: Path) -> None:
        self.encoder, self.image_size, self.precision, self.ir_dir = encoder, image_size, precision, Path(ir_dir)
        self._compiled: Any = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            self._compiled = self._compile()
        out = torch.from_numpy(self._compiled(images.detach().cpu().float().numpy())[0])  # a copy, not a view
        # Hand the activations' buffers back to the allocator, where the decoder and student that
        # train next reuse them: held, they raised a fit's peak memory by ~0.25 GiB (about 12%),
        # and reallocating them costs nothing measurable beside a 2 s encoder pass.
        self._compiled.release_memory()
        return out

    def _compile(self) -> Any:
        import openvino as ov

        core = ov.Core()
        xml = self.ir_dir / "encoder.xml"
        model = core.read_model(xml) if xml.exists() else self._convert(ov)
        hint = {"fp32": "f32", "bf16": "bf16"}[self.precision.name]
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                  "PERFORMANCE_HINT": "LATENCY"}
        return core.compile_model(model, "CPU", config)

    def _convert(self, ov: Any) -> Any:
        log.info("converting the encoder for OpenVINO (once per model; kept in %s)", self.ir_dir)
        example = torch.zeros(1, 3, self.image_size, self.image_size)
        with torch.no_grad(), warnings.catch_warnings():
            # Shape-dependent branches (window padding) are traced as constants: right, because the
            # encoder only ever sees image_size x image_size inputs.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = ov.convert_model(self.encoder.eval(), example_input=example)
        self.ir_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ir-", dir=self.ir_dir.parent))
        try:
            ov.save_model(model, tmp / "encoder.xml", compress_to_fp16=False)
            os.replace(tmp, self.ir_dir)  # a folder rename is atomic: readers see all of the IR or none
        except OSError:
            pass  # another process put its (identical) IR there first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return model
