"""A generated cardiac-like phantom (short-axis cine MRI look-alike) with known labels.

Used by ``fewsam demo`` and the tests: no data may be downloaded, and the real data sets may
not be shipped. Classes follow ACDC: 1 RV (bright crescent), 2 Myo (dark ring), 3 LV (bright
disc). Each volume has its own position, size and contrast, and structures shrink towards the
apex, so few-shot prototypes must generalise across slices and subjects.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from fewsam.atomic import atomic_write_bytes

PHANTOM_CLASSES = {1: "RV", 2: "Myo", 3: "LV"}


def phantom_volume(rng: np.random.Generator, slices: int = 6, shape: tuple[int, int] = (144, 176)
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in [0,1], label uint8), both (D, H, W)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.42, 0.58), w * rng.uniform(0.45, 0.6)
    r_lv, thick = rng.uniform(14, 20), rng.uniform(5, 8)
    bright, dark = rng.uniform(0.75, 0.95), rng.uniform(0.2, 0.35)
    images, labels = [], []
    for z in range(slices):
        shrink = 1.0 - 0.5 * z / max(slices - 1, 1)
        r = r_lv * shrink
        dist = np.hypot(yy - cy, xx - cx)
        lv = dist < r
        myo = (dist < r + thick * (0.7 + 0.3 * shrink)) & ~lv
        rv_disc = np.hypot(yy - cy, (xx - (cx - 1.6 * r - thick)) / 1.4) < 1.15 * r
        rv = rv_disc & ~ndimage.binary_dilation(lv | myo, iterations=2)
        label = np.zeros(shape, np.uint8)
        label[rv], label[myo], label[lv] = 1, 2, 3
        body = np.hypot((yy - h / 2) / (0.48 * h), (xx - w / 2) / (0.48 * w)) < 1
        texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 4) * 0.08
        image = np.where(body, 0.45 + texture, 0.02)
        image = np.where(lv | rv, bright, image)
        image = np.where(myo, dark, image)
        image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 0.03, shape)
        images.append(np.clip(image, 0, 1).astype(np.float32))
        labels.append(label)
    return np.stack(images), np.stack(labels)


PHANTOM_NAME = "fewsam cardiac phantom"  # dataset.json's name: how a folder of phantoms is recognised


def write_phantom_dataset(root: str | Path, n_train: int = 4, n_val: int = 2, slices: int = 6,
                          seed: int = 0) -> Path:
    """An nnU-Net v2 raw folder (imagesTr/labelsTr/dataset.json + splits_final.json) of phantoms.

    Every file is written atomically and dataset.json last: ``fewsam demo`` takes a folder with a
    dataset.json for a whole phantom, so one stopped earlier is written again, never used half-made."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"phantom_{i:03d}" for i in range(n_train + n_val)]
    affine = np.diag([1.4, 1.4, 8.0, 1.0])
    for name in names:
        image, label = phantom_volume(rng, slices)
        # NIfTI stores (x, y, z); our arrays are (z, y, x).
        _write_nifti(root / "imagesTr" / f"{name}_0000.nii.gz", image.transpose(2, 1, 0), affine)
        _write_nifti(root / "labelsTr" / f"{name}.nii.gz", label.transpose(2, 1, 0), affine)
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, **{v: k for k, v in PHANTOM_CLASSES.items()}},
        "numTraining": len(names),
        "file_ending": ".nii.gz",
        "name": PHANTOM_NAME,
    }
    splits = [{"train": names[:n_train], "val": names[n_train:]}]
    atomic_write_bytes(root / "splits_final.json", json.dumps(splits, indent=2).encode())
    atomic_write_bytes(root / "dataset.json", json.dumps(dataset, indent=2).encode())
    return root


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    atomic_write_bytes(path, gzip.compress(nib.Nifti1Image(array, affine).to_bytes(), mtime=0))
