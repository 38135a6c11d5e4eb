"""Which torch devices fewsam can run on: checked before any data is read or model loaded, by the
command line and the Python API alike, so a mistyped or absent device is one line naming it rather
than torch's own error from deep inside model loading."""

from __future__ import annotations

from fewsam.errors import FewsamError


def check_device(device: str) -> None:
    """Refuse a device this torch cannot use (an unknown name, CUDA on a CPU-only build or without a
    GPU, a GPU index that is not there) with one line."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise FewsamError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        _check_cuda(device, parsed.index)
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise FewsamError(f"--device {device}: this machine or torch build has no MPS; use --device cpu")
    elif parsed.type not in ("cpu", "mps"):
        raise FewsamError(f"--device {device!r} is not supported; use cpu, cuda or cuda:N")


def _check_cuda(device: str, index: int | None) -> None:
    import torch

    if torch.version.cuda is None:
        raise FewsamError(f"--device {device}: this torch ({torch.__version__}) is built without CUDA; "
                          "use --device cpu or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise FewsamError(f"--device {device}: no CUDA GPU is visible to torch {torch.__version__}; "
                          "use --device cpu or check the driver and CUDA_VISIBLE_DEVICES")
    if index is not None and index >= torch.cuda.device_count():
        raise FewsamError(f"--device {device}: there is no GPU {index} ({torch.cuda.device_count()} visible); "
                          f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
