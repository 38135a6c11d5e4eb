"""Pictures and tables people read: overlays of predictions on images (more in the fairness report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 90], [70, 120, 240], [240, 200, 40],
                    [200, 80, 220], [40, 210, 220]], dtype=np.uint8)


def overlay(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: prediction as translucent fill, ground truth (if any) as white contours."""
    grey = image if image.ndim == 2 else image.mean(axis=-1)
    lo, hi = float(grey.min()), float(grey.max())
    base = ((grey - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8)
    rgb = np.repeat(base[..., None], 3, axis=-1).astype(np.float32)
    colours = PALETTE[np.minimum(pred, len(PALETTE) - 1)].astype(np.float32)
    fg = pred > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours[fg]
    if label is not None:
        edges = label != ndimage.grey_erosion(label, size=3)
        rgb[edges & (label > 0)] = 255
    return rgb.astype(np.uint8)


def save_overlay(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, pred, label)).save(path)
    return path
