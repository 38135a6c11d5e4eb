"""Prompts for SAM's decoder, all derived from masks: pure functions, easy to test.

- boxes and points from label masks (the oracle baselines of the papers) or from confident
  predictions (SAM-Match), in the preprocessed S-pixel frame the prompt encoder expects;
- few-shot prototype tokens: masked average pooling of the image embedding over each labelled
  region on the 64x64 grid (PerSAM's idea, extended to several classes and several shots).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from fewsam.models.sam import PreprocessInfo


def to_model_frame(mask: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map into the padded S x S model frame, in the label's
    own type (8 or 16 bits: float32 holds every 16-bit value exactly)."""
    h, w = info.resized_hw
    dtype = mask.dtype if mask.dtype in (np.uint8, np.uint16) else np.uint8
    t = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32)[None, None]
    resized = F.interpolate(t, size=(h, w), mode="nearest-exact")[0, 0].to(torch.int32).numpy().astype(dtype)
    out = np.zeros((info.image_size, info.image_size), dtype=dtype)
    out[:h, :w] = resized
    return out


def _scale(info: PreprocessInfo) -> tuple[float, float]:
    """(y, x) factors from original pixels to the S-pixel frame."""
    return info.resized_hw[0] / info.original_hw[0], info.resized_hw[1] / info.original_hw[1]


def box_from_mask(mask: np.ndarray, info: PreprocessInfo, margin: float = 0.0) -> np.ndarray | None:
    """xyxy box (S-pixel frame) around a binary (H, W) mask, widened by ``margin`` original pixels.

    Returns None for an empty mask: an absent class gets no prompt (rather than SAMatch's sentinel box).
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    sy, sx = _scale(info)
    h, w = mask.shape
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + 1 + margin, w)
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + 1 + margin, h)
    return np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy], dtype=np.float32)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a binary mask (SAMatch prompts use the largest contour)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def point_from_mask(mask: np.ndarray, info: PreprocessInfo) -> np.ndarray | None:
    """One positive point (x, y, S-pixel frame): the pixel deepest inside the mask's largest part.

    The interior-most point is the standard oracle click (a centroid can fall outside a ring
    such as the myocardium).
    """
    if not mask.any():
        return None
    depth = ndimage.distance_transform_edt(largest_component(mask))
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    sy, sx = _scale(info)
    return np.array([(x + 0.5) * sx, (y + 0.5) * sy], dtype=np.float32)


def click_prompts(own: np.ndarray, others: list[np.ndarray], info: PreprocessInfo, mode: str = "positive"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Clicks for one structure: (N, 2) points (S-pixel frame) and (N,) labels (1 positive, 0 negative).

    ``mode="positive"``: one positive click at the deepest pixel of ``own``. ``mode="contrast"``:
    also a negative click at the deepest pixel of each of ``others`` (the slice's other
    structures). A class-agnostic SAM cannot tell nested structures apart from a box alone (the
    LV cavity's box with a margin is the myocardium's box); the clicks say which one is meant.
    """
    if mode not in ("positive", "contrast"):
        raise ValueError(f"click mode must be 'positive' or 'contrast', not {mode!r}")
    points = [point_from_mask(own, info)]
    if mode == "contrast":
        points += [point_from_mask(m, info) for m in others if m.any()]
    labels = np.zeros(len(points), dtype=np.float32)
    labels[0] = 1
    return np.stack(points), labels


def stack_clicks(clicks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``click_prompts``: (B, N, 2) points and (B, N) labels, shorter lists padded
    with SAM's not-a-point (label -1, which the prompt encoder ignores)."""
    n = max(len(labels) for _, labels in clicks)
    points = np.zeros((len(clicks), n, 2), dtype=np.float32)
    labels = -np.ones((len(clicks), n), dtype=np.float32)
    for b, (pts, lab) in enumerate(clicks):
        points[b, : len(lab)], labels[b, : len(lab)] = pts, lab
    return torch.from_numpy(points), torch.from_numpy(labels)


def region_weights(label_frame: np.ndarray, values: list[int], grid: int = 64) -> np.ndarray:
    """(len(values), grid, grid) fraction of each grid cell covered by each label value.

    Area pooling (rather than nearest) keeps thin structures such as the myocardium, which
    may cover no cell centre on a 64x64 grid.
    """
    t = torch.from_numpy(np.stack([label_frame == v for v in values]).astype(np.float32))[None]
    return F.adaptive_avg_pool2d(t, grid)[0].numpy()


def masked_average_pool(embedding: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(C, 256) prototypes: each region's weighted mean embedding; NaN rows for empty regions."""
    emb = embedding.astype(np.float32).reshape(embedding.shape[0], -1)
    w = weights.reshape(weights.shape[0], -1)
    mass = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        protos = (w @ emb.T) / mass
    protos[mass[:, 0] < 1e-6] = np.nan
    return protos
