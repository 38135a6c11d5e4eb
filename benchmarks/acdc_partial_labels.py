"""ACDC training frames annotated as scribbles, for nnU-Net's ignore label (docs/results.md 1.27).

Reads the fully labelled folder `benchmarks/acdc_sparse_slices.py --full` writes (images/, labels/,
splits_final.json) and writes an nnU-Net raw folder (imagesTr/, labelsTr/, dataset.json,
splits_final.json) whose `train` frames keep, on each slice, the core of each class (its pixels at
least half the class's greatest depth inside it) and a ring of background 4-12 pixels outside the heart;
every other pixel is unannotated (value 4, dataset.json's "ignore"). Validation volumes stay fully
labelled. With --as-background the unannotated pixels are written as 0 and dataset.json has no
"ignore" entry: the same strokes as a user without the ignore label would give them.

Usage: python benchmarks/acdc_partial_labels.py FULL_FOLDER OUT [--as-background]"""
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

full, out, as_background = Path(sys.argv[1]), Path(sys.argv[2]), "--as-background" in sys.argv[3:]
UNANNOTATED = 4
CLASSES = {"RV": 1, "Myo": 2, "LV": 3}
RING = (4, 12)  # background annotated this many pixels outside the heart


def strokes(label: np.ndarray) -> np.ndarray:
    """One slice's partial annotation: each class's core, a background ring, the rest unannotated."""
    out = np.full(label.shape, UNANNOTATED, np.uint8)
    heart = label > 0
    if not heart.any():
        return out
    for value in CLASSES.values():
        depth = ndimage.distance_transform_edt(label == value)
        if depth.max() > 0:
            out[depth >= max(1.0, 0.5 * depth.max())] = value
    outside = ndimage.distance_transform_edt(~heart)
    out[(outside >= RING[0]) & (outside <= RING[1])] = 0
    return out


splits = json.loads((full / "splits_final.json").read_text())
train = set(splits[0]["train"])
for sub in ("imagesTr", "labelsTr"):
    (out / sub).mkdir(parents=True, exist_ok=True)
kept = total = 0
for path in sorted((full / "labels").glob("*.nii.gz")):
    case = path.name[: -len(".nii.gz")]
    shutil.copyfile(full / "images" / path.name, out / "imagesTr" / f"{case}_0000.nii.gz")
    img = nib.load(str(path))
    label = np.asarray(img.dataobj).astype(np.uint8)  # (x, y, z)
    if case in train:
        label = np.stack([strokes(label[..., z]) for z in range(label.shape[-1])], axis=-1)
        kept += int((label != UNANNOTATED).sum())
        total += label.size
        if as_background:
            label[label == UNANNOTATED] = 0
    nib.save(nib.Nifti1Image(label, img.affine), out / "labelsTr" / path.name)
labels = {"background": 0, **CLASSES, **({} if as_background else {"ignore": UNANNOTATED})}
(out / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels,
                                              "numTraining": len(list((out / "labelsTr").iterdir())),
                                              "file_ending": ".nii.gz"}, indent=1))
shutil.copyfile(full / "splits_final.json", out / "splits_final.json")
print(f"{out}: training frames' pixels annotated: {kept} of {total} ({100 * kept / max(total, 1):.1f}%)")
