"""ACDC volumes annotated on a few slices, for `fit --annotated-slices-only` (docs/results.md 1.26): the
frames of the first 3 patients of train_slices.list (their SSL4MIS training slices stacked into volumes)
keep their labels on 3 slices each, at 25%, 50% and 75% of the heart's extent, the others set to 0
(with --full: every slice kept, the reference); the val.list volumes fully labelled; splits_final.json
names the frames `train` and the volumes `val`. Written with 1 mm voxels (the h5 files carry no spacing).

Usage: python benchmarks/acdc_sparse_slices.py ACDC_FOLDER OUT [--full]  -> OUT/{images,labels}/"""
import json
import re
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

acdc, out, full = Path(sys.argv[1]), Path(sys.argv[2]), "--full" in sys.argv[3:]
PATIENTS = 3
for sub in ("images", "labels"):
    (out / sub).mkdir(parents=True, exist_ok=True)


def save(case: str, image: np.ndarray, label: np.ndarray) -> None:
    """(D, H, W) arrays as NIfTI (x, y, z)."""
    nib.save(nib.Nifti1Image(image.astype(np.float32).transpose(2, 1, 0), np.eye(4)), out / "images" / f"{case}.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.uint8).transpose(2, 1, 0), np.eye(4)), out / "labels" / f"{case}.nii.gz")


def slice_number(name: str) -> int:
    return int(re.search(r"_slice_(\d+)$", name)[1])


listed = [line.strip() for line in (acdc / "train_slices.list").read_text().splitlines() if line.strip()]
frames = list(dict.fromkeys(name.split("_slice_")[0] for name in listed))
patients = list(dict.fromkeys(frame.split("_")[0] for frame in frames))[:PATIENTS]
frames = [frame for frame in frames if frame.split("_")[0] in patients]
annotated = {}
for frame in frames:
    names = sorted((n for n in listed if n.startswith(frame + "_slice_")), key=slice_number)
    pairs = []
    for name in names:
        path = next(p for p in (acdc / "data" / "slices" / f"{name}.h5", acdc / "data" / f"{name}.h5") if p.is_file())
        with h5py.File(path) as f:
            pairs.append((np.asarray(f["image"]), np.asarray(f["label"])))
    image, label = np.stack([i for i, _ in pairs]), np.stack([lab for _, lab in pairs])
    heart = [z for z in range(len(label)) if label[z].any()]
    picks = sorted({heart[int(round(q * (len(heart) - 1)))] for q in (0.25, 0.5, 0.75)})
    kept = label.copy() if full else np.zeros_like(label)
    kept[picks] = label[picks]
    annotated[frame] = picks
    save(frame, image, kept)
val = [line.strip() for line in (acdc / "val.list").read_text().splitlines() if line.strip()]
for case in val:
    with h5py.File(acdc / "data" / f"{case}.h5") as f:
        save(case, np.asarray(f["image"]), np.asarray(f["label"]))
(out / "splits_final.json").write_text(json.dumps([{"train": frames, "val": val}]))
print(json.dumps({"frames": frames, "annotated slices": annotated}))
