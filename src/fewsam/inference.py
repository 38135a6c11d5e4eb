"""From decoder logits in the model frame to label maps in the case's own geometry.

Shared by every method: validation during fitting, ``fewsam predict`` and the post-processing choice.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from fewsam.embedded import EmbeddedSlice
from fewsam.errors import DataError
from fewsam.labels import index_lut
from fewsam.metrics import volume_score
from fewsam.models.sam import PreprocessInfo, postprocess_logits


def labels_from_logits(logits: torch.Tensor, info: PreprocessInfo, values: list[int]) -> np.ndarray:
    """(Q, 256, 256) low-res logits of one slice (query order = ``values``) -> (H, W) uint8 label values."""
    full = postprocess_logits(logits[None].float(), info)[0]
    index = full.argmax(dim=0).cpu().numpy()
    return index_lut(values)[index]


def stack_volume(slices: list[np.ndarray]) -> np.ndarray:
    return np.stack(slices).astype(np.uint8)


def check_labelled(samples: list[EmbeddedSlice]) -> None:
    if not samples:
        raise DataError("the labelled set is empty; give --labeled-cases N or --labeled-slices K with N, K >= 1")
    if any(s.label_frame is None for s in samples):
        raise DataError("some labelled slices have no label file; the labelled set must be labelled")



def keep_largest_components(volume: np.ndarray, values: list[int]) -> np.ndarray:
    """Per class, keep only the largest connected component (3D, face-connected); the rest -> background.

    Anatomy such as the ventricles is one connected structure, so isolated islands are errors;
    whether this helps is decided on the validation list (``choose_postprocessing``), as nnU-Net does.
    """
    out = volume.copy()
    for value in values:
        mask = volume == value
        labels, n = ndimage.label(mask)
        if n <= 1:
            continue
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        out[mask & (labels != int(np.argmax(sizes)) + 1)] = 0
    return out


def choose_postprocessing(predictions: list[np.ndarray], labels: list[np.ndarray], values: list[int]
                          ) -> dict[str, float | bool]:
    """Compare raw vs largest-component predictions on validation volumes by mean Dice."""
    raw = [volume_score(p, y, values) for p, y in zip(predictions, labels)]
    lcc = [volume_score(keep_largest_components(p, values), y, values) for p, y in zip(predictions, labels)]
    raw_mean, lcc_mean = float(np.mean(raw)), float(np.mean(lcc))
    return {"largest_component": lcc_mean > raw_mean, "val_dice_raw": raw_mean, "val_dice_largest_component": lcc_mean}
