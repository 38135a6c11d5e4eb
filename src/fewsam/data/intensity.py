"""Intensity scaling shared by every model input: robust percentile clipping, then [0, 1].

Plain min-max scaling lets one bright artefact set the range: a single hot pixel at the field's
edge at 6x the tissue's brightness leaves the anatomy in the bottom sixth of [0, 1], and the
frozen encoder then sees an almost black image. MedSAM and LiteMedSAM were trained on images
clipped to their 0.5th-99.5th intensity percentiles before scaling, so clipping also matches the
distribution the weights expect.
"""

from __future__ import annotations

import numpy as np
import torch

# Percentiles (of all pixels, all channels) that bound the intensity range before scaling.
CLIP_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def clip_to_percentiles(image: np.ndarray, percentiles: tuple[float, float] | None) -> np.ndarray:
    """``image`` with values outside its ``percentiles`` (low, high) set to those bounds.

    ``None`` returns the image unchanged. An image whose bounds coincide (mostly one value) is
    returned unchanged too, so a sparse bright structure on a flat background is not erased.
    """
    if percentiles is None:
        return image
    lo, hi = np.percentile(image, percentiles)
    if not hi > lo:
        return image
    return np.clip(image, lo, hi)


def scale_to_unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` min-max scaled to [0, 1] over all its values; a constant image becomes zeros.

    Both differences are taken of halved values: a float32 image whose range exceeds float32's
    (-3e38 to 3e38, a no-data fill) would otherwise overflow to inf / inf = NaN. Halving is
    exact, so the quotient is bit-identical to the plain (x - lo) / (hi - lo) of every other image."""
    lo, hi = x.min(), x.max()
    return (x / 2 - lo / 2) / (hi / 2 - lo / 2) if hi > lo else torch.zeros_like(x)
