"""An ACDC folder cut to each volume's heart, to measure what a zoomed second look could give.

Each volume (a validation volume, or a labelled patient's frame rebuilt from its slices) is cropped
to a square around the union of its labels over all slices, widened by MARGIN of the box's side
on each side, and resized to SIZE x SIZE (images linear, labels nearest). The boxes come from the
labels (an oracle: no prediction could place them better), so a few-shot fit on OUT against one on
the full images, same seed, bounds the gain of a two-stage "find the heart, then zoom in" pipeline.
OUT holds the labelled slices of the first N_LABELLED lines of train_slices.list, the val.list
volumes and patient_info.csv; Dice on OUT is measured in the cropped frame.
Usage: .venv/bin/python benchmarks/acdc_heart_crop.py ACDC OUT [MARGIN] [SIZE] [N_LABELLED]
"""

import re
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import zoom


def heart_box(labels: np.ndarray, margin: float) -> tuple[int, int, int]:
    """(top, left, side) of the square around the labels of a (D, H, W) volume, widened by ``margin``."""
    ys, xs = np.nonzero(labels.any(axis=0))
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0) * (1 + 2 * margin)
    return int(round((y0 + y1 - side) / 2)), int(round((x0 + x1 - side) / 2)), int(round(side))


def crop(volume: np.ndarray, box: tuple[int, int, int], size: int, order: int) -> np.ndarray:
    """The (D, size, size) crop of a (D, H, W) volume; outside the image: zeros."""
    top, left, side = box
    padded = np.pad(volume, [(0, 0), (side, side), (side, side)])
    cut = padded[:, top + side:top + 2 * side, left + side:left + 2 * side]
    return np.stack([zoom(s, size / side, order=order) for s in cut])


def write(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = image.astype(np.float32), label.astype(np.uint8)


def main(src: Path, dst: Path, margin: float = 0.25, size: int = 256, n_labelled: int = 68) -> None:
    if dst.exists():
        sys.exit(f"error: {dst} exists; give a new folder")
    (dst / "data").mkdir(parents=True)
    labelled = (src / "train_slices.list").read_text().split()[:n_labelled]
    for frame in dict.fromkeys(re.sub(r"_slice_\d+$", "", name) for name in labelled):
        files = sorted((src / "data").glob(f"{frame}_slice_*.h5"))
        slices = [h5py.File(f, "r") for f in files]
        box = heart_box(np.stack([s["label"][:] for s in slices]), margin)
        for f, s in zip(files, slices):
            write(dst / "data" / f.name, crop(s["image"][:][None], box, size, 1)[0],
                  crop(s["label"][:][None], box, size, 0)[0])
            s.close()
    val = (src / "val.list").read_text().split()
    for volume in val:
        with h5py.File(src / "data" / f"{volume}.h5", "r") as f:
            image, label = f["image"][:], f["label"][:]
        box = heart_box(label, margin)
        write(dst / "data" / f"{volume}.h5", crop(image, box, size, 1), crop(label, box, size, 0))
    (dst / "train_slices.list").write_text("\n".join(labelled) + "\n")
    (dst / "val.list").write_text("\n".join(val) + "\n")
    if (src / "patient_info.csv").is_file():
        shutil.copy(src / "patient_info.csv", dst / "patient_info.csv")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *(float(a) for a in sys.argv[3:4]),
         *(int(a) for a in sys.argv[4:6]))
