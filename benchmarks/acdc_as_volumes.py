"""ACDC validation volumes (SSL4MIS h5) written as NIfTI, MetaImage and sagittally stored NIfTI,
pixel for pixel, to check that every reader gives the same predictions (docs/results.md 1.16).

Usage: python benchmarks/acdc_as_volumes.py ACDC_FOLDER OUT  -> OUT/{nifti,mha,sagittal}/"""
import json
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import SimpleITK as sitk

acdc, out = Path(sys.argv[1]), Path(sys.argv[2])
cases = (acdc / "val.list").read_text().split()
for kind in ("nifti", "mha", "sagittal"):
    for sub in ("images", "labels"):
        (out / kind / sub).mkdir(parents=True, exist_ok=True)
    (out / kind / "classes.json").write_text(json.dumps({"1": "RV", "2": "Myo", "3": "LV"}))
for case in cases:
    with h5py.File(acdc / "data" / f"{case}.h5") as f:
        arrays = {"images": np.asarray(f["image"], np.float32), "labels": np.asarray(f["label"], np.uint8)}
    for sub, a in arrays.items():  # a: (D, H, W)
        axial = nib.Nifti1Image(a.transpose(2, 1, 0), np.diag([1.0, 1.0, 10.0, 1.0]))
        nib.save(axial, out / "nifti" / sub / f"{case}.nii.gz")
        image = sitk.GetImageFromArray(a)
        image.SetSpacing((1.0, 1.0, 10.0))
        sitk.WriteImage(image, str(out / "mha" / sub / f"{case}.mha"))
        # slices along NIfTI x (10 mm thick): (x, y, z) = (D, W, H)
        along_x = nib.Nifti1Image(a.transpose(0, 2, 1), np.diag([10.0, 1.0, 1.0, 1.0]))
        nib.save(along_x, out / "sagittal" / sub / f"{case}.nii.gz")
print(len(cases), "volumes")
