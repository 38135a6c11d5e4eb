"""Harvard-FairSeg: one ``data_XXXXX.npz`` per subject (SLO fundus, disc/cup mask, demographics).

Key names changed across releases; all are accepted:
- image: ``slo_fundus`` (current) or ``fundus_slo`` (older); greyscale 0-255, read as (1, H, W).
- mask: ``disc_cup_mask`` (current), ``disc_cup`` or ``disc_cup_borders``: 0 background,
  -1 disc rim, -2 optic cup -> classes 0/1/2, {1: "rim", 2: "cup"} (disc = rim + cup).
  Already converted masks (1/2) and uint8 files that wrapped -1/-2 to 255/254 are accepted
  too. No mask key -> unlabelled.
- attributes (decoded to text; -1 = unknown -> None):
  gender 0/1 -> "female"/"male"; race 0/1/2 -> "Asian"/"Black"/"White", older files 2/3/7;
  ethnicity (or hispanic) 0/1 -> "non-Hispanic"/"Hispanic"; language 0/1/2 -> "English"/
  "Spanish"/"other"; maritalstatus (or marriagestatus) 0..4 -> "married or partnered",
  "single", "divorced", "widowed", "legally separated"; age in years (older files store days:
  values > 200 are divided by 365); pid as stored.
  A file is "older" (race coded 2/3/7) when it uses the ``fundus_slo`` key, its race is 3 or 7,
  or its age is in days.

Splits: ``train``/``val``/``test`` list files (``.list`` or ``.txt``, one file name per line) in
root; else folders ``Training/``, ``Validation/``, ``Test/``; npz files in root itself are split by the
rule every reader computes (``computed_splits``: every 5th to "val", at least one of two or more).
case_id = file path relative to root without ``.npz``; rel_path = that path with ``.npz``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fewsam.data.readers.common import (Entry, IndexedDataset, Read, computed_splits, files_ending_with,
                                        natural_sorted, read_lines, split_name, to_image_array)
from fewsam.data.types import ClassMap
from fewsam.errors import DataError

CLASS_MAP = ClassMap({1: "rim", 2: "cup"})
IMAGE_KEYS = ("slo_fundus", "fundus_slo")
MASK_KEYS = ("disc_cup_mask", "disc_cup", "disc_cup_borders")
MASK_CODING = {0: 0, -1: 1, -2: 2, 1: 1, 2: 2}
UINT8_WRAPPED = {255: 1, 254: 2}
SPLITS = ("train", "val", "test")


def split_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root`` that name a split (``Training/``, ``Validation/``, ``Test/`` as the release
    names them, or ``training/``, ``val/``, ``TEST/``... in any letter case, ``split_name``), by name. Matched
    as a few spellings, ``training/`` and ``testing/`` were no such folders: the data was refused, told to give
    one of them as --data. Listed once each, as a case-insensitive disk shows ``Test/`` under ``test`` too."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and split_name(p.name) in SPLITS), key=lambda p: p.name)
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)

GENDER = {0: "female", 1: "male"}
RACE = {0: "Asian", 1: "Black", 2: "White"}
RACE_OLD = {2: "Asian", 3: "Black", 7: "White"}
ETHNICITY = {0: "non-Hispanic", 1: "Hispanic"}
LANGUAGE = {0: "English", 1: "Spanish", 2: "other"}
MARITAL = {0: "married or partnered", 1: "single", 2: "divorced", 3: "widowed",
           4: "legally separated"}


def detect(root: Path) -> bool:
    return any(files_ending_with(root, ".npz")) or any(files_ending_with(d, ".npz") for d in split_folders(root))


class FairSegDataset(IndexedDataset):
    layout = "fairseg-npz"
    format = "npz"

    def __init__(self, root: Path) -> None:
        files = natural_sorted(files_ending_with(root, ".npz"), key=lambda p: p.name) + natural_sorted(
            (p for d in split_folders(root) for p in files_ending_with(d, ".npz")),
            key=lambda p: p.relative_to(root).as_posix())
        entries = [_entry(root, p) for p in files]
        if not entries:
            raise DataError(f"no .npz files in {root} or its Training/ and Test/ folders")
        super().__init__(root, CLASS_MAP, entries)
        self.splits = self._find_splits()

    def _find_splits(self) -> dict[str, list[str]]:
        splits = {}
        for split in ("train", "val", "test"):
            for name in (f"{split}.list", f"{split}.txt"):
                if (self.root / name).is_file():
                    splits[split] = [self._id_for_line(ln) for ln in read_lines(self.root / name)]
                    self.check_known(splits[split], str(self.root / name))
                    break
        if splits:
            return splits
        flat = [e for cid, e in self.entries.items() if "/" not in cid]
        if flat:  # files in root: no split named, so the rule every reader computes (a val split too)
            splits = computed_splits(flat)
            self.computed_splits = ("train", "val")
        for cid in self.entries:
            if "/" in cid:
                splits.setdefault(split_name(cid.split("/")[0]), []).append(cid)
        return splits

    def _read(self, entry: Entry) -> Read:
        try:
            with np.load(entry.image, allow_pickle=False) as data:
                keys = set(data.files)
                image_key = _first(keys, IMAGE_KEYS, entry.image, "image")
                image = _greyscale(to_image_array(np.asarray(data[image_key]), entry.image), entry.image)
                mask_key = next((k for k in MASK_KEYS if k in keys), None) if entry.label is not None else None
                mask = None if mask_key is None else np.asarray(data[mask_key])
                attributes = _file_attributes(data, image_key)
        except NPZ_ERRORS as err:
            raise DataError(f"cannot read {entry.image} (truncated or not an npz?): {err}") from None
        label = None if mask is None else _decode_mask(mask, entry.image)[None]
        return Read(image=image[None], label=label, attributes=attributes)

    def file_attributes(self, case_id: str) -> tuple[str, dict[str, Any]]:
        """(the file, the attributes it stores, decoded) of a case, its pixels left unread: what a joined
        table is compared with (``fairness.say_tables_over_files``)."""
        path = self._entry(case_id).image
        try:
            with np.load(path, allow_pickle=False) as data:
                return str(path), _file_attributes(data, _first(set(data.files), IMAGE_KEYS, path, "image"))
        except NPZ_ERRORS as err:
            raise DataError(f"cannot read {path} (truncated or not an npz?): {err}") from None


def _file_attributes(data: Any, image_key: str) -> dict[str, Any]:
    """The decoded attributes of an open npz file: its one-value arrays other than the image and mask."""
    scalars = {k: data[k] for k in set(data.files) - {image_key, *MASK_KEYS}}
    return decode_attributes({k: _scalar(v) for k, v in scalars.items() if v.size == 1}, image_key)


def _entry(root: Path, path: Path) -> Entry:
    rel = path.relative_to(root).as_posix()
    cid = rel[:-4]
    return Entry(case_id=cid, image=path, label=path, rel_path=rel, subject=cid)


def _first(keys: set[str], wanted: tuple[str, ...], path: Path, what: str) -> str:
    key = next((k for k in wanted if k in keys), None)
    if key is None:
        raise DataError(f"{path} has no {what} key ({' or '.join(wanted)}); keys: {sorted(keys)}")
    return key


def _greyscale(image: np.ndarray, path: Path) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].mean(axis=-1)
    if image.ndim != 2:
        raise DataError(f"{path}: the fundus image must be (H, W), got {image.shape}")
    return image


def _decode_mask(mask: np.ndarray, path: Path) -> np.ndarray:
    if mask.dtype.kind not in "biuf":
        raise DataError(f"{path}: mask type {mask.dtype} cannot hold FairSeg codes; store integers")
    coding = dict(MASK_CODING)
    if mask.dtype == np.uint8:
        coding.update(UINT8_WRAPPED)
    bad = sorted(v for v in np.unique(mask).tolist() if v not in coding)
    if bad:
        raise DataError(f"mask values {bad} in {path} are not FairSeg codes (0 background, "
                        "-1 rim, -2 cup); fix the file")
    out = np.zeros(mask.shape, dtype=np.uint8)
    for code, cls in coding.items():
        if cls:
            out[mask == code] = cls
    return out


def _scalar(value: np.ndarray) -> Any:
    item = value.reshape(-1)[0].item()
    return item.decode() if isinstance(item, bytes) else item


def _code(raw: dict[str, Any], *names: str) -> int | None:
    for name in names:
        if name in raw and raw[name] is not None:
            try:
                code = int(float(raw[name]))
            except (TypeError, ValueError):
                return None
            return None if code == -1 else code
    return None


def _named(code: int | None, names: dict[int, str]) -> str | None:
    return None if code is None else names.get(code, str(code))


def decode_attributes(raw: dict[str, Any], image_key: str = "slo_fundus") -> dict[str, Any]:
    """FairSeg codes -> group names (see module docstring); unknown (-1) -> None."""
    age = raw.get("age")
    age = float(age) if isinstance(age, (int, float)) and age >= 0 else None
    days = age is not None and age > 200
    race = _code(raw, "race")
    old = image_key == "fundus_slo" or race in (3, 7) or days
    out: dict[str, Any] = {
        "gender": _named(_code(raw, "gender", "male"), GENDER),
        "race": _named(race, RACE_OLD if old else RACE),
        "ethnicity": _named(_code(raw, "ethnicity", "hispanic"), ETHNICITY),
        "language": _named(_code(raw, "language"), LANGUAGE),
        "maritalstatus": _named(_code(raw, "maritalstatus", "marriagestatus"), MARITAL),
        "age": None if age is None else (age / 365.0 if days else age),
    }
    if "pid" in raw:
        out["pid"] = raw["pid"]
    return {k: v for k, v in out.items() if k == "pid" or k in _present(raw)}


def _present(raw: dict[str, Any]) -> set[str]:
    aliases = {"gender": ("gender", "male"), "race": ("race",), "ethnicity": ("ethnicity", "hispanic"),
               "language": ("language",), "maritalstatus": ("maritalstatus", "marriagestatus"),
               "age": ("age",)}
    return {k for k, names in aliases.items() if any(n in raw for n in names)}


def keeps_attributes_in_files(dataset: Any) -> bool:
    """Whether a dataset's group attributes lie inside its image files (FairSeg's npz), so that reading them
    loads its cases; other npz layouts (MedSAM, Synapse) keep none there."""
    return getattr(dataset, "layout", None) == FairSegDataset.layout


def open_fairseg(root: Path) -> FairSegDataset:
    return FairSegDataset(root)
