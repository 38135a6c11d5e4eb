"""How the frozen encoder runs: PyTorch fp32 (the exact reference), or compiled by OpenVINO.

The encoder is the cost every user waits on, and it never trains, so it can be compiled:
OpenVINO fuses its graph and runs it in fp32 (cosine 1.0000 to PyTorch on real slices), or, on CPUs
with bf16 instructions (AVX-512 BF16 on recent AMD and Intel server cores, AMX on Sapphire
Rapids and later), runs its matrix products in bf16, faster again but further from fp32.

``auto``, the default, is the fastest choice that keeps a cosine similarity of 0.999 to the
reference on real slices and the end-to-end Dice within 0.005 of it (docs/results.md, section
4.1): on CPUs with bf16 instructions, ``mixed``: the encoder's convolutional stages in fp32 and its
attention stages in bf16, one compiled graph per precision (cosine 0.9994; the whole encoder in bf16
measured 0.9987); elsewhere compiled fp32 wherever OpenVINO loads. Where OpenVINO does not load,
or on a GPU, ``auto`` falls back to the PyTorch reference and says why, once per process.
``fp32`` asks for the reference explicitly (bit-identical numbers).
``--precision`` also sets how the decoder and the student train (``models.acceleration``).

The converted encoder is kept as OpenVINO IR beside the embeddings it produces (conversion
takes 15-50 s, once per cache folder; reading the IR back, about a second).
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import secrets
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from fewsam.atomic import (can_write_in, hold, let_go, make_temporary_folder, refused_write, remove_abandoned,
                           stop_signals_held)
from fewsam.config import PRECISIONS, ConfigError
from fewsam.progress import say_once

log = logging.getLogger("fewsam")

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class EncoderPrecision:
    """The resolved choice: ``name`` fp32 | mixed | bf16, ``backend`` torch | openvino, and why."""

    name: str
    backend: str
    reason: str = field(default="", compare=False)

    @property
    def signature(self) -> str | None:
        """What the embedding cache adds to its key; None for the fp32 reference path."""
        return None if self.backend == "torch" else f"{self.backend}-{self.name}"


FP32 = EncoderPrecision("fp32", "torch", "the reference path")
# the instruction sets that decide which precision pays off on a CPU
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                  "amx_int8")


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


def machine() -> dict[str, Any]:
    """The CPU model and the instruction-set flags that decide which precisions pay off (bench, fit.log)."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in RELEVANT_FLAGS if f in cpu_flags()],
            "torch_threads": torch.get_num_threads()}


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU (or a test's ``flags``) has bf16 instructions."""
    return bool((cpu_flags() if flags is None else flags) & BF16_FLAGS)


def require_bf16(flags: frozenset[str] | None = None, requested: str = "bf16-openvino") -> None:
    """Refuse bf16 on a CPU without bf16 instructions: it would be emulated, hundreds of times slower."""
    if not has_bf16(flags):
        raise ConfigError(f"--precision {requested} needs a CPU with bf16 instructions (avx512_bf16 or "
                          "amx_bf16) and this one has none; use --precision fp32-openvino (or auto)")


# OpenVINO's converter modules that pick ``openvino_telemetry`` (or the stand-in it ships) as ``tm``
TELEMETRY_USERS = ("openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.convert_impl", "openvino.tools.ovc.utils")


def import_openvino() -> Any:
    """``openvino``, with its converter's usage telemetry replaced by the stand-in OpenVINO uses when
    ``openvino_telemetry`` is not installed.

    That telemetry sends each event (one at ``import openvino``, more per ``convert_model``) from a
    thread pool that forks a process per event. A fork from a thread can hang the whole process for
    good: the fork first takes h5py's lock (h5py's at-fork handler), then waits for the import
    lock, while the main thread, inside an import, has the garbage collector free an h5py file and
    waits for h5py's lock. fewsam reads h5 data in the process that converts, so it must not fork
    from threads. Blocking the package before the first ``import openvino`` keeps OpenVINO's own
    fallback for every module; the stand-in is also put in modules already imported by then."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # import -> ImportError
    import openvino

    _replace_loaded_telemetry()
    return openvino


@cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, shared by every compiled encoder.

    Each Core starts its own CPU plugin, and each plugin puts in an alternate signal stack of its
    own, restoring the one it found when it is destroyed. Two Cores destroyed in the order they
    were made (a cache of one run freed before another's) leave the thread on the first plugin's
    freed stack, and the next signal -- Ctrl-C in a fit -- ends the process in a segmentation
    fault instead of a clean stop. One Core, kept for the process's life, makes one plugin."""
    return import_openvino().Core()


def _replace_loaded_telemetry() -> None:
    """Converter modules that imported the real telemetry before fewsam did (a caller's own
    ``import openvino`` first) get the stand-in; nothing when OpenVINO has no stand-in."""
    try:
        from openvino.tools.ovc import telemetry_stub
    except ImportError:
        return
    for name in TELEMETRY_USERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "tm", telemetry_stub) is not telemetry_stub:
            module.tm = telemetry_stub  # type: ignore[attr-defined]


def openvino_problem() -> str | None:
    """Why OpenVINO cannot be used here (None: it loads). A broken install (a missing shared
    library) counts as not loading, so that ``auto`` falls back instead of failing."""
    try:
        import_openvino()
    except ImportError:
        return "OpenVINO is not installed (pip install openvino)"
    except (OSError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"OpenVINO does not load ({first})"
    return None


def openvino_available() -> bool:
    return openvino_problem() is None


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
    if requested in ("bf16-openvino", "mixed-openvino"):
        require_bf16(flags, requested)
    problem = openvino_problem()
    if problem is not None:
        if requested != "auto":
            raise ConfigError(f"--precision {requested} needs OpenVINO: {problem}; or use --precision fp32")
        return _chosen(FP32, f"encoder in fp32 with PyTorch: {problem}")
    if requested == "bf16-openvino":
        return _chosen(EncoderPrecision("bf16", "openvino"), "encoder in bf16, compiled by OpenVINO "
                       "(--precision fp32 for the PyTorch reference)")
    if requested == "mixed-openvino" or (requested == "auto" and has_bf16(flags)):
        return _chosen(EncoderPrecision("mixed", "openvino"), "encoder compiled by OpenVINO in mixed precision: "
                       "its convolutional stages in fp32, its attention stages in bf16 (cosine 0.9994 to fp32; "
                       "--precision fp32 for the PyTorch reference)")
    why = "" if requested == "fp32-openvino" else "this CPU has no bf16 instructions; "
    return _chosen(EncoderPrecision("fp32", "openvino"), f"encoder in fp32, compiled by OpenVINO ({why}"
                   "--precision fp32 for the PyTorch reference)")


def _chosen(precision: EncoderPrecision, message: str) -> EncoderPrecision:
    say_once(message)
    return EncoderPrecision(precision.name, precision.backend, message)


class OpenVinoEncoder:
    """The frozen image encoder compiled by OpenVINO: (B, 3, S, S) float32 -> (B, 256, 64, 64) float32.

    fp32 and bf16 compile the whole graph at one precision. ``mixed`` compiles one graph per run of
    stages that share a precision (``stage_plan``) and chains them. Converted on first use and kept
    as IR in ``ir_dir`` (written atomically), which later processes read back instead of converting
    again.
    """

    def __init__(self, encoder: torch.nn.Module, image_size: int, precision: EncoderPrecision, ir_dir: Path) -> None:
        self.encoder, self.image_size, self.precision = encoder, image_size, precision
        self.stages = stage_plan(encoder, precision)
        # Split IR is a different set of files from the whole graph's: a folder of its own, named by
        # the split so that IR of another split is never read back as this one.
        self.ir_dir = Path(ir_dir) if len(self.stages) == 1 else Path(f"{ir_dir}-{_split_name(self.stages)}")
        self._compiled: list[Any] | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            self._compiled = self._compile()
        x = images.detach().cpu().float().numpy()
        for stage in self._compiled:
            x = stage(x)[0]
        # OpenVINO keeps its activation buffers between calls: freed and reallocated on every call
        # (``release_memory``), they left holes among the embeddings kept from each pass, and a
        # cold-cache fit's peak memory grew ~1 GiB more in training than with the buffers held.
        return torch.from_numpy(x.copy())  # the output tensor's memory is reused by the next call

    def _compile(self) -> list[Any]:
        ov = import_openvino()
        core = openvino_core()
        files = [self.ir_dir / _ir_name(i, len(self.stages)) for i in range(len(self.stages))]
        models = self._read_ir(core, ov, files) if all(f.exists() for f in files) else self._convert(ov)
        return [core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[hint],
                                                  "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                  "PERFORMANCE_HINT": "LATENCY"})
                for model, (_, hint) in zip(models, self.stages)]

    def _read_ir(self, core: Any, ov: Any, files: list[Path]) -> list[Any]:
        """The IR an earlier process kept. Damaged IR (truncated by a full disk or a partial copy of
        the cache) is set aside and converted again, as a corrupt embedding is recomputed, instead
        of ending every command that encodes in OpenVINO's traceback."""
        try:
            return [core.read_model(f) for f in files]
        except RuntimeError as err:
            reason = next((line.strip() for line in str(err).splitlines()[::-1] if line.strip()), type(err).__name__)
            say_once(f"the compiled encoder in {self.ir_dir} is damaged ({reason}); converting it again")
            _set_aside(self.ir_dir)
            return self._convert(ov)

    def _convert(self, ov: Any) -> list[Any]:
        if can_write_in(self.ir_dir.parent):  # else ``_keep`` says it is not kept
            log.info("converting the encoder for OpenVINO (once per model; kept in %s)", self.ir_dir)
        example = torch.zeros(1, 3, self.image_size, self.image_size)
        models = []
        with torch.no_grad(), warnings.catch_warnings():
            # Shape-dependent branches (window padding) are traced as constants: right, because the
            # encoder only ever sees image_size x image_size inputs.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            for module, _ in self.stages:
                models.append(_convert_stage(ov, module.eval(), example))
                example = module(example)
        self._keep(ov, models)
        return models

    def _keep(self, ov: Any, models: list[Any]) -> None:
        """Store the converted IR for later processes; where the cache is read-only it is used from
        memory by this process alone, said once, and each command converts it again."""
        try:
            if not can_write_in(self.ir_dir.parent):
                raise PermissionError(errno.EACCES, "read-only", str(self.ir_dir.parent))
            self.ir_dir.parent.mkdir(parents=True, exist_ok=True)
            remove_abandoned(self.ir_dir.parent, IR_TEMPORARY)  # a conversion killed while it was being kept
            tmp = make_temporary_folder(self.ir_dir.parent, IR_TEMPORARY)
        except OSError as err:
            if not refused_write(err):
                raise
            say_once(f"the compiled encoder cannot be kept in {self.ir_dir.parent} ({err.strerror}): it is "
                     "converted in memory for this command, and again by each command on this cache")
            return
        held = hold(tmp)
        try:
            for i, model in enumerate(models):
                ov.save_model(model, tmp / _ir_name(i, len(models)), compress_to_fp16=False)
            os.replace(tmp, self.ir_dir)  # a folder rename is atomic: readers see all of the IR or none
        except OSError:
            pass  # another process put its (identical) IR there first
        finally:
            let_go(held)
            shutil.rmtree(tmp, ignore_errors=True)


def _convert_stage(ov: Any, module: torch.nn.Module, example: torch.Tensor) -> Any:
    """One stage converted with Ctrl-C and SIGTERM held until it is done (``stop_signals_held``):
    OpenVINO's converter calls back into Python, and the stop a handler raises there came out as
    OpenVINO's conversion-failure traceback instead of the stop the user asked for."""
    with stop_signals_held():
        return ov.convert_model(module, example_input=example)


OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}
IR_TEMPORARY = ".ir-"  # + 8 hex digits: the folder a converted encoder is written into before its rename


def _set_aside(folder: Path) -> None:
    """Remove ``folder`` by renaming it away first (atomic), so that no reader meets it half-deleted
    and a new folder of its name can be put in place; nothing if another process did it first."""
    aside = folder.parent / f".{folder.name}.damaged-{secrets.token_hex(4)}"
    try:
        folder.rename(aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def for_encoder(precision: EncoderPrecision, encoder: torch.nn.Module) -> EncoderPrecision:
    """``precision`` as this encoder can run it: ``mixed`` needs the encoder to name its stages
    (``precision_stages()``, measured for LiteMedSAM's TinyViT); other encoders compile in fp32,
    and their embeddings are cached as fp32 ones."""
    if precision.name != "mixed" or hasattr(encoder, "precision_stages"):
        return precision
    return _chosen(EncoderPrecision("fp32", "openvino"), f"encoder in fp32, compiled by OpenVINO: "
                   f"{type(encoder).__name__} has no measured mixed-precision split")


def stage_plan(encoder: torch.nn.Module, precision: EncoderPrecision) -> list[tuple[torch.nn.Module, str]]:
    """(module, fp32 | bf16) pieces whose composition is the encoder: the whole encoder at one
    precision, or for ``mixed`` the stages ``precision_stages()`` marks precision-sensitive in fp32
    and the rest in bf16, consecutive stages of one precision joined into one piece. Each piece is
    compiled apart and holds its own buffers and kernels; one piece per stage held 0.3 GiB more
    resident memory than one per precision, for the same output bit for bit, and ran slower."""
    if precision.name != "mixed":
        return [(encoder, precision.name)]
    pieces: list[tuple[list[torch.nn.Module], str]] = []
    for module, keep_fp32 in encoder.precision_stages():
        hint = "fp32" if keep_fp32 else "bf16"
        if pieces and pieces[-1][1] == hint:
            pieces[-1][0].append(module)
        else:
            pieces.append(([module], hint))
    return [(modules[0] if len(modules) == 1 else torch.nn.Sequential(*modules), hint) for modules, hint in pieces]


def _split_name(stages: list[tuple[torch.nn.Module, str]]) -> str:
    return "-".join(hint for _, hint in stages)


def _ir_name(index: int, count: int) -> str:
    return "encoder.xml" if count == 1 else f"stage-{index}.xml"
