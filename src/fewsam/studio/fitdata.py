"""The studio's labelled slices written as a dataset that ``fewsam.api.fit`` reads unchanged.

A fit takes its labelled set from a dataset's budget order, and a volume with a few labelled
slices would teach "background" on every other slice. So each labelled slice becomes a case of
its own, in a layout fewsam already reads:

- greyscale volumes: a plain NIfTI folder, ``images/sNNNN.nii`` + ``labels/sNNNN.nii``
  + ``classes.json`` + ``splits_final.json`` (train = every slice). float32 pixels are copied
  bit for bit, so the embedding cache serves the fit the same embeddings as the studio's
  predictions of the source cases (one encoding per slice, not two).
- 2D images (colour, or grey from a 2D image folder): a PNG folder, ``images/`` + ``masks/`` +
  ``index.csv`` (split train) + ``classes.json`` (the source dataset's mask value per class, else the
  class index; rgb true or false); 8-bit RGB PNGs and float32 grey TIFFs read back exactly. The run keeps
  that coding (RUN/config.json, as ``fewsam fit`` keeps a PNG folder's), so its predictions of new,
  unlabelled images are written as the source dataset's masks (0/255, or 0/1), not in a guessed coding.

``slices.json`` maps each new case (by the id fewsam reads it under) back to (source case, slice).
The fit validates on the same slices (``FIT_VAL_SPLIT``): with a handful of labels none can be
spared, so the Dice the page shows is the Dice on the labelled slices, which selects the checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from PIL import Image

from fewsam.atomic import atomic_write_bytes
from fewsam.data.types import Case, ClassMap

FIT_VAL_SPLIT = "all"  # every case of the fit dataset: the labelled slices themselves
SLICES = "slices.json"


def write_fit_dataset(folder: Path, slices: Sequence[tuple[Case, int, np.ndarray]], class_map: ClassMap) -> int:
    """Write ``(case, z, label)`` slices under ``folder`` (see the module docstring); returns their number."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"s{i:04d}" for i in range(len(slices))]
    rgb = any(case.image.ndim == 4 for case, _, _ in slices)
    as_2d_folder = rgb or any(case.format == "png" for case, _, _ in slices)
    coding = _mask_coding(slices, class_map)
    for new_id, (case, z, label) in zip(ids, slices):
        if as_2d_folder:
            _write_2d_slice(folder, new_id, case, z, label, coding, rgb)
        else:
            _write_nifti_slice(folder, new_id, case, z, label)
    if as_2d_folder:
        _write_png_index(folder, ids, class_map, coding, rgb)
    else:
        _write_json(folder / "classes.json", {"classes": class_map.to_json()})
        _write_json(folder / "splits_final.json", [{"train": ids, "val": ids}])
    case_ids = [f"images/{i}" for i in ids] if as_2d_folder else ids  # the ids fewsam gives these cases
    _write_json(folder / SLICES, {cid: [case.case_id, z] for cid, (case, z, _) in zip(case_ids, slices)})
    return len(ids)


def _write_json(path: Path, data: object) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


def _slice_affine(case: Case) -> np.ndarray:
    z, y, x = case.spacing or (1.0, 1.0, 1.0)
    return np.diag([x, y, z, 1.0])


def _write_nifti_slice(folder: Path, new_id: str, case: Case, z: int, label: np.ndarray) -> None:
    """One slice as a one-slice NIfTI: arrays are (H, W) = NIfTI (y, x), stored as (x, y, 1)."""
    affine = _slice_affine(case)
    image = np.asarray(case.image[z], dtype=np.float32).T[:, :, None]
    atomic_write_bytes(folder / "images" / f"{new_id}.nii", nib.Nifti1Image(image, affine).to_bytes())
    mask = nib.Nifti1Image(np.asarray(label, np.uint8).T[:, :, None], affine)
    atomic_write_bytes(folder / "labels" / f"{new_id}.nii", mask.to_bytes())


def _png_bytes(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _mask_coding(slices: Sequence[tuple[Case, int, np.ndarray]], class_map: ClassMap) -> dict[int, int]:
    """class -> mask value: the source dataset's PNG coding where its cases carry one (every class of
    ``class_map`` in it, each a value of the 8-bit masks written here), else the class index itself."""
    source = next((case.meta.get("png_to_pixel") for case, _, _ in slices if case.meta.get("png_to_pixel")), None)
    coding = {int(c): int(v) for c, v in (source or {}).items()}
    if not all(c in coding for c in [0, *class_map.labels]) or any(v > 255 for v in coding.values()):
        return {c: c for c in [0, *class_map.labels]}
    return coding


def _image_name(new_id: str, rgb: bool) -> str:
    """Colour as 8-bit RGB PNG; grey as float32 TIFF, whose pixels (16-bit or float sources too) read back
    bit for bit, as the NIfTI slices of volumes do."""
    return f"{new_id}.png" if rgb else f"{new_id}.tif"


def _write_2d_slice(folder: Path, new_id: str, case: Case, z: int, label: np.ndarray,
                    coding: dict[int, int], rgb: bool) -> None:
    image = case.image[z]
    if rgb:
        if image.ndim == 2:  # a grey case in a colour dataset
            image = np.repeat(image[..., None], 3, axis=-1)
        pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        atomic_write_bytes(folder / "images" / _image_name(new_id, rgb), _png_bytes(pixels, "RGB"))
    else:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, np.float32), mode="F").save(buf, format="TIFF")
        atomic_write_bytes(folder / "images" / _image_name(new_id, rgb), buf.getvalue())
    lut = np.zeros(256, np.uint8)
    for cls, value in coding.items():
        lut[cls] = value
    atomic_write_bytes(folder / "masks" / f"{new_id}.png", _png_bytes(lut[np.asarray(label, np.uint8)], "L"))


def _write_png_index(folder: Path, ids: list[str], class_map: ClassMap, coding: dict[int, int], rgb: bool) -> None:
    values = {str(c): v for c, v in sorted(coding.items())}
    _write_json(folder / "classes.json", {"classes": class_map.to_json(), "pixel_values": values, "rgb": rgb})
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(["image", "mask", "split"])
    rows.writerows([f"images/{_image_name(i, rgb)}", f"masks/{i}.png", "train"] for i in ids)
    atomic_write_bytes(folder / "index.csv", buf.getvalue().encode())
