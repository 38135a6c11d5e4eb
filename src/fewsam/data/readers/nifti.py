"""NIfTI folders: nnU-Net v2 and MSD raw datasets, and plain ``images/`` + ``labels/`` folders.

    nnU-Net v2:  dataset.json {"labels": {"background": 0, "RV": 1}, "channel_names": {...},
                 "file_ending": ".nii.gz"}; imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz,
                 imagesTs/<case>_0000.nii.gz
    MSD (v1):    dataset.json {"labels": {"0": "background", "1": "left atrium"},
                 "training": [{"image": "./imagesTr/la_003.nii.gz", "label": ...}], "test": [...]};
                 imagesTr/<case>.nii.gz (possibly 4D, channels last)
    plain:       images/<case>.nii.gz (or <case>_0000.nii.gz) + labels/<case>.nii.gz (labels/ may
                 be absent: the images are then for prediction only); class names
                 from classes.json ({"1": "liver"}), else "class1", "class2", ... from the label
                 values found (a scan of every label, done on first use of ``class_map``)

Multi-channel images (nnU-Net ``_0001``..., MSD 4D) are read as channel 0 only: SAM sees one
greyscale channel. Arrays are (D, H, W) = the NIfTI (x, y, z) array transposed to (z, y, x),
without reorientation; spacing is the header zooms as (z, y, x) in mm. ``meta`` keeps the image's
affine and header so predictions are written back on the same voxel grid and orientation.
Splits: fold 0 of ``splits_final.json`` in root if present, else naturally sorted labelled case
ids with every 5th to "val"; "test" = imagesTs (or unlabelled plain images); without any label,
"val" holds every case. case_id = case name, rel_path = ``<case>.nii.gz``.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fewsam.data.readers.common import (Entry, IndexedDataset, Read, class_map_from_json,
                                        deterministic_split, natural_sorted, to_label_array)
from fewsam.data.types import ClassMap
from fewsam.errors import DataError
from fewsam.progress import say_once

NIFTI_ENDINGS = (".nii.gz", ".nii")
NIFTI_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def detect(root: Path) -> bool:
    raw = (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()
    return raw or any(_nifti_files(root / "images"))


class ClassesFromLabelFiles:
    """``class_map`` for datasets whose labels are NIfTI files: the explicit class names, or one
    class per label value found in the files (read on first use, so opening stays cheap)."""

    _class_map: ClassMap | None
    entries: dict[str, Entry]

    @property
    def class_map(self) -> ClassMap:
        if self._class_map is None:
            values: set[int] = set()
            for e in self.entries.values():
                if e.label is not None:
                    values |= {int(v) for v in np.unique(_label_array(e.label))}
            self._class_map = ClassMap({v: f"class{v}" for v in sorted(values - {0})})
        return self._class_map

    @class_map.setter
    def class_map(self, value: ClassMap | None) -> None:
        self._class_map = value


class NiftiDataset(ClassesFromLabelFiles, IndexedDataset):
    layout = "nifti"
    format = "nifti"

    def __init__(self, root: Path, class_map: ClassMap | None, entries: list[Entry],
                 test_ids: list[str]) -> None:
        self._class_map = class_map
        super().__init__(root, class_map, entries)  # type: ignore[arg-type]
        self.check_label_values = class_map is not None
        labelled = [e.case_id for e in entries if e.label is not None and e.case_id not in test_ids]
        self.splits = _read_splits(root, labelled) if labelled else {}
        self.computed_splits = () if (root / "splits_final.json").is_file() else ("train", "val")
        if test_ids:
            self.splits["test"] = test_ids
        for ids in self.splits.values():
            self.check_known(ids, str(root / "splits_final.json"))

    def num_slices(self, case_id: str) -> int:
        shape = _load(self._entry(case_id).image).shape
        return int(shape[2]) if len(shape) >= 3 else 1

    def _read(self, entry: Entry) -> Read:
        img = _load(entry.image)
        image, dropped = _image_array(img, entry.image)
        label = None if entry.label is None else _label_array(entry.label)
        # Headers store float32: 1.4 reads as 1.39999998; 7 significant digits give 1.4 back.
        zooms = [float(f"{z:.7g}") for z in img.header.get_zooms()[:3]] + [1.0] * 3
        meta = {"affine": img.affine.copy(), "header": img.header.copy(), "channels_dropped": dropped}
        return Read(image=image, label=label, spacing=(zooms[2], zooms[1], zooms[0]), meta=meta)


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return natural_sorted((p for p in folder.iterdir()
                           if p.name.endswith(NIFTI_ENDINGS) and not p.name.startswith(".")),
                          key=lambda p: p.name)


def case_name(path: Path | str) -> str:
    name = Path(path).name
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def _load(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"file {path} not found; restore it or fix dataset.json")
    try:
        return nib.load(str(path))
    except NIFTI_ERRORS as err:
        raise DataError(f"cannot read NIfTI {path} (truncated or not NIfTI?): {err}") from None


def to_zyx(array: np.ndarray) -> np.ndarray:
    """NIfTI (x, y[, z]) -> (z, y, x); a 2D NIfTI becomes one slice."""
    if array.ndim == 2:
        array = array[..., None]
    return np.ascontiguousarray(array.transpose(2, 1, 0))


def _data(img: Any, path: Path, dtype: Any = None) -> np.ndarray:
    try:
        if not dtype:
            return np.asarray(img.dataobj)
        if np.dtype(img.get_data_dtype()).kind not in "biuf":
            raise DataError(f"{path}: voxel type {img.get_data_dtype()} is not a greyscale image; "
                            "store real numbers")
        with np.errstate(over="raise"):
            return img.get_fdata(dtype=np.float32)
    except FloatingPointError:
        raise DataError(f"{path}: the image holds values beyond float32's range; rescale it") from None
    except NIFTI_ERRORS as err:
        raise DataError(f"cannot read NIfTI {path} (truncated?): {err}") from None


def _image_array(img: Any, path: Path) -> tuple[np.ndarray, int]:
    data = _data(img, path, np.float32)
    dropped = 0
    if data.ndim == 4:
        data, dropped = data[..., 0], data.shape[3] - 1
        if dropped:
            say_once(f"{path} holds {dropped + 1} volumes along its 4th axis (time frames or channels): fewsam "
                     "segments the first of each such file; export the frame or channel you want as a 3D file",
                     key="nifti-4d")
    if data.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2D, 3D or 4D (channels last) image, got {data.shape}")
    return to_zyx(data).astype(np.float32, copy=False), dropped


def _label_array(path: Path) -> np.ndarray:
    data = _data(_load(path), path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise DataError(f"{path}: a label must be 2D or 3D, got shape {data.shape}")
    return to_zyx(to_label_array(data, path))


def _read_splits(root: Path, labelled: list[str]) -> dict[str, list[str]]:
    path = root / "splits_final.json"
    if not path.is_file():
        return deterministic_split(labelled)
    try:
        folds = json.loads(path.read_text())
        return {"train": list(folds[0]["train"]), "val": list(folds[0]["val"])}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise DataError(f"cannot read {path} ({err}); it must be a list of folds "
                        '[{"train": [...], "val": [...]}]') from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object")
    return data


def class_map_from_labels(labels: dict[str, Any], path: Path) -> ClassMap:
    """nnU-Net v2 {"background": 0, "RV": 1} or MSD {"0": "background", "1": "RV"}."""
    names: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, list):
            raise DataError(f"{path}: region-based label {key!r} is not supported; "
                            "give one integer per class")
        try:
            code, name = (int(key), str(value)) if str(key).lstrip("-").isdigit() else (int(value), key)
        except (TypeError, ValueError):
            raise DataError(f"{path}: bad labels entry {key!r}: {value!r}") from None
        if code != 0:
            names[code] = name
    if not names:
        raise DataError(f"{path} defines no foreground labels; add them to 'labels'")
    return ClassMap(names)


def _entry(image: Path, label: Path | None, case: str) -> Entry:
    return Entry(case_id=case, image=image, label=label if label and label.is_file() else None,
                 rel_path=f"{case}.nii.gz", subject=case)


def _raw_entries(root: Path, spec: dict[str, Any]) -> tuple[list[Entry], list[str]]:
    ending = spec.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise DataError(f"{root}/dataset.json: file_ending {ending!r} is not NIfTI; "
                        "convert the images to .nii.gz")
    if spec.get("training"):
        entries = [_entry(root / t["image"], root / t["label"] if t.get("label") else None,
                          case_name(t["image"])) for t in spec["training"]]
        tests = [root / t if isinstance(t, str) else root / t["image"] for t in spec.get("test", [])]
        test_cases = [(p, case_name(p)) for p in tests]
    else:
        entries = [_entry(p, root / "labelsTr" / f"{c}{ending}", c)
                   for p, c in _channel0(root / "imagesTr", ending)]
        test_cases = _channel0(root / "imagesTs", ending)
    known = {e.case_id for e in entries}
    test_ids = []
    for path, case in test_cases:
        case_id = case if case not in known else f"imagesTs/{case}"
        entries.append(_entry(path, None, case_id))
        test_ids.append(case_id)
    return entries, test_ids


def _channel0(folder: Path, ending: str = "") -> list[tuple[Path, str]]:
    """(path, case) of each case's first channel: '<case>_0000.nii.gz', else '<case>.nii.gz'."""
    files = [p for p in _nifti_files(folder) if p.name.endswith(ending)]
    v2 = [(p, case_name(p)[:-5]) for p in files if case_name(p).endswith("_0000")]
    return v2 or [(p, case_name(p)) for p in files]


def _plain_entries(root: Path) -> tuple[list[Entry], list[str]]:
    entries, test_ids = [], []
    for path, case in _channel0(root / "images"):
        labels = [root / "labels" / f"{case}{e}" for e in NIFTI_ENDINGS]
        entry = _entry(path, next((p for p in labels if p.is_file()), None), case)
        entries.append(entry)
        if entry.label is None:
            test_ids.append(case)
    return entries, test_ids


def _plain_class_map(root: Path) -> ClassMap | None:
    path = root / "classes.json"
    return class_map_from_json(path) if path.is_file() else None


def open_nifti(root: Path) -> NiftiDataset:
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        spec = _read_json(root / "dataset.json")
        if "labels" not in spec:
            raise DataError(f"{root / 'dataset.json'} has no 'labels'; add e.g. "
                            '{"labels": {"background": 0, "organ": 1}}')
        class_map = class_map_from_labels(spec["labels"], root / "dataset.json")
        entries, test_ids = _raw_entries(root, spec)
    else:
        class_map = _plain_class_map(root)
        entries, test_ids = _plain_entries(root)
    if not entries:
        raise DataError(f"no NIfTI images found in {root}; expected imagesTr/ or images/ with .nii.gz files")
    return NiftiDataset(root, class_map, entries, test_ids)
