"""Label conventions every method shares: the ignore value and value <-> class-index look-ups.

Datasets store label *values* (ACDC: 1 RV, 2 Myo, 3 LV; a PNG mask may use 255); models work
with class *indices* 0..C (background first). ``values`` lists the label value of each index.
"""

from __future__ import annotations

import numpy as np

from fewsam.errors import DataError

IGNORE = 255  # pixels no loss may learn from: padding of the model frame, pseudo-label gaps
MAX_CLASSES = IGNORE - 1  # labels and predictions are uint8 class indices, 255 the ignored pixels


def check_class_count(count: int, source: object) -> None:
    """Refuse more foreground classes than uint8 class indices hold, before any label is cast: class 256
    would wrap to the background (and class 255 be read as ignored pixels) without a word. A few-shot
    SAM segmentation of hundreds of classes is no use anyway; ``source`` names the files counted."""
    if count > MAX_CLASSES:
        raise DataError(f"{source}: {count} classes, and fewsam segments at most {MAX_CLASSES}; "
                        "keep the classes you need (merge or leave out the others)")


def value_lut(values: list[int]) -> np.ndarray:
    """Label value -> class index (0 = background); values not in ``values`` map to background."""
    lut = np.zeros(256, dtype=np.int64)
    for index, value in enumerate(values):
        lut[value] = index
    return lut


def index_lut(values: list[int]) -> np.ndarray:
    """Class index -> label value, as uint8 (the inverse of ``value_lut`` on ``values``)."""
    return np.asarray(values, dtype=np.uint8)
