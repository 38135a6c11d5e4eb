"""2D image/mask PNG folders: BUSI, the multisite fundus and prostate samples, generic folders.

Where the cases come from (first match wins):
1. ``root/index.csv`` with an ``image`` column and a ``mask`` or ``masks`` column (several
   masks separated by ';' are merged with OR; an empty cell means unlabelled). An extra mask
   whose size differs from the first is left out and listed in ``case.meta["skipped_masks"]``
   (BUSI's ``benign (4)_mask_1.png`` is 555x465 for a 416x416 image). Every other
   column (site, pathology, split, task, ...) becomes a case attribute. An index holding
   several ``task`` values (the multisite root) is refused: open a task folder instead.
2. ``root/../index.csv`` rows whose image path starts with ``root``'s name: so
   ``multisite/Fundus`` and ``multisite/ProstateSlice`` open as datasets of their own.
3. A scan: images in ``image/`` or ``images/`` with the same file name in a sibling ``mask/``,
   ``masks/``, ``label/`` or ``labels/``; or BUSI-style ``X.png`` + ``X_mask.png``
   (+ ``X_mask_1.png`` ...).
case_id = image path relative to root without ``.png``; rel_path = that path with ``.png``.

Pixel codings and class maps (``classes.json`` in root overrides, see ``read_style``):
- busi: masks 0/255 (1 also accepted) -> {1: "lesion"}; images greyscale (RGB files are
  converted to grey).
- fundus: mask 255 = background, 128 = disc rim, 0 = optic cup -> {1: "rim", 2: "cup"}
  (disc = rim + cup); images RGB, (1, H, W, 3).
- prostate: mask 255 = background, 0 = prostate (inverted, as in the multisite files)
  -> {1: "prostate"}; images greyscale.
- generic: masks 0/255 (or 0/1) -> {1: "foreground"}; RGB if the first image has colour.
The style is chosen from classes.json, else the index's ``task`` column, else BUSI markers
(a ``pathology`` column or benign/malignant folders), else "fundus"/"prostate" in the path.

Splits: the index's ``split`` column when present (multisite: train/test, no val). BUSI:
within each pathology, images sorted by number, the last 20% of benign and of malignant are
"val", the rest "train"; normal images (empty masks) are in no default split, but readable
and in "all" and "normal". Otherwise sorted case ids, every 5th to "val" (20%).
Labelled budget (BUSI): the train images alternate benign / malignant (benign 1, malignant 1,
benign 2, ...), so ``--labeled-images 30`` is 15 of each, not 24 benign and 6 malignant.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from fewsam.data.attributes import parse_cell
from fewsam.data.readers.common import Entry, IndexedDataset, Read, deterministic_split
from fewsam.data.types import ClassMap, SliceRef
from fewsam.errors import DataError

IMAGE_DIRS = ("image", "images")
MASK_DIRS = ("mask", "masks", "label", "labels")
PATH_COLUMNS = {"image", "mask", "masks"}
SUBJECT_COLUMNS = ("subject", "patient", "pid")
SPLIT_WORDS = ("train", "val", "test")


@dataclass(frozen=True)
class PngStyle:
    """How a PNG dataset stores classes as mask pixels, and whether images are colour."""

    name: str
    class_map: ClassMap
    to_class: dict[int, int]
    to_pixel: dict[int, int]
    rgb: bool


def binary_style(name: str, class_name: str, rgb: bool = False) -> PngStyle:
    return PngStyle(name, ClassMap({1: class_name}), {0: 0, 1: 1, 255: 1}, {0: 0, 1: 255}, rgb)


FUNDUS = PngStyle("fundus", ClassMap({1: "rim", 2: "cup"}), {255: 0, 128: 1, 0: 2},
                  {0: 255, 1: 128, 2: 0}, rgb=True)
BUSI = binary_style("busi", "lesion")
# The multisite prostate masks are inverted: 0 = prostate (1-4% of a slice), 255 = background.
PROSTATE = PngStyle("prostate", ClassMap({1: "prostate"}), {255: 0, 0: 1}, {0: 255, 1: 0}, rgb=False)


def detect(root: Path) -> bool:
    return (root / "index.csv").is_file() or bool(_parent_rows(root)) or any(root.rglob("*.png"))


class PngFolderDataset(IndexedDataset):
    layout = "png"
    format = "png"

    def __init__(self, root: Path) -> None:
        rows = _index_rows(root)
        task = _single_task(rows, root)
        entries = [_entry(root, row) for row in rows]
        self.style = read_style(root, task, rows, entries)
        super().__init__(root, self.style.class_map, entries)
        self.masks = {e.case_id: _mask_paths(root, row) for e, row in zip(entries, rows)}
        self.splits = _splits(entries, self.style)

    def labelled_budget_order(self) -> list[SliceRef]:
        """Train images in split order; BUSI's interleave the pathologies (a stratified budget)."""
        order = super().labelled_budget_order()
        if self.style.name != "busi":
            return order
        by_group: dict[str, list[SliceRef]] = {}
        for ref in order:
            by_group.setdefault(str(self.attributes_of(ref.case_id).get("pathology")), []).append(ref)
        rounds = zip_longest(*by_group.values())
        return [ref for group in rounds for ref in group if ref is not None]

    def _read(self, entry: Entry) -> Read:
        image = _read_image(entry.image, self.style.rgb)
        label, skipped = None, []
        for path in self.masks[entry.case_id]:
            decoded = _read_mask(path, self.style)
            if label is None:
                label = decoded
            elif decoded.shape == label.shape:
                label = np.maximum(label, decoded)
            else:
                skipped.append(str(path))
        meta = {"png_to_pixel": dict(self.style.to_pixel), "png_to_class": dict(self.style.to_class),
                "skipped_masks": skipped}
        return Read(image=image[None], label=None if label is None else label[None], meta=meta)


def read_style(root: Path, task: str, rows: list[dict[str, str]], entries: list[Entry]) -> PngStyle:
    """Pick the pixel coding (see module docstring). ``classes.json`` format::

        {"classes": {"1": "lesion"}, "pixel_values": {"0": 0, "1": 255}, "rgb": false}

    ``pixel_values`` maps class -> mask pixel value; without it one class is stored as 255
    (0/1 accepted) and several classes as their own index.
    """
    if (root / "classes.json").is_file():
        return _style_from_json(root / "classes.json")
    task, name = task.lower(), root.name.lower()
    for hint in (task, "busi" if _looks_like_busi(root, rows) else "", name):
        for word, style in (("fundus", FUNDUS), ("prostate", PROSTATE), ("busi", BUSI)):
            if word in hint:
                return style
    return binary_style("generic", "foreground", rgb=bool(entries) and _has_colour(entries[0].image))


def _looks_like_busi(root: Path, rows: list[dict[str, str]]) -> bool:
    return any("pathology" in r for r in rows) or (root / "benign").is_dir()


def _style_from_json(path: Path) -> PngStyle:
    try:
        spec = json.loads(path.read_text())
        class_map = ClassMap.from_json(spec["classes"])
        to_pixel = {int(k): int(v) for k, v in spec.get("pixel_values", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"cannot read {path} ({err}); write "
                        '{"classes": {"1": "name"}, "pixel_values": {"0": 0, "1": 255}}') from None
    rgb = bool(spec.get("rgb", False))
    if not to_pixel and class_map.num_classes == 1:
        c = class_map.labels[0]
        return PngStyle("custom", class_map, {0: 0, c: c, 255: c}, {0: 0, c: 255}, rgb)
    to_pixel = to_pixel or {c: c for c in [0, *class_map.labels]}
    to_pixel.setdefault(0, 0)
    to_class = {v: k for k, v in to_pixel.items()}
    return PngStyle("custom", class_map, to_class, to_pixel, rgb)


def _index_rows(root: Path) -> list[dict[str, str]]:
    """Rows with image/mask paths relative to root (own index, parent index, or a scan)."""
    if (root / "index.csv").is_file():
        return _read_index(root / "index.csv")
    return _parent_rows(root) or _scan(root)


def _read_index(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if not rows or "image" not in rows[0]:
        raise DataError(f"{path} needs a header with an 'image' column (and 'mask' or 'masks') "
                        "and at least one row")
    for row in rows:
        row.setdefault("masks", row.pop("mask", ""))
    return rows


def _parent_rows(root: Path) -> list[dict[str, str]]:
    index = root.parent / "index.csv"
    if root.parent == root or not index.is_file():
        return []
    prefix = root.name + "/"
    rows = [r for r in _read_index(index) if r["image"].replace("\\", "/").startswith(prefix)]
    for row in rows:
        row["image"] = row["image"].replace("\\", "/")[len(prefix):]
        row["masks"] = ";".join(m.replace("\\", "/")[len(prefix):] for m in _split_masks(row["masks"]))
    return rows


def _split_masks(cell: str) -> list[str]:
    return [m.strip() for m in re.split(r"[;|]", cell) if m.strip()]


def _scan(root: Path) -> list[dict[str, str]]:
    rows = []
    for image in sorted(root.rglob("*.png"), key=lambda p: _natural(p.relative_to(root).as_posix())):
        if "_mask" in image.stem or image.parent.name in MASK_DIRS:
            continue
        if image.parent.name in IMAGE_DIRS:
            candidates = [image.parent.parent / d / image.name for d in MASK_DIRS]
            masks = [m for m in candidates if m.is_file()][:1]
        else:
            masks = _masks_beside(image)
        rows.append({"image": image.relative_to(root).as_posix(),
                     "masks": ";".join(m.relative_to(root).as_posix() for m in masks)})
    return rows


def _masks_beside(image: Path) -> list[Path]:
    first = image.with_name(f"{image.stem}_mask.png")
    pattern = f"{_glob_escape(image.stem)}_mask_*.png"
    extra = sorted(image.parent.glob(pattern), key=lambda p: _natural(p.name))
    return ([first] if first.is_file() else []) + extra


def _glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def _single_task(rows: list[dict[str, str]], root: Path) -> str:
    tasks = sorted({r["task"] for r in rows if r.get("task")})
    if len(tasks) > 1:
        folders = sorted({r["image"].split("/")[0] for r in rows})
        raise DataError(f"{root} holds several tasks ({', '.join(tasks)}); open one task folder "
                        f"instead: {', '.join(str(root / f) for f in folders)}")
    if not rows:
        raise DataError(f"no PNG images found in {root}; expected index.csv, image/+mask/ folders "
                        "or X.png + X_mask.png pairs")
    return tasks[0] if tasks else ""


def _entry(root: Path, row: dict[str, str]) -> Entry:
    rel = row["image"].replace("\\", "/").removeprefix("./")
    attributes = {k: parse_cell(v) for k, v in row.items() if k not in PATH_COLUMNS}
    case_id = rel[:-4] if rel.lower().endswith(".png") else rel
    subject = next((str(attributes[c]) for c in SUBJECT_COLUMNS if attributes.get(c) is not None),
                   case_id)
    masks = _mask_paths(root, row)
    return Entry(case_id=case_id, image=root / rel, label=masks[0] if masks else None, rel_path=rel,
                 subject=subject, attributes=attributes)


def _mask_paths(root: Path, row: dict[str, str]) -> list[Path]:
    return [root / m for m in _split_masks(row.get("masks", ""))]


def _splits(entries: list[Entry], style: PngStyle) -> dict[str, list[str]]:
    if any(e.attributes.get("split") for e in entries):
        splits: dict[str, list[str]] = {}
        for e in entries:
            splits.setdefault(str(e.attributes.get("split") or "none"), []).append(e.case_id)
        return splits
    by_path = {e.case_id: _split_from_path(e.rel_path) for e in entries}
    if all(by_path.values()):
        splits = {}
        for e in entries:
            splits.setdefault(by_path[e.case_id], []).append(e.case_id)
        return splits
    if style.name == "busi":
        return _busi_splits(entries)
    return deterministic_split([e.case_id for e in entries])


def _split_from_path(rel_path: str) -> str:
    parts = [p.lower() for p in PurePosixPath(rel_path).parts[:-1]]
    return next((w for w in SPLIT_WORDS if w in parts), "")


def _busi_splits(entries: list[Entry]) -> dict[str, list[str]]:
    """Per pathology, sorted by number: last 20% -> val; normal images in "normal" only."""
    groups: dict[str, list[str]] = {}
    for e in entries:
        pathology = e.attributes.get("pathology") or PurePosixPath(e.rel_path).parts[0]
        e.attributes.setdefault("pathology", pathology)
        groups.setdefault(str(pathology), []).append(e.case_id)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for pathology, ids in sorted(groups.items()):
        ids = sorted(ids, key=_natural)
        if pathology == "normal":
            splits["normal"] = ids
            continue
        n_val = max(1, round(0.2 * len(ids))) if len(ids) > 1 else 0
        splits["train"] += ids[: len(ids) - n_val]
        splits["val"] += ids[len(ids) - n_val:]
    return splits


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _open_png(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(f"file {path} not found; restore it or fix the dataset index")
    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read {path} (truncated or not an image?): {err}") from None
    return im


def _read_image(path: Path, rgb: bool) -> np.ndarray:
    im = _open_png(path)
    if rgb:
        return np.asarray(im.convert("RGB"), dtype=np.float32)
    if im.mode in ("I", "I;16", "I;16B", "F"):
        return np.asarray(im, dtype=np.float32)
    return np.asarray(im.convert("L"), dtype=np.float32)


def _has_colour(path: Path) -> bool:
    a = np.asarray(_open_png(path).convert("RGB"))
    return not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))


def mask_to_classes(pixels: np.ndarray, to_class: dict[int, int], path: Path) -> np.ndarray:
    """Map mask pixel values to class indices; values outside the coding are a DataError."""
    lut = np.full(256, -1, dtype=np.int16)
    for pixel, cls in to_class.items():
        lut[pixel] = cls
    out = lut[pixels]
    if (out < 0).any():
        bad = sorted(int(v) for v in np.unique(pixels[out < 0]))
        raise DataError(f"mask values {bad} in {path} are not in this dataset's coding "
                        f"{ {int(k): v for k, v in to_class.items()} } (pixel -> class); "
                        "fix the mask or add classes.json")
    return out.astype(np.uint8)


def read_mask_pixels(path: Path) -> np.ndarray:
    """A mask PNG as (H, W) uint8 pixel values (mode 1, RGB and RGBA are converted to L)."""
    im = _open_png(path)
    return np.asarray(im if im.mode == "L" else im.convert("L"))


def _read_mask(path: Path, style: PngStyle) -> np.ndarray:
    return mask_to_classes(read_mask_pixels(path), style.to_class, path)


def open_png_folder(root: Path) -> PngFolderDataset:
    return PngFolderDataset(root)
