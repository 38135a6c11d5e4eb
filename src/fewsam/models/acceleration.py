"""How the modules fewsam trains run: the few-shot prompt decoder and the U-Net student.

``--precision`` chooses this together with the encoder's numerics (``models.precision``):

- ``fp32``: the reference: eager PyTorch, contiguous tensors, no autocast. It is the path the
  golden digests of ``tests/test_determinism.py`` hold bit for bit.
- ``fp32-openvino`` on a CPU, and ``auto`` on a CPU without bf16 instructions: still fp32
  everywhere; the prompt decoder's last product in the layout its features arrive in
  (``PrototypeDecoder.pixels_last``), and the U-Net student's convolutions in channels-last
  layout (oneDNN's native one: fewer reorders, less CPU time per training step and per
  prediction), in training, validation and predict alike, so that predict
  reproduces the validation that chose the checkpoint. Logits differ from the reference by
  rounding only (docs/results.md, section 4.1). The decoder runs as in the reference: nothing
  measured made it faster enough to pay (``torch.compile``: about 5% after 150 s of compiling).
- ``auto`` and ``mixed-openvino`` on a CPU with bf16 instructions (avx512_bf16 / amx_bf16): the
  U-Net student also runs under bf16 autocast (fp32 weights, optimiser and losses), which kept its
  validation Dice (supervised, FixMatch and distilled students: docs/results.md, section 4.4) and
  trains it faster; the decoder stays fp32 (autocast saved it little: its time goes to memory-bound
  ops at 256x256, not to matrix products).
- ``bf16-openvino`` (CPUs with bf16 instructions only): the decoder and the student both run
  under bf16 autocast, their outputs handed back in fp32 so that losses stay in fp32.

On a CUDA GPU, ``auto`` runs the decoder and the student under bf16 autocast (mixed precision:
fp32 weights, optimiser and losses; bf16 matrix products), where the GPU supports bf16 (Ampere
and later); elsewhere, or with ``--precision fp32``, the reference. The encoder stays in fp32 on
every GPU (``models.precision``): bf16 embeddings measured below the 0.999 cosine bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from fewsam.models.precision import check_precision_name, has_bf16, require_bf16
from fewsam.progress import say_once


@dataclass(frozen=True)
class Acceleration:
    """A resolved path for the trained modules; ``name`` is what RUN/config.json records."""

    name: str
    channels_last: bool = False  # the student's convolutions (and their inputs) in NHWC
    autocast: torch.dtype | None = None  # autocast dtype around the modules' forward
    device_type: str = "cpu"  # which autocast: "cpu" or "cuda"
    decoder_autocast: bool = True  # whether ``autocast`` also applies to the prompt decoder
    reason: str = field(default="", compare=False)


REFERENCE = Acceleration("reference", reason="the reference path")
FP32_FAST = Acceleration("fp32-channels-last", channels_last=True)
BF16_AUTOCAST = Acceleration("bf16-autocast", channels_last=True, autocast=torch.bfloat16)
BF16_STUDENT = Acceleration("bf16-autocast-student", channels_last=True, autocast=torch.bfloat16,
                            decoder_autocast=False)
CUDA_BF16 = Acceleration("cuda-bf16-autocast", autocast=torch.bfloat16, device_type="cuda")
BY_NAME = {a.name: a for a in (REFERENCE, FP32_FAST, BF16_AUTOCAST, BF16_STUDENT, CUDA_BF16)}


def resolve_acceleration(requested: str, device: str = "cpu", flags: frozenset[str] | None = None,
                         cuda_bf16: bool | None = None) -> Acceleration:
    """The trained modules' path for ``--precision requested`` on this host (``flags`` and
    ``cuda_bf16``, whether the GPU supports bf16, for tests)."""
    check_precision_name(requested)
    if requested == "fp32":
        return REFERENCE
    if device.startswith("cuda"):
        return _cuda_path(requested, device, cuda_bf16)
    if not device.startswith("cpu"):
        return _chosen(REFERENCE, f"--precision {requested} applies to CPUs and CUDA GPUs, not {device}")
    if requested == "bf16-openvino":
        require_bf16(flags)
        return _chosen(BF16_AUTOCAST, "--precision bf16-openvino")
    if requested in ("auto", "mixed-openvino") and has_bf16(flags):
        return _chosen(BF16_STUDENT, "this CPU has bf16 instructions")
    return _chosen(FP32_FAST, "this CPU has no bf16 instructions" if requested == "auto" else f"--precision {requested}")


def _cuda_path(requested: str, device: str, cuda_bf16: bool | None) -> Acceleration:
    if requested != "auto":
        return _chosen(REFERENCE, f"on {device}: --precision {requested} names a CPU path (auto gives bf16 autocast "
                                  "on GPUs that support it)")
    if not (_cuda_supports_bf16() if cuda_bf16 is None else cuda_bf16):
        return _chosen(REFERENCE, f"{device} has no bf16 support")
    return _chosen(CUDA_BF16, f"on {device}; --precision fp32 for the fp32 reference")


def _cuda_supports_bf16() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def acceleration_of_run(config: dict[str, Any], device: str = "cpu", flags: frozenset[str] | None = None
                        ) -> Acceleration:
    """The path a fitted run predicts with: the one it was trained (and validated) with, as
    RUN/config.json records it, unless this host or device cannot run it (then fp32)."""
    recorded = BY_NAME.get(config.get("acceleration", REFERENCE.name), REFERENCE)
    if recorded == REFERENCE:
        return REFERENCE
    if recorded.device_type == "cuda":  # a GPU-trained run: its autocast on a GPU with bf16, else fp32
        return recorded if device.startswith("cuda") and _cuda_supports_bf16() else REFERENCE
    if not device.startswith("cpu"):
        return REFERENCE
    if recorded.autocast is not None and not has_bf16(flags):
        say_once("this run trained under bf16 autocast, but this CPU has no bf16 instructions: predicting in fp32")
        return _chosen(FP32_FAST, "this run trained under bf16 autocast, but this CPU has no bf16 instructions")
    return recorded


def _chosen(acceleration: Acceleration, why: str) -> Acceleration:
    """``acceleration`` with the reason it was chosen, said by ``prepare_student`` / ``prepare_decoder``
    for the modules a method really has (few-shot SAM has no U-Net student to speak of)."""
    return replace(acceleration, reason=why)


def _say_path(module: str, how: str, acceleration: Acceleration) -> None:
    """Said once per module and path: a second fit or prediction in the process on another path (bf16
    autocast, then fp32) says its own, where one key per module repeated the first path into its log."""
    why = f" ({acceleration.reason})" if acceleration.reason else ""
    say_once(f"{module} {how}{why}", key=f"acceleration-{module}-{how}")


def prepare_student(module: nn.Module, acceleration: Acceleration) -> nn.Module:
    """The U-Net student (in place) for training on ``acceleration``'s path; the reference is untouched."""
    how = ("under bf16 autocast" if acceleration.autocast is not None else "in fp32") + \
        (", channels-last" if acceleration.channels_last else "")
    _say_path("U-Net student", how, acceleration)
    if acceleration.channels_last:
        module.to(memory_format=torch.channels_last)
        module.register_forward_pre_hook(_channels_last_input)
    if acceleration.autocast is not None:
        _autocast_forward(module, acceleration.autocast, acceleration.device_type)
    return module


def prepare_decoder(module: nn.Module, acceleration: Acceleration) -> nn.Module:
    """The prompt decoder (in place): only autocast applies (channels-last measured slower on its
    transposed convolutions), and only on paths that choose it for the decoder too."""
    autocast = acceleration.autocast is not None and acceleration.decoder_autocast
    if acceleration.autocast is not None and not autocast and acceleration.reason:  # a fit's choice: why it differs
        acceleration = _chosen(acceleration, f"{acceleration.reason}, but it gains too little from them")
    _say_path("prompt decoder", "under bf16 autocast" if autocast else "in fp32", acceleration)
    if autocast:
        _autocast_forward(module, acceleration.autocast, acceleration.device_type)
    if hasattr(module, "pixels_last"):  # a decoder that can keep its features' layout (fewshot.PrototypeDecoder)
        module.pixels_last = acceleration != REFERENCE
    return module


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    """Hand a 4D input to the convolutions in channels-last: oneDNN then skips a reorder per layer."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)


def _autocast_forward(module: nn.Module, dtype: torch.dtype, device_type: str = "cpu") -> None:
    """Run ``module``'s forward under ``device_type`` autocast and return its output in fp32, via
    hooks, so that its state-dict names stay those of the reference module."""
    active: list[Any] = []

    def enter(mod: nn.Module, args: tuple) -> None:
        context = torch.autocast(device_type, dtype=dtype)
        context.__enter__()
        active.append(context)

    def leave(mod: nn.Module, args: tuple, output: Any) -> Any:
        active.pop().__exit__(None, None, None)
        return output.float() if isinstance(output, torch.Tensor) else output

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave, always_call=True)
