"""The one data model every method uses: a Case (a volume or a 2D image) and a Dataset of cases.

A 2D image is a volume with one slice, so SAM code only ever sees "slices of a case" and
metrics only ever see "volumes": one path for ACDC volumes, BUSI PNGs and FairSeg npz files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Format = Literal["h5", "nifti", "png", "npz", "dicom"]


@dataclass(frozen=True)
class ClassMap:
    """Foreground classes by label value, e.g. {1: "RV", 2: "Myo", 3: "LV"}; 0 is background.

    ``ignore``: the label value of unannotated pixels (nnU-Net's "ignore" label, for sparse annotation:
    scribbles, a few slices painted), which no loss learns from and no metric scores; not a class, so
    not in ``names`` nor in a run's record of its classes (a prediction never holds it)."""

    names: dict[int, str]
    ignore: int | None = None

    @property
    def labels(self) -> list[int]:
        return sorted(self.names)

    @property
    def num_classes(self) -> int:
        """Foreground classes only (binary segmentation has 1)."""
        return len(self.names)

    def to_json(self) -> dict[str, str]:
        return {str(k): v for k, v in sorted(self.names.items())}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> "ClassMap":
        return cls({int(k): v for k, v in data.items()})


@dataclass
class Case:
    """One subject's image (and label) as arrays, plus what is needed to write a prediction back.

    image: (D, H, W) float32 greyscale or (D, H, W, 3) float32 RGB; D = 1 for a 2D image.
    label: (D, H, W) uint8 class indices (0 = background) or None when unlabelled.
    spacing: (z, y, x) in mm when the file knows it, else None (metrics are then in pixels).
    rel_path: where the prediction goes under PRED, mirroring the input
        (``patient028_frame01.h5``, ``benign/benign (1).png``, ``case_001.nii.gz``); its suffix
        is the prediction's format (``images/x.jpg`` -> ``images/x.png``, a DICOM series
        folder ``p1/ct`` -> ``p1/ct.nii.gz``).
    meta: format-specific geometry for writing (e.g. ``affine`` and ``header`` for NIfTI,
        ``origin``, ``spacing`` and ``direction`` for a DICOM series).
    ignore: the label value of its unannotated pixels (``ClassMap.ignore``), carried with the label so
        that every score of it leaves them out.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    format: Format
    rel_path: str
    spacing: tuple[float, float, float] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    ignore: int | None = None

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    def slice_image(self, z: int) -> np.ndarray:
        return self.image[z]

    def slice_label(self, z: int) -> np.ndarray | None:
        return None if self.label is None else self.label[z]


@dataclass(frozen=True)
class SliceRef:
    """One 2D slice of one case: the unit of encoding, caching and few-shot labelling."""

    case_id: str
    z: int


class Dataset(Protocol):
    """A folder of cases in one layout. Readers in ``fewsam.data.readers`` implement this."""

    root: Path
    class_map: ClassMap
    format: str  # the files' family ("h5", "nifti", "png", "npz", "dicom"): how predictions are written

    def split(self, name: str) -> list[str]:
        """Case ids of a split: "train", "val", "test", or a list file relative to root."""
        ...

    def load(self, case_id: str, *, with_label: bool = True) -> Case:
        """Read one case (image, label, attributes) from disk; raises DataError on bad files.
        ``with_label=False`` reads the image only (``label`` is None): what embedding and
        prediction need, so a damaged or missing label file does not stop them."""
        ...

    def input_files(self, case_id: str) -> list[Path]:
        """The files the case's image is read from, listed without reading them."""
        ...

    def subject_of(self, case_id: str) -> str:
        """The subject (patient) a case belongs to; "N labelled cases" counts subjects."""
        ...

    def labelled_budget_order(self) -> list[SliceRef]:
        """Training slices in the order a labelled budget takes them (SSL4MIS convention)."""
        ...

    def has_label(self, case_id: str) -> bool:
        """Whether the case has a label file (without reading it)."""
        ...

    def has_any_label(self) -> bool:
        """Whether any case has a label file: without one, the data is for prediction only."""
        ...

    def attributes_of(self, case_id: str) -> dict[str, Any]:
        """The case's group attributes known from the index (no pixels read)."""
        ...
