"""The image-side student shared by ``supervised`` and ``samatch``: a small 2D U-Net (MONAI) on
slices resized to a fixed square, its augmentations, validation and predictor.

Unlike the SAM-side methods the student sees pixels, not cached embeddings, so it may augment
freely (METHODS.md, "Design decision"). Every random choice comes from the numpy generator the
training loop passes in (or torch's RNG, which the loop checkpoints), so runs resume exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewsam.data.types import Case, Dataset, SliceRef
from fewsam.embedded import EmbeddedSlice
from fewsam.inference import stack_volume
from fewsam.metrics import dice_per_class
from fewsam.runs import read_config
from fewsam.train import BEST

IGNORE = 255


@dataclass
class StudentConfig:
    """The U-Net and its input size; augmentation strengths (weak = geometric, strong adds colour)."""

    image_size: int = 256
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_res_units: int = 1
    batch_size: int = 8
    rotate_deg: float = 20.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    flip: bool = True

    @classmethod
    def from_json(cls, data: dict) -> "StudentConfig":
        data = dict(data)
        data["channels"] = tuple(data["channels"])
        data["scale_range"] = tuple(data["scale_range"])
        return cls(**data)


def build_unet(cfg: StudentConfig, n_outputs: int) -> nn.Module:
    """MONAI's 2D U-Net: 1 greyscale channel in, background + classes out."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=n_outputs, channels=tuple(cfg.channels),
                strides=(2,) * (len(cfg.channels) - 1), num_res_units=cfg.num_res_units, norm="batch")


# --- slices in the student's frame ------------------------------------------------------------

def student_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) or (H, W, 3) slice -> (1, size, size) float32, greyscale, min-max scaled to [0, 1]."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    lo, hi = t.min(), t.max()
    t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def student_label(label: np.ndarray, size: int, lut: np.ndarray) -> torch.Tensor:
    """(H, W) label values -> (size, size) uint8 class indices (nearest neighbour)."""
    index = torch.from_numpy(lut[np.asarray(label, dtype=np.int64)].astype(np.float32))[None, None]
    return F.interpolate(index, size=(size, size), mode="nearest-exact")[0, 0].to(torch.uint8)


def value_lut(values: list[int]) -> np.ndarray:
    """Label value -> class index (0 = background); unknown values map to background."""
    lut = np.zeros(256, dtype=np.int64)
    for i, v in enumerate(values):
        lut[v] = i
    return lut


@dataclass
class SliceSet:
    """Slices as student tensors: images (N, 1, S, S); labels (N, S, S) uint8 indices or None.

    ``originals`` keeps each slice's original-resolution label (for pseudo-label quality) when
    asked for; ``shapes`` the original (H, W) of each slice.
    """

    refs: list[SliceRef]
    images: torch.Tensor
    labels: torch.Tensor | None
    shapes: list[tuple[int, int]] = field(default_factory=list)
    originals: list[np.ndarray] | None = None


def load_slices(dataset: Dataset, refs: Sequence[SliceRef], size: int, values: list[int],
                keep_originals: bool = False) -> SliceSet:
    """Read the slices (each case once) into the student frame."""
    lut = value_lut(values)
    cases: dict[str, Case] = {}
    images, labels, shapes, originals = [], [], [], []
    for ref in refs:
        if ref.case_id not in cases:
            cases.clear()  # refs come grouped by case in budget order: keep one case in memory
            cases[ref.case_id] = dataset.load(ref.case_id)
        case = cases[ref.case_id]
        image, label = case.slice_image(ref.z), case.slice_label(ref.z)
        images.append(student_image(image, size))
        shapes.append(tuple(image.shape[:2]))
        labels.append(None if label is None else student_label(label, size, lut))
        if keep_originals:
            originals.append(None if label is None else lut[np.asarray(label, dtype=np.int64)].astype(np.uint8))
    has_labels = all(lab is not None for lab in labels) and labels
    return SliceSet(list(refs), torch.stack(images) if images else torch.zeros(0, 1, size, size),
                    torch.stack(labels) if has_labels else None, shapes, originals if keep_originals else None)


# --- augmentation -----------------------------------------------------------------------------

def random_affine(n: int, rng: np.random.Generator, cfg: StudentConfig) -> torch.Tensor:
    """(n, 2, 3) affine matrices for ``F.affine_grid``: rotation, isotropic scale, flips."""
    angle = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, n))
    scale = rng.uniform(cfg.scale_range[0], cfg.scale_range[1], n)
    fx = np.where(rng.random(n) < 0.5, -1.0, 1.0) if cfg.flip else np.ones(n)
    fy = np.where(rng.random(n) < 0.5, -1.0, 1.0) if cfg.flip else np.ones(n)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fy
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx, cos * fy
    return torch.from_numpy(theta)


def warp(x: torch.Tensor, theta: torch.Tensor, nearest: bool = False, fill: float = 0.0) -> torch.Tensor:
    """Apply affine ``theta`` to (N, C, S, S) images (bilinear) or label maps (``nearest``)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = x.float()
    if fill:  # outside the image: shift so that zero padding becomes `fill`
        return F.grid_sample(x - fill, grid, mode="nearest" if nearest else "bilinear",
                             padding_mode="zeros", align_corners=False) + fill
    return F.grid_sample(x, grid, mode="nearest" if nearest else "bilinear", padding_mode="zeros",
                         align_corners=False)


def warp_labels(labels: torch.Tensor, theta: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """(N, S, S) integer maps -> warped (N, S, S) long (nearest); outside the image -> ``fill``."""
    return warp(labels[:, None].float(), theta, nearest=True, fill=float(fill))[:, 0].round().long()


def strong_photometric(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """FixMatch-style strong view of (N, 1, S, S) images in [0, 1]: brightness/contrast jitter,
    Gaussian blur and cutout, each sample with its own random parameters."""
    out = []
    for img in x:
        if rng.random() < 0.8:
            img = img + rng.uniform(-0.2, 0.2)
        if rng.random() < 0.8:
            mean = img.mean()
            img = (img - mean) * rng.uniform(0.7, 1.3) + mean
        if rng.random() < 0.5:
            img = gaussian_blur(img, rng.uniform(0.1, 1.5))
        if rng.random() < 0.5:
            img = cutout(img, rng)
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1, S, S) image blurred with a separable Gaussian of ``sigma`` pixels."""
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(img[None], (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))[0]


def cutout(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Zero a random rectangle covering 2-40% of the image."""
    s = img.shape[-1]
    area = rng.uniform(0.02, 0.4) * s * s
    ratio = rng.uniform(0.3, 1 / 0.3)
    h, w = min(s, int(math.sqrt(area * ratio))), min(s, int(math.sqrt(area / ratio)))
    y, x = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
    img = img.clone()
    img[..., y:y + h, x:x + w] = 0.0
    return img


def augment_labelled(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator,
                     cfg: StudentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The weak (geometric) view of a labelled batch: images (N,1,S,S), labels (N,S,S) long."""
    theta = random_affine(len(images), rng, cfg)
    return warp(images, theta), warp_labels(labels, theta)


# --- prediction and validation ----------------------------------------------------------------

def predict_images(module: nn.Module, images: np.ndarray | list[np.ndarray], cfg: StudentConfig,
                   device: str = "cpu", batch_size: int = 16) -> list[torch.Tensor]:
    """Softmax probabilities (Q, H, W) at each slice's original size, for a list of 2D slices."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = torch.stack([student_image(img, cfg.image_size) for img in chunk]).to(device)
        with torch.no_grad():
            logits = module(x).float()
        for img, lg in zip(chunk, logits):
            full = F.interpolate(lg[None], size=tuple(img.shape[:2]), mode="bilinear", align_corners=False)
            out.append(full[0].softmax(dim=0).cpu())
    return out


def predict_case_labels(module: nn.Module, case: Case, cfg: StudentConfig, values: list[int],
                        device: str = "cpu") -> np.ndarray:
    """(D, H, W) uint8 label values of one case."""
    slices = [case.slice_image(z) for z in range(case.num_slices)]
    probs = predict_images(module, slices, cfg, device)
    lut = np.asarray(values, dtype=np.uint8)
    return stack_volume([lut[p.argmax(dim=0).numpy()] for p in probs])


def volume_dice_score(module: nn.Module, val_cases: list[Case], cfg: StudentConfig, values: list[int],
                      device: str = "cpu") -> dict[str, float]:
    """Mean over volumes of the mean per-class 3D Dice: the model-selection score."""
    was_training = module.training
    module.eval()
    scores = []
    for case in val_cases:
        pred = predict_case_labels(module, case, cfg, values, device)
        scores.append(np.mean(list(dice_per_class(pred, case.label, values[1:]).values())))
    module.train(was_training)
    score = float(np.mean(scores)) if scores else 0.0
    return {"score": score, "dice": score}


def student_run_config(cfg: StudentConfig) -> dict:
    return asdict(cfg)


class StudentPredictor:
    """Predicts with a fitted supervised / SAM-Match run: the best-validated U-Net, from pixels only."""

    needs_embeddings = False

    def __init__(self, run_dir: Path, device: str = "cpu") -> None:
        config = read_config(run_dir)
        self.cfg = StudentConfig.from_json(config["student"])
        self.values = list(config["values"])
        self.device = device
        self.module = build_unet(self.cfg, len(self.values)).to(device)
        best = torch.load(Path(run_dir) / BEST, map_location="cpu", weights_only=True)
        self.module.load_state_dict(best["module"])
        self.module.eval()

    def predict_case(self, case: Case, slices: list[EmbeddedSlice]) -> np.ndarray:
        return predict_case_labels(self.module, case, self.cfg, self.values, self.device)
