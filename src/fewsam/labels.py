"""Label conventions every method shares: the ignore value and value <-> class-index look-ups.

Datasets store label *values* (ACDC: 1 RV, 2 Myo, 3 LV; a PNG mask may use 255); models work
with class *indices* 0..C (background first). ``values`` lists the label value of each index.
"""

from __future__ import annotations

import numpy as np

from fewsam.errors import DataError

IGNORE = 255  # pixels no loss may learn from: padding of the model frame, pseudo-label gaps
MAX_CLASSES = IGNORE - 1  # models' class indices are uint8, 255 the ignored pixels
MAX_LABEL_VALUE = 65535  # label values (what files store) are 8-bit where they fit, else 16-bit


def check_class_count(count: int, source: object) -> None:
    """Refuse more foreground classes than uint8 class indices hold, before any label is cast: class 256
    would wrap to the background (and class 255 be read as ignored pixels) without a word. A few-shot
    SAM segmentation of hundreds of classes is no use anyway; ``source`` names the files counted."""
    if count > MAX_CLASSES:
        raise DataError(f"{source}: {count} classes, and fewsam segments at most {MAX_CLASSES}; "
                        "keep the classes you need (merge or leave out the others)")


def label_dtype(largest: int) -> type[np.unsignedinteger]:
    """The type of labels whose largest value is ``largest``: uint8, as nearly every label file stores
    its classes, or uint16 for label values above 255 (MM-WHS's 205-850, FreeSurfer's aseg 1000-2035),
    which 8 bits would wrap onto other classes."""
    return np.uint8 if largest <= 255 else np.uint16


def value_lut(values: list[int], ignore: int | None = None) -> np.ndarray:
    """Label value -> class index (0 = background); values not in ``values`` map to background, the
    unannotated pixels' value ``ignore`` (``ClassMap.ignore``) to IGNORE. It covers every value a label
    of ``values`` can hold (8 or 16 bits, ``label_dtype``)."""
    largest = max([*values, *([] if ignore is None else [ignore])])
    lut = np.zeros(np.iinfo(label_dtype(largest)).max + 1, dtype=np.int64)
    for index, value in enumerate(values):
        lut[value] = index
    if ignore is not None:
        lut[ignore] = IGNORE
    return lut


def holds_class(label: np.ndarray, ignore: int | None = None) -> bool:
    """Whether ``label`` (a slice's, a volume's) holds a pixel of a class: not background, and not the
    unannotated pixels' value ``ignore`` (``ClassMap.ignore``), which says nothing of what lies there."""
    if ignore is None:
        return bool(label.any())
    return bool(((label != 0) & (label != ignore)).any())


def wholly_annotated(label: np.ndarray, ignore: int | None = None) -> bool:
    """Whether ``label`` (a slice's) marks no pixel unannotated (``ClassMap.ignore``): only then does each
    class it holds show its whole object, the box around it and the mask inside that box that SAM's
    fine-tuning learns from; a scribble's box is of the stroke, and its unannotated rest is no background."""
    return ignore is None or not bool((label == ignore).any())


def index_lut(values: list[int]) -> np.ndarray:
    """Class index -> label value, in the labels' type (the inverse of ``value_lut`` on ``values``)."""
    return np.asarray(values, dtype=label_dtype(max(values)))
