"""Augmented copies of labelled slices, encoded by the frozen encoder like any slice.

The few-shot decoder learns from cached embeddings, so augmentation has to happen before the
encoder: each copy is a new image with its own embedding. The transforms are nnU-Net's default
spatial and intensity augmentations (rotation, isotropic scale, gamma, Gaussian noise and blur,
simulated low resolution) with nnU-Net's ranges, applied in the slice's own pixels and intensity
range, so that the usual percentile clipping and scaling then see a plausible image from another
scanner or patient: what a decoder fitted on a few patients must survive on new ones.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fewsam.data.types import Case


@dataclass(frozen=True)
class SliceAugmentation:
    """Ranges and probabilities of each transform (nnU-Net's 2D defaults where it has one)."""

    rotate_deg: float = 30.0
    scale: tuple[float, float] = (0.7, 1.4)
    p_spatial: float = 0.8
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.3
    noise_std: tuple[float, float] = (0.0, 0.05)  # of the clipped intensity range
    p_noise: float = 0.15
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # pixels
    p_blur: float = 0.2
    low_resolution: tuple[float, float] = (0.5, 1.0)  # zoom before zooming back
    p_low_resolution: float = 0.25


def slice_rng(seed: int, copy: int, case_id: str, z: int) -> np.random.Generator:
    """The random numbers of one augmented copy of one slice: the same for the same fit and slice
    whatever else is augmented, so a resumed or repeated fit encodes the same images."""
    return np.random.default_rng([seed, copy, zlib.crc32(case_id.encode()), z])


def augment_slice(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  aug: SliceAugmentation = SliceAugmentation()) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy of an (H, W[, C]) image and its (H, W) label (label values kept)."""
    if rng.random() < aug.p_spatial:
        image, label = _spatial(image, label, rng, aug)
    return _intensity(image, rng, aug), label


def augmented_case(case: Case, seed: int, copy: int, aug: SliceAugmentation = SliceAugmentation()) -> Case:
    """``case`` with every slice replaced by its augmented copy number ``copy``."""
    images, labels = [], []
    for z in range(case.num_slices):
        rng = slice_rng(seed, copy, case.case_id, z)
        image, label = augment_slice(case.slice_image(z), case.slice_label(z), rng, aug)
        images.append(image)
        labels.append(label)
    return Case(case.case_id, np.stack(images).astype(case.image.dtype, copy=False),
                np.stack(labels).astype(case.label.dtype, copy=False), case.format, case.rel_path, case.spacing,
                case.attributes, case.meta, case.ignore)


def _spatial(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, aug: SliceAugmentation
             ) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and isotropic scale about the centre; what comes in from outside the slice is its
    darkest value and the label's most common border value (background)."""
    angle = np.deg2rad(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
    scale = rng.uniform(*aug.scale)
    # output pixel o samples input pixel matrix @ o + offset; a scale above 1 enlarges the anatomy
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    centre = (np.array(label.shape, dtype=float) - 1) / 2
    offset = centre - matrix @ centre
    border = np.concatenate([label[0], label[-1], label[:, 0], label[:, -1]])
    fill_label = int(np.bincount(border.astype(np.int64)).argmax())
    warped_label = ndimage.affine_transform(label, matrix, offset, order=0, mode="constant", cval=fill_label)
    channels = image[..., None] if image.ndim == 2 else image
    warped = np.stack([ndimage.affine_transform(channels[..., c].astype(np.float32), matrix, offset, order=1,
                                                mode="constant", cval=float(channels[..., c].min()))
                       for c in range(channels.shape[-1])], axis=-1)
    return (warped[..., 0] if image.ndim == 2 else warped), warped_label


def _intensity(image: np.ndarray, rng: np.random.Generator, aug: SliceAugmentation) -> np.ndarray:
    """Gamma, noise, blur and low resolution on the image scaled to its clipped range (the range the
    model's preprocessing keeps), then back; an image none of them is drawn for is returned as it is."""
    drawn = [rng.random() < p for p in (aug.p_gamma, aug.p_noise, aug.p_blur, aug.p_low_resolution)]
    lo, hi = np.percentile(image, (0.5, 99.5))
    if not any(drawn) or not hi > lo:
        return image
    x = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    if drawn[0]:
        x = x ** rng.uniform(*aug.gamma)
    if drawn[1]:
        x = x + rng.normal(0.0, rng.uniform(*aug.noise_std), x.shape).astype(np.float32)
    if drawn[2]:
        x = ndimage.gaussian_filter(x, (rng.uniform(*aug.blur_sigma),) * 2 + (0.0,) * (x.ndim - 2))
    if drawn[3]:
        x = _low_resolution(x, rng.uniform(*aug.low_resolution))
    return (x * (hi - lo) + lo).astype(np.float32)


def _low_resolution(x: np.ndarray, zoom: float) -> np.ndarray:
    """``x`` shrunk by ``zoom`` (nearest) and brought back to its size (cubic), as a coarser scanner."""
    factors = (zoom, zoom) + (1.0,) * (x.ndim - 2)
    small = ndimage.zoom(x, factors, order=0)
    back = [s / t for s, t in zip(x.shape, small.shape)]
    out = ndimage.zoom(small, back, order=3)
    return out[tuple(slice(0, s) for s in x.shape)]
