"""2D image/mask folders (PNG, JPEG, TIFF, BMP): BUSI, the multisite fundus and prostate samples,
generic folders such as Kvasir-SEG's ``images/*.jpg`` + ``masks/*.jpg``.

Files: ``.png .jpg .jpeg .tif .tiff .bmp .gif`` in any letter case, images and masks alike (an image
and its mask may differ in format), read as viewers show them (turned by their EXIF orientation). Predictions are always PNG (``fewsam.data.writers``): a case's
``rel_path`` is its image's relative path with the suffix changed to ``.png``.

Where the cases come from (first match wins):
1. ``root/index.csv`` with an ``image`` column and a ``mask`` or ``masks`` column (several
   masks separated by ';' are merged with OR; an empty cell means unlabelled). An extra mask
   whose size differs from the first is left out and listed in ``case.meta["skipped_masks"]``
   (BUSI's ``benign (4)_mask_1.png`` is 555x465 for a 416x416 image). Every other
   column (site, pathology, split, task, ...) becomes a case attribute. An index holding
   several ``task`` values (the multisite root) is refused: open a task folder instead.
2. ``root/../index.csv`` rows whose image path starts with ``root``'s name: so
   ``multisite/Fundus`` and ``multisite/ProstateSlice`` open as datasets of their own.
3. A scan: images in ``image/`` or ``images/`` (or sub-folders of it), or in a folder beside a mask
   folder, with a mask of the same stem (any of the formats; or the stem + ``_mask``, ``_seg``,
   ``_segmentation``, ``_label`` or ``_gt``) at the same place in a sibling mask folder
   (``images/a/x.jpg`` -> ``masks/a/x.png`` or ``masks/a/x_mask.png``): ``mask/``, ``masks/``,
   ``label/``, ``labels/``, or a folder whose name holds a mask word (or is ``gts``, ``seg``, ``segs``:
   MedSAM's ``imgs/`` + ``gts/``) beside a folder of images
   (ISIC's ``..._GroundTruth``, CVC's ``Ground Truth``, DRIVE's ``1st_manual``; ``MaskFolders``:
   masks in its sub-folders merged, Montgomery's ``leftMask/`` + ``rightMask/``; names pairing by
   their one number, DRIVE's ``21_training`` + ``21_manual1``; a ``mask/`` beside drawn annotations
   is a field-of-view mask, not read, and so is a ``mask/`` or ``masks/`` whose masks cover most of
   their pictures, dark outside them: DRIVE's ``test/`` alone, ``_fields_of_view``); or BUSI-style ``X.png`` + ``X_mask.png`` (+ ``X_mask_1.png``
   ...), also ``X_anno`` (GlaS), ``X_seg``, ``X_gt``... Files are listed in natural order (``case2``
   before ``case10``); folder names are matched in any letter case.
case_id = image path relative to root without its suffix; two images that would share an id
(``a.png`` and ``a.jpg``) are refused, as their predictions would share ``a.png``.

Pixel codings and class maps (``classes.json`` in root overrides, see ``read_style``):
- busi: masks 0/255 (1 also accepted) -> {1: "lesion"}, predictions in the value the masks store
  the lesion as (255, 1 or 16-bit 65535); images greyscale (RGB files are converted to grey).
- fundus: mask 255 = background, 128 = disc rim, 0 = optic cup -> {1: "rim", 2: "cup"}
  (disc = rim + cup); images RGB, (1, H, W, 3).
- prostate: mask 255 = background, 0 = prostate (inverted, as in the multisite files)
  -> {1: "prostate"}; images greyscale.
- palette: masks saved as colour-palette PNGs (VOC-style tools, labelme): each palette index is
  a class, {i: "class<i>"} for the indices found in the masks; predictions keep the palette.
- generic: masks 0/255 (or 0/1, or 16-bit 0/65535) -> {1: "foreground"}, predictions in the same two
  values (16-bit PNG for 0/65535): each in its own image's mask's, where masks differ (0/1 beside 0/255).
- colour: a classes.json giving each class a "colour" (CholecSeg8k, CamVid, annotation tools' exports):
  each mask pixel's colour is its class (black the background), RGB, RGBA and palette files alike;
  a colour in no class is refused (JPEG masks: the nearest within ``colour_tolerance``); predictions
  are RGB PNGs in those colours. A colour mask without one is refused with a classes.json to paste.
Images of the palette, generic and index codings (and of a classes.json without "rgb") are read
each as it is: RGB where it shows colour, else greyscale (``shows_colour``); 16-bit and float
files keep their values, 16-bit colour ones (48-bit RGB) and float colour TIFFs too (``_wide_colour``).
- index: grey masks of class indices (0, 1, 2, ... up to 31) -> {i: "class<i>"} for the values
  found in the masks; predictions in the same indices.
The style is chosen from classes.json, else the index's ``task`` column, else BUSI markers
(a ``pathology`` column or benign/malignant folders), else "fundus"/"prostate" in the path.
JPEG masks are lossy (compression blurs 0/255 into 0-30 and 225-255): each of their pixels is
read as the nearest value of the coding, i.e. a 0/255 mask is thresholded at the midpoint 128
(said once per dataset via the "fewsam" logger); a region of a grey level far from every value of the
coding is refused (``refuse_levels_between``). classes.json ranges replace that rounding.

Splits: the index's ``split`` column when present (multisite: train/test, no val), else the
``train/``, ``val/``, ``test/`` folders, else the split words of the folders' names (ISIC's
``..._Training_Input``, ``..._Validation_Input``; DRIVE's ``training/``, ``test/``), else of the
files' names (GlaS' ``train_1.bmp``, ``testA_1.bmp``), where they name more than one split ('val',
where none is named, drawn from the training images). BUSI, where
the data names each image's pathology (a column, or benign/, malignant/, normal/ folders): within
each pathology, images sorted by number, the last 20% of benign and of malignant are
"val", the rest "train"; normal images (empty masks) are in no default split, but readable
and in "all" and "normal". Otherwise naturally sorted subjects (an index's patient column, else
each image), every 5th to "val" with all its images (20%; at least one of two or more).
Images without a mask are in "test" (``computed_splits``, as in every reader); without any mask,
"val" holds every image (``IndexedDataset.settle_unlabelled``).
Labelled budget (BUSI): the train images alternate benign / malignant (benign 1, malignant 1,
benign 2, ...), so ``--labeled-images 30`` is 15 of each, not 24 benign and 6 malignant.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import warnings
from dataclasses import dataclass, replace
from itertools import zip_longest
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageOps
from scipy import ndimage

from fewsam.data.attributes import (AttributeTable, csv_error_text, parse_cell, read_attribute_table,
                                    refuse_cells_beyond_header, user_csv_rows, with_decimal_point)
from fewsam.data.readers.common import (CLASSES_JSON_HELP, Entry, IndexedDataset, Read, class_specs,
                                        computed_splits, files_below, ignore_value, is_data_file, natural_key,
                                        natural_sorted, path_below, read_json_object, refuse_missing_file,
                                        rounded_float_label, split_name, SPLIT_SPELLINGS, VAL_RULE, with_ignore)
from fewsam.data.readers.itk_volume import itk_message, itk_reader, quiet_itk
from fewsam.data.types import ClassMap, SliceRef
from fewsam.errors import DataError
from fewsam.progress import say_once

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
LOSSY_FORMATS = ("JPEG", "MPO")  # Pillow's names for JPEG files (MPO: a camera's multi-picture JPEG)
IMAGE_DIRS = ("image", "images")
BUSI_FOLDERS = ("benign", "malignant", "normal")  # the folders of the BUSI release, one per pathology
BUSI_VAL_RULE = "the last 20% of each pathology's images (at least one of two or more; normal images in none)"
MASK_DIRS = ("mask", "masks", "label", "labels")
# A mask in a mask folder has the image's stem, or the stem plus one of these (x.png -> x_mask.png)
MASK_STEM_SUFFIXES = ("", "_mask", "_seg", "_segmentation", "_label", "_gt")
PATH_COLUMNS = {"image", "mask", "masks"}
SUBJECT_COLUMNS = ("subject", "patient", "pid")
SPLIT_WORDS = ("train", "val", "test")
HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
log = logging.getLogger("fewsam")


@dataclass(frozen=True)
class PngStyle:
    """How a 2D dataset stores classes as mask pixels, and whether images are colour.

    ``to_class`` maps mask pixel values to classes (values missing from it are errors, except
    in JPEG masks); ``ranged`` styles (classes.json ranges) map all 256 values. Its keys are 8-bit, as
    masks are read (``read_mask_file`` clips 16-bit ones); ``to_pixel`` holds the values the masks store,
    65535 for 16-bit masks coded 0/65535 (``SIXTEEN_BIT_STYLE``), so predictions are written as they are.
    """

    name: str
    class_map: ClassMap
    to_class: dict[int, int]
    to_pixel: dict[int, int]
    rgb: bool | None  # None: each image as it is, RGB where it shows colour (``shows_colour``)
    ranged: bool = False
    palette: tuple[int, ...] | None = None  # palette masks: predictions are written with it
    # colour-coded masks (classes.json "colour"): class -> (r, g, b), the background's (0) included; their
    # pixels are read by colour (``read_colour_mask``) straight to classes, so to_class and to_pixel stay
    # class -> class, and predictions are written as RGB in these colours
    colours: dict[int, tuple[int, int, int]] | None = None

    def lossy_to_class(self) -> dict[int, int]:
        """pixel -> class for lossy (JPEG) masks: every value goes to the class of the nearest
        value this coding writes; for 0/255 that is a threshold at the midpoint (>= 128)."""
        if self.ranged:
            return self.to_class
        coded = sorted((min(pixel, 255), cls) for cls, pixel in self.to_pixel.items())
        pixels = np.array([p for p, _ in coded])
        nearest = np.abs(np.arange(256)[:, None] - pixels[None, :]).argmin(axis=1)
        return {v: coded[int(i)][1] for v, i in enumerate(nearest)}


def binary_style(name: str, class_name: str, rgb: bool | None = False) -> PngStyle:
    return PngStyle(name, ClassMap({1: class_name}), {0: 0, 1: 1, 255: 1}, {0: 0, 1: 255}, rgb)


FUNDUS = PngStyle("fundus", ClassMap({1: "rim", 2: "cup"}), {255: 0, 128: 1, 0: 2},
                  {0: 255, 1: 128, 2: 0}, rgb=True)
BUSI = binary_style("busi", "lesion")
# The multisite prostate masks are inverted: 0 = prostate (1-4% of a slice), 255 = background.
PROSTATE = PngStyle("prostate", ClassMap({1: "prostate"}), {255: 0, 0: 1}, {0: 255, 1: 0}, rgb=False)


def is_image_name(name: str) -> bool:
    """A 2D image file name this reader reads (suffix in any letter case; no hidden files)."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def detect(root: Path) -> bool:
    return ((root / "index.csv").is_file() or bool(_parent_rows(root))
            or any(is_image_name(p.name) and p.is_file() for p in files_below(root)))


class PngFolderDataset(IndexedDataset):
    layout = "png"
    format = "png"

    def __init__(self, root: Path) -> None:
        rows, self.reads_whole_tree = _index_rows(root)
        task = _single_task(rows, root)
        entries = [_entry(root, row) for row in rows]
        _check_unique(entries, root)
        table = images_table(root, entries) if self.reads_whole_tree else None
        self.style = read_style(root, task, rows, entries)
        super().__init__(root, self.style.class_map, entries)
        if table is not None:
            self.add_attributes(table)
        self.masks = {e.case_id: _mask_paths(root, row) for e, row in zip(entries, rows)}
        self.splits, rule = _splits(entries, self.style)
        self.computed_splits = ("train", "val") if rule else ()
        self.val_rule = rule or self.val_rule
        self._lossy_noted = False
        self._mask_folders: MaskFolders | None = None

    def prediction_rel_path(self, entry: Entry) -> str:
        """Predictions are PNG: the image's relative path with its suffix changed to .png."""
        return str(PurePosixPath(entry.rel_path).with_suffix(".png"))

    def new_label_rel_path(self, entry: Entry) -> str:
        """The mask the scan pairs with an image (a PNG): ``masks/...`` for an image below ``images/``,
        the mask folder beside its folder (``_beside_mask_folder``), else ``<stem>_mask.png`` beside it.
        Named as its image (``x.png``), an exported label read back as a second image, not as the label."""
        rel = PurePosixPath(entry.rel_path)
        folders, top = rel.parts[:-1], _deepest(rel.parts[:-1], IMAGE_DIRS)
        if top is None:
            return self._beside_mask_folder(rel) or rel.with_name(f"{rel.stem}_mask.png").as_posix()
        masks = "mask" if folders[top].lower() == "image" else "masks"
        return PurePosixPath(*folders[:top], masks, *folders[top + 1:], f"{rel.stem}.png").as_posix()

    def _beside_mask_folder(self, rel: PurePosixPath) -> str | None:
        """For an image in a folder beside a mask folder (ISIC's ``..._Input/`` beside ``..._GroundTruth/``),
        where the scan looks for its mask: in that folder, at the image's place below it, named as the
        image; None for other images (and for an index, which names each mask itself)."""
        if not self.reads_whole_tree:
            return None
        if self._mask_folders is None:
            files = [e.image for e in self.entries.values()] + [m for ms in self.masks.values() for m in ms]
            self._mask_folders = MaskFolders(self.root, files)
        level = self._mask_folders.image_level(self.root / rel)
        siblings = self._mask_folders.mask_siblings(level[0]) if level else []
        if not siblings:
            return None
        return PurePosixPath((siblings[0] / Path(*level[1]) / f"{rel.stem}.png").relative_to(self.root)).as_posix()

    def index_with_masks(self, masks: dict[str, str]) -> str | None:
        """This dataset's index (``index.csv``, or its rows of the parent folder's, paths relative to root)
        as CSV text, with the mask cell of each case of ``masks`` (case id -> mask path relative to root)
        naming that mask alone; every other row and cell as it was, so a case still without a mask stays
        listed with an empty one. An index is what the reader trusts: a mask file written for a case whose
        mask cell is empty is never read, and a cell that still named the case's other masks (BUSI's
        ``x_mask.png;x_mask_1.png``, or ``x_mask.jpg`` beside the new ``x_mask.png``) would merge the old
        outlines back into the new label. None for a folder without an index (the scan pairs masks by
        their names; see ``extra_mask_rel_paths``)."""
        if self.reads_whole_tree:
            return None
        rows, _ = _index_rows(self.root)
        columns = ["image", "mask", *(c for c in rows[0] if c not in ("image", "masks"))]
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(columns)
        for row in rows:
            cell = masks.get(_entry(self.root, row).case_id) or row.get("masks", "")
            out.writerow([row.get("image", ""), cell, *(row.get(c, "") for c in columns[2:])])
        return buf.getvalue()

    def extra_mask_rel_paths(self, case_id: str) -> list[str]:
        """The masks after a case's first that the scan merges into its label by their names (BUSI's
        ``x_mask_1.png`` ...), relative to root: a label written as ``x_mask.png`` alone reads back merged
        with them, so whoever writes the case's whole label also writes these, blank. Empty for a folder
        with an index, which names each case's masks itself (``index_with_masks``)."""
        if not self.reads_whole_tree:
            return []
        return [m.relative_to(self.root).as_posix() for m in self.masks.get(case_id, [])[1:]]

    def mask_coding(self) -> dict[str, Any]:
        """How this dataset's masks store its classes as pixels (class -> pixel, and the palette),
        kept in a run's config.json: a folder of new images has no masks to show the coding their
        predictions belong in, and the layout's guess (0/255) is not the 0/1 the run was fitted on."""
        colours = self.style.colours
        return {"to_pixel": {str(c): p for c, p in sorted(self.style.to_pixel.items())},
                "palette": list(self.style.palette) if self.style.palette else None,
                "colours": {str(c): list(rgb) for c, rgb in sorted(colours.items())} if colours else None}

    def adopt_mask_coding(self, class_map: ClassMap, coding: dict[str, Any]) -> bool:
        """Take a run's classes and mask coding (``mask_coding``) where this folder cannot tell its
        own: no mask anywhere and no classes.json. A folder with masks keeps its own coding.
        Returns whether the coding was taken."""
        if self.has_any_label() or (self.root / "classes.json").is_file():
            return False
        to_pixel = {int(c): int(p) for c, p in coding["to_pixel"].items()}
        palette = tuple(coding["palette"]) if coding.get("palette") else None
        colours = {int(c): tuple(rgb) for c, rgb in coding["colours"].items()} if coding.get("colours") else None
        self.style = PngStyle(self.style.name, class_map, {min(p, 255): c for c, p in to_pixel.items()}, to_pixel,
                              self.style.rgb, palette=palette, colours=colours)  # type: ignore[arg-type]
        self.class_map = class_map
        return True

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
        image = read_image(entry.image, self.style.rgb)
        label, skipped = None, []
        for path in self.masks[entry.case_id] if entry.label is not None else []:
            decoded = self._read_mask(path)
            if label is None:
                label = decoded
            elif decoded.shape == label.shape:
                label = np.maximum(label, decoded)
            else:
                skipped.append(str(path))
        meta = {"png_to_pixel": self._own_to_pixel(entry.case_id), "png_to_class": dict(self.style.to_class),
                "png_palette": self.style.palette, "png_colours": self.style.colours, "skipped_masks": skipped}
        return Read(image=image[None], label=None if label is None else label[None], meta=meta)

    def _own_to_pixel(self, case_id: str) -> dict[int, int]:
        """The class -> pixel coding of a case's prediction: the folder's (its first mask's), but the one the case's
        own mask stores where the folder's masks may store their one class each their own way (0/1 beside 0/255,
        masks gathered from several tools): in the first mask's, a prediction compared with its own image's mask
        by the user's tools matched nothing. Said once where the two differ."""
        masks = self.masks.get(case_id, [])
        own = (_as_mask_stores(self.style, masks[0])
               if masks and masks[0].is_file() and _one_class_in_any_value(self.style) else None)
        if own is None or own == self.style.to_pixel:
            return dict(self.style.to_pixel)
        cls = self.style.class_map.labels[0]
        say_once(f"{self.root}: the masks store their class in different values ({masks[0].name} as {own[cls]}, "
                 f"others as {self.style.to_pixel[cls]}); each prediction is written in the value of its own image's "
                 "mask, and of images without one in the first mask's", key=f"png-mixed-codings-{self.root}")
        return own

    def _read_mask(self, path: Path) -> np.ndarray:
        if self.style.colours:
            classes, lossy = read_colour_mask(path, self.style.colours)
            if lossy and not self._lossy_noted:
                self._lossy_noted = True
                log.info("JPEG masks in %s are lossy: each mask pixel is read as the nearest colour of classes.json "
                         "within %g of it (distance in RGB); save colour masks as PNG to keep them exact",
                         path.parent, colour_tolerance(self.style.colours))
            return classes
        pixels, lossy = read_mask_file(path, palette_indices=self.style.palette is not None)
        if not lossy:
            return mask_to_classes(pixels, self.style.to_class, path)
        refuse_levels_between(pixels, self.style, path)
        if not self._lossy_noted and not self.style.ranged:
            self._lossy_noted = True
            values = sorted(self.style.to_pixel.values())
            log.info("JPEG masks in %s are lossy: each mask pixel is read as the nearest of the "
                     "values %s (for 0/255, a threshold at the midpoint 128); save masks as PNG, or "
                     "give value ranges in classes.json, to decide otherwise", path.parent, values)
        return mask_to_classes(pixels, self.style.lossy_to_class(), path)


LOSSY_NOISE = 48  # the most JPEG moves a flat region of a mask from its grey level (under 10 at quality 50)
EDGE_BAND = 2  # JPEG's blur along a class edge: pixels within this many of one may lie far from every level
# A region of one grey level: this share of its pixels within LEVEL_SPREAD of their median (JPEG's noise on a flat
# 128: all of them); the ramp of a mask's edge smoothed by enlarging it 8 times or more holds half of them or less
LEVEL_SPREAD, PLATEAU_SHARE = 12, 0.8


def refuse_levels_between(pixels: np.ndarray, style: PngStyle, path: Path) -> None:
    """Refuse a JPEG mask holding a region of a grey level far from every value its coding stores (a 0/128/255
    mask saved as JPEG in a set read as 0/255): each lossy pixel is read as the nearest value, so that region, a
    class of its own, merged into another without a word, where the same mask saved as PNG is refused. JPEG's
    blur along class edges is a band of a pixel or two, never a region: a pixel counts where every pixel within
    ``EDGE_BAND`` of it lies more than ``LOSSY_NOISE`` from every value, and they make a region where most of them
    hold one grey level (``PLATEAU_SHARE``); the wider ramp of an edge smoothed by enlarging the mask still reads
    as the nearest value, as before."""
    if style.ranged:
        return
    levels = sorted(style.to_class)  # every value a mask may store a class (or unannotated pixels) as
    far = np.abs(pixels.astype(np.int16)[..., None] - np.asarray(levels, np.int16)).min(axis=-1) > LOSSY_NOISE
    region = pixels[ndimage.binary_erosion(far, iterations=EDGE_BAND)].astype(np.int16)
    level = int(np.median(region)) if region.size else 0
    if not region.size or (np.abs(region - level) <= LEVEL_SPREAD).mean() < PLATEAU_SHARE:
        return
    values = sorted({*(min(v, 255) for v in style.to_pixel.values()), level} - {min(style.to_pixel.get(0, 0), 255)})
    example = {str(c): {"name": f"class{c}", "pixel": v} for c, v in enumerate(values, start=1)}
    raise DataError(f"mask {path} (JPEG) holds a region of grey level about {level}, far from the values {levels} "
                    "this dataset's masks store its classes as; read as the nearest of them it would join another "
                    f"class: if it is a class of its own, give each class its value in classes.json, e.g. "
                    f"{json.dumps(example)}, or save the masks as PNG")


def read_style(root: Path, task: str, rows: list[dict[str, str]], entries: list[Entry]) -> PngStyle:
    """Pick the pixel coding (see module docstring). ``classes.json`` forms::

        {"1": "lesion"}                                  one class: mask 255 (or 1); several
        {"classes": {"1": "liver", "2": "tumour"}}       classes: stored as their own index
        {"classes": {"1": "liver", "2": "tumour"}, "pixel_values": {"0": 0, "1": 40, "2": 80},
         "rgb": false}                                   exact mask value per class
        {"1": {"name": "rim", "pixel": 128}, "2": {"name": "cup", "pixel": 0}}   the same, inline
        {"1": {"name": "polyp", "min": 128, "max": 255}} a range of mask values (inclusive)
        {"1": {"name": "tumour", "colour": [255, 0, 0]}, "2": {"name": "vessel", "colour": [0, 255, 0]}}
                                                         colour-coded masks: a colour per class
                                                         (``colour_style``)
        {"1": "polyp", "ignore": 255}                    255 marks unannotated pixels (scribbles):
                                                         ``ClassMap.ignore``, with classes given by value

    Ranges: "min" defaults to 0 and "max" to 255; values in no class's range are background;
    ranges may not overlap. A class without a range in a file that uses ranges is its exact
    value. Predictions write class c as its "pixel", else the end of its range that is 0 or 255,
    else the middle of its range; background as 0 (255 when a class range holds 0). The first form
    (one class, no value) writes its class as the masks store it (``_in_stored_foreground``). Colour-palette
    masks keep their palette in predictions whatever classes.json says (``_with_masks_palette``).
    """
    if (root / "classes.json").is_file():
        style = style_from_json(root / "classes.json")
        if style.colours:
            return style
        return _with_masks_palette(_in_stored_foreground(style, root, rows), root, rows)
    task, name = task.lower(), root.name.lower()
    for hint in (task, "busi" if _looks_like_busi(root, rows) else "", name):
        for word, style in (("fundus", FUNDUS), ("prostate", PROSTATE), ("busi", BUSI)):
            if word in hint:
                # BUSI's release stores 0/255, but copies converted to 0/1 (or saved 16-bit) are common
                return _in_stored_foreground(style, root, rows) if style is BUSI else style
    return _palette_style(root, rows) or _generic_style(root, rows)


def _generic_style(root: Path, rows: list[dict[str, str]]) -> PngStyle:
    """Binary masks as the dataset stores them: 0/255, or 0/1 (nnU-Net's and many converters'
    PNG labels), judged by the first mask with any foreground; class indices 0, 1, 2, ... when
    any mask holds them (``_index_style``). Predictions are written in the same values, so they
    compare with the dataset's own masks.

    A first mask of 0/1 is no proof of a binary set: a multi-class set whose first image shows only
    class 1 was read as one class and refused at the first mask holding a 2, so the other masks are
    looked at as well (read once each). A JPEG mask saved as 0/1 is blurred to values 0-3: read as
    0/255 (a threshold at 128) it became all background without a word, so it is 0/1 too."""
    style = binary_style("generic", "foreground", rgb=None)
    zero_one = PngStyle(style.name, style.class_map, style.to_class, {0: 0, 1: 1}, None)
    paths = [path for row in rows for path in _mask_paths(root, row) if path.is_file()]
    for i, path in enumerate(paths):
        if (read := _scanned_mask(path)) is None:
            continue
        pixels, lossy = read
        top = int(pixels.max(initial=0))
        if not top:
            continue
        if lossy:
            return zero_one if top <= LOSSY_ZERO_ONE_MAX else style
        if top == 1:
            return _index_style(paths) if any(map(_holds_class_indices, paths[i + 1:])) else zero_one
        if top <= INDEX_MASK_MAX and not _has_colour(path):
            return _index_style(paths)
        if top == 255 and _stored_top(path) == SIXTEEN_BIT_TOP:
            return PngStyle(style.name, style.class_map, style.to_class, {0: 0, 1: SIXTEEN_BIT_TOP}, None)
        break
    return style


def _in_stored_foreground(style: PngStyle, root: Path, rows: list[dict[str, str]]) -> PngStyle:
    """A classes.json naming one class without its mask value reads 0, the class index and 255 as it; its
    predictions are written in the value the first mask with any foreground stores (0/1, 0/255 or 16-bit
    0/65535), as a folder without classes.json has them: naming the class must not turn a 0/1 set's
    predictions into 0/255, which the user's own comparison with their masks reads as no match."""
    if not _one_class_in_any_value(style):
        return style
    for path in (path for row in rows for path in _mask_paths(root, row) if path.is_file()):
        if (to_pixel := _as_mask_stores(style, path)) is not None:
            return PngStyle(style.name, style.class_map, style.to_class, to_pixel, style.rgb)
    return style


def _one_class_in_any_value(style: PngStyle) -> bool:
    """Whether ``style`` reads one class from masks that store it as 1, as 255 or as 65535 alike, background 0
    (a folder without classes.json, BUSI, a classes.json naming one class without its value): which of these
    a prediction is written in is then what the masks store, not the style."""
    classes, ignore = style.class_map.labels, style.class_map.ignore
    stored = {value: cls for value, cls in style.to_class.items() if value != ignore}
    return (not style.ranged and not style.colours and style.palette is None and len(classes) == 1
            and stored == {0: 0, classes[0]: classes[0], 255: classes[0]})


def _as_mask_stores(style: PngStyle, path: Path) -> dict[int, int] | None:
    """The class -> pixel coding of a ``_one_class_in_any_value`` style as the mask ``path`` stores its class
    (0/1, 0/255 or 16-bit 0/65535); None where that mask holds no class or cannot be read."""
    read = _scanned_mask(path)
    top = _largest_class_value(read[0], style.class_map.ignore) if read is not None else 0
    if read is None or not top:
        return None
    cls = style.class_map.labels[0]
    return {0: 0, cls: _stored_foreground(path, top, read[1], cls)}


def _largest_class_value(mask: np.ndarray, ignore: int | None) -> int:
    """The largest value of a mask's pixels, its unannotated ones (``ignore``) left out; 0 for none."""
    return int((mask if ignore is None else mask[mask != ignore]).max(initial=0))


def _stored_foreground(path: Path, top: int, lossy: bool, cls: int) -> int:
    """The value a one-class mask whose largest 8-bit value is ``top`` stores its class as: the class index
    itself (a JPEG's blur keeps it at or below ``LOSSY_ZERO_ONE_MAX``), 65535 in a 16-bit 0/65535 mask, else 255."""
    if top == cls or (lossy and top <= LOSSY_ZERO_ONE_MAX):
        return cls
    if not lossy and top == 255 and _stored_top(path) == SIXTEEN_BIT_TOP:
        return SIXTEEN_BIT_TOP
    return 255


SIXTEEN_BIT_TOP = 65535  # the foreground of 16-bit masks coded 0/65535 (ImageJ's and some converters')


def _stored_top(path: Path) -> int:
    """The largest value a 16-bit, 32-bit or float mask stores before ``read_mask_file`` clips it to 255
    (0 for 8-bit masks): a folder of 0/65535 masks gets its predictions in 0/65535, not 0/255, which a
    pipeline thresholding at 32768 read as all background."""
    def top(im: Image.Image) -> int:
        im = _first_page(im, path)
        return int(np.asarray(im).max(initial=0)) if im.mode in WIDE_MODES else 0
    if _itk_alone_reads(path):  # a float colour TIFF mask (``_itk_mask``): wide values
        return int(np.rint(_itk_colour(path)[..., 0].max(initial=0)))
    return _decode(path, top)


LOSSY_ZERO_ONE_MAX = 15  # a JPEG mask whose values stay at or below this was saved as 0/1, not 0/255


def _holds_class_indices(path: Path) -> bool:
    """Whether a mask holds class indices above 1 (2 to INDEX_MASK_MAX, grey, lossless)."""
    if (read := _scanned_mask(path)) is None:
        return False
    pixels, lossy = read
    return not lossy and 2 <= int(pixels.max(initial=0)) <= INDEX_MASK_MAX and not _has_colour(path)


INDEX_MASK_MAX = 31  # a grey mask whose values reach 2 but stay at or below this holds class indices
# (a colour mask's grey levels say nothing of its classes: it is refused when read, as before)


def _index_style(paths: list[Path]) -> PngStyle:
    """Grey masks holding class indices 0, 1, 2, ... (nnU-Net's 2D sets, most multi-class converters):
    each value found in the masks is a class, named ``class<i>`` (classes.json names them), and
    predictions are written as the same indices. Read as 0/255 they would be refused at their first
    class 2. Reads every mask once, to find the classes."""
    classes = sorted(_values_in(paths) - {0})
    coding = {value: value for value in [0, *classes]}
    if len(classes) >= INSTANCES_FROM and _number_objects(paths):
        say_once(f"{paths[0].parent}: each mask holds the values 1, 2, ... up to its own count (1 to {classes[-1]} "
                 "in all), each value one region: they look like numbered objects (instances, as GlaS and MoNuSeg "
                 f"masks store glands and nuclei), which are read here as {len(classes)} classes; {INSTANCE_ADVICE}",
                 key=f"instance-masks-{paths[0].parent}")
    return PngStyle("index", ClassMap({c: f"class{c}" for c in classes}), coding, dict(coding), None)


INSTANCES_FROM = 3  # masks numbering at least this many regions 1, 2, 3, ... may number objects, not classes
INSTANCE_ADVICE = ('if so, add classes.json {"1": {"name": "foreground", "min": 1}} to the data folder, which reads '
                   "any value above 0 as one class")


def _number_objects(paths: list[Path], looked_at: int = 20) -> bool:
    """Whether the (first ``looked_at``) masks number objects: each holds 0 and 1 to its own count,
    every value one connected region, and the counts differ between masks. Class masks rarely do all
    three (a class is often several regions, or absent while a higher one is there)."""
    counts = set()
    for path in paths[:looked_at]:
        if (read := _scanned_mask(path)) is None:
            continue
        values = [int(v) for v in np.unique(read[0]) if v]
        if values != list(range(1, len(values) + 1)):
            return False
        if any(ndimage.label(read[0] == v)[1] != 1 for v in values):
            return False
        counts.add(len(values))
    return len(counts) > 1


def _palette_style(root: Path, rows: list[dict[str, str]]) -> PngStyle | None:
    """Masks saved as colour-palette PNGs (VOC-style tools, labelme): each palette index is a class,
    named ``class<i>`` (classes.json names them); predictions are written with the same palette.
    None when the first mask is not such a file. Reads every mask once, to find the classes."""
    paths = [path for row in rows for path in _mask_paths(root, row) if path.is_file()]
    palette = _masks_palette(paths)
    if palette is None:
        return None
    values = _values_in(paths, palette_indices=True) - {0}
    void = VOID_INDEX in values and len(values) > 1
    if void:
        say_once(f"{root}: palette index {VOID_INDEX} in the masks is read as unannotated, as VOC-style tools "
                 "mean it (\"void\": unlabelled borders): no loss learns from it and no score counts it; a "
                 "classes.json naming it as a class reads it so")
    classes = sorted(values - {VOID_INDEX} if void else values) or [1]
    coding = {value: value for value in [0, *classes]}
    to_class = {**coding, VOID_INDEX: VOID_INDEX} if void else dict(coding)
    return PngStyle("palette", ClassMap({c: f"class{c}" for c in classes}, VOID_INDEX if void else None), to_class,
                    coding, None, palette=tuple(palette))


def _masks_palette(paths: list[Path]) -> list[int] | None:
    """The palette of the first readable mask of ``paths`` where it is a colour-palette PNG, else None."""
    first = next((path for path in paths if _scanned_mask(path) is not None), None)
    if first is None or first.suffix.lower() != ".png":
        return None
    return _decode(first, lambda im: im.getpalette() if im.mode == "P" and _colour_palette(im) else None)


def _with_masks_palette(style: PngStyle, root: Path, rows: list[dict[str, str]]) -> PngStyle:
    """A classes.json style for colour-palette masks, with their palette: naming the classes of a VOC-style
    set must not turn its predictions into grey indices that viewers and annotation tools show as black."""
    palette = _masks_palette([path for row in rows for path in _mask_paths(root, row) if path.is_file()])
    return style if palette is None else replace(style, palette=tuple(palette))


VOID_INDEX = 255  # VOC's palette index for unlabelled borders, beside small class indices


def _scanned_mask(path: Path, palette_indices: bool = False) -> tuple[np.ndarray, bool] | None:
    """A mask read to find the folder's coding, or None (said once) when it cannot be read: the
    coding comes from the others, and the damaged file stops only what needs that case's mask
    (fit, evaluate), naming it; prediction and embedding never read it."""
    try:
        return read_mask_file(path, palette_indices)
    except DataError as err:
        say_once(f"mask scan: {err}; left out of the scan for the masks' coding", key=f"mask-scan-{path}")
        return None


def _values_in(paths: list[Path], palette_indices: bool = False) -> set[int]:
    """Every pixel value in the readable masks of ``paths`` (palette indices: ``read_mask_file``)."""
    return set().union(*(np.unique(read[0]).tolist() for path in paths
                         if (read := _scanned_mask(path, palette_indices))))


def _looks_like_busi(root: Path, rows: list[dict[str, str]]) -> bool:
    return any("pathology" in r for r in rows) or any(p.is_dir() and p.name.lower() == "benign" for p in root.iterdir())


def style_from_json(path: Path) -> PngStyle:
    """The coding a classes.json describes (forms in ``read_style``)."""
    spec = read_json_object(path)
    specs = class_specs(spec, path, with_background=True)
    background = specs.pop(0, {})
    class_map = ClassMap({c: e["name"] for c, e in sorted(specs.items())})
    rgb = spec.get("rgb")
    if rgb is not None and not isinstance(rgb, bool):
        raise DataError(f"{path}: \"rgb\" must be true or false, not {rgb!r}")
    ignore = ignore_value(spec["ignore"], path, largest=255) if "ignore" in spec else None
    coloured, ranged = any("colour" in e for e in (background, *specs.values())), \
        any("min" in e or "max" in e for e in specs.values())
    if ignore is not None and (coloured or ranged):
        raise DataError(f"{path}: an \"ignore\" mask value is read with classes given by value, not by "
                        f"{'colour' if coloured else 'range'}; give each class its value")
    if coloured:
        return colour_style(spec, specs, background, class_map, rgb, path)
    to_pixel = _pixel_values(spec, path)
    to_pixel.update({c: e["pixel"] for c, e in specs.items() if e.get("pixel") is not None})
    if ranged:
        return _ranged_style(specs, to_pixel, class_map, rgb, path)
    if not to_pixel and class_map.num_classes == 1:
        c = class_map.labels[0]
        if ignore is None:
            return PngStyle("custom", class_map, {0: 0, c: c, 255: c}, {0: 0, c: 255}, rgb)
        stored = {value: cls for value, cls in {0: 0, c: c, 255: c}.items() if value != ignore}
        return PngStyle("custom", with_ignore(class_map, ignore, path), {**stored, ignore: ignore},
                        {0: 0, c: 255 if 255 in stored else c}, rgb)
    to_pixel = {**{c: c for c in [0, *class_map.labels]}, **to_pixel}
    if len(set(to_pixel.values())) < len(to_pixel):
        raise DataError(f"{path}: two classes share a mask value ({to_pixel}, class -> value); "
                        "give each class its own value")
    to_class = {v: k for k, v in to_pixel.items()}
    if ignore is not None:
        if ignore in to_class:
            raise DataError(f"{path}: the \"ignore\" mask value {ignore} is also class {to_class[ignore]}'s; give "
                            "unannotated pixels a value of their own")
        class_map, to_class = with_ignore(class_map, ignore, path), {**to_class, ignore: ignore}
    return PngStyle("custom", class_map, to_class, to_pixel, rgb)


def colour_style(spec: dict[str, Any], specs: dict[int, dict[str, Any]], background: dict[str, Any],
                 class_map: ClassMap, rgb: bool | None, path: Path) -> PngStyle:
    """The coding of colour-coded masks (CholecSeg8k, CamVid, most annotation tools' exports): each class
    has its own colour, the background black unless "0" gives another. Every class needs a colour (a
    class without one could be neither read nor written) and no two share one; grey codings ("pixel",
    "min", "max", "pixel_values") describe other masks and are refused beside colours."""
    grey = sorted({k for e in specs.values() for k in ("pixel", "min", "max") if k in e}
                  | ({"pixel_values"} & set(spec)))
    if grey:
        raise DataError(f"{path} gives classes colours and grey mask values ({', '.join(grey)}) together; masks "
                        "store a class either as a colour or as a grey value: keep one of the two")
    uncoloured = [str(c) for c, e in sorted(specs.items()) if "colour" not in e]
    if uncoloured:
        raise DataError(f"{path}: class(es) {', '.join(uncoloured)} have no \"colour\" while others have one; "
                        'give every class its mask colour, e.g. {"1": {"name": "tumour", "colour": [255, 0, 0]}}')
    colours = {0: background.get("colour", (0, 0, 0)), **{c: e["colour"] for c, e in sorted(specs.items())}}
    owners: dict[tuple[int, int, int], int] = {}
    for c, colour in colours.items():
        if colour in owners:
            raise DataError(f"{path}: classes {owners[colour]} and {c} share the colour {list(colour)} (class 0 is "
                            "the background, black unless \"0\" gives its colour); give each class its own")
        owners[colour] = c
    identity = {c: c for c in colours}
    return PngStyle("colour", class_map, identity, dict(identity), rgb, colours=colours)


def _pixel_values(spec: dict[str, Any], path: Path) -> dict[int, int]:
    raw = spec.get("pixel_values", {})
    try:
        values = {int(k): int(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{path}: \"pixel_values\" must map class to mask value, e.g. "
                        '{"0": 0, "1": 255}') from None
    if any(not 0 <= v <= 255 for v in values.values()):
        raise DataError(f"{path}: \"pixel_values\" {raw} holds values outside 0-255")
    return values


def _ranged_style(specs: dict[int, dict[str, Any]], to_pixel: dict[int, int], class_map: ClassMap,
                  rgb: bool | None, path: Path) -> PngStyle:
    """Compile class ranges into a 256-value lookup (pixel -> class) and a pixel per class."""
    to_class = {v: 0 for v in range(256)}
    owner: dict[int, int] = {}
    for c, e in sorted(specs.items()):
        exact = to_pixel.get(c, c)
        low, high = e.get("min", exact if "max" not in e else 0), e.get("max", exact if "min" not in e else 255)
        if low > high:
            raise DataError(f"{path}: class {c} has min {low} above max {high}")
        for v in range(low, high + 1):
            if v in owner:
                raise DataError(f"{path}: the ranges of classes {owner[v]} and {c} overlap at "
                                f"mask value {v}; make them disjoint")
            owner[v], to_class[v] = c, c
        if c not in to_pixel:
            to_pixel[c] = high if high == 255 else low if low == 0 else (low + high) // 2
        if owner.get(to_pixel[c]) != c:
            raise DataError(f"{path}: class {c} is written as {to_pixel[c]}, outside its range "
                            f"{low}-{high}; give a \"pixel\" inside it")
    if 0 not in to_pixel:
        free = [v for v in (0, 255, *range(1, 255)) if v not in owner]
        if not free:
            raise DataError(f"{path}: the class ranges cover every value 0-255, leaving none "
                            "for the background; narrow one")
        to_pixel[0] = free[0]
    if to_pixel[0] in owner:
        raise DataError(f"{path}: background value {to_pixel[0]} lies in the range of class "
                        f"{owner[to_pixel[0]]}; {CLASSES_JSON_HELP}")
    return PngStyle("custom", class_map, to_class, to_pixel, rgb, ranged=True)


def _index_rows(root: Path) -> tuple[list[dict[str, Any]], bool]:
    """Rows with image/mask paths relative to root (own index, parent index, or a scan), and whether
    they come from the scan, which reads every image file below root as a case."""
    if (root / "index.csv").is_file():
        return _as_on_disk(_below_root(_read_index(root / "index.csv"), root), root, root / "index.csv"), False
    rows = _as_on_disk(_parent_rows(root), root, root.parent / "index.csv")
    return (rows, False) if rows else (_scan(root), True)


def _as_on_disk(rows: list[dict[str, str]], root: Path, index: Path) -> list[dict[str, str]]:
    """The index's image and mask paths as the files on disk spell them, where a path names no file but one
    file differs from it only in letter case (``Images/Case1.PNG`` for ``images/case1.png``: a table written on
    Windows or macOS, whose file systems ignore case); said once. Two such files are refused, naming them, as
    either could be the one meant; a path with no such file stays as written, said missing where it is read."""
    spelled = _DiskSpelling(root, index)
    for row in rows:
        row["image"] = spelled.path(row["image"])
        masks = _split_masks(row["masks"])
        found = [spelled.path(mask) for mask in masks]
        if found != masks:
            row["masks"] = ";".join(found)
    if spelled.respelled:
        first, on_disk = spelled.respelled[0]
        say_once(f"{index}: {len(spelled.respelled)} path(s) differ in letter case from the files on disk ({first} is "
                 f"{on_disk}); the files are read", key=f"index-letter-case-{index}")
    return rows


class _DiskSpelling:
    """A path below ``root`` as the files on disk spell it, each folder listed once."""

    def __init__(self, root: Path, index: Path) -> None:
        self.root, self.index = root, index
        self.listed: dict[Path, dict[str, list[str]]] = {}
        self.respelled: list[tuple[str, str]] = []

    def path(self, rel: str) -> str:
        """``rel`` where it names a file (or is no plain relative path); else its one spelling on disk that
        differs from it in letter case alone, if there is one."""
        parts = PurePosixPath(rel).parts
        if not rel or (self.root / rel).exists() or PurePosixPath(rel).is_absolute() or ".." in parts:
            return rel
        folder, found = self.root, []
        for part in parts:
            names = [part] if (folder / part).exists() else self._names(folder).get(part.casefold(), [])
            if len(names) > 1:
                raise DataError(f"{self.index}: {rel} names no file, and {len(names)} files differ from it only in "
                                f"letter case ({', '.join(names)} in {folder}); write the one meant as it is spelled")
            if not names:
                return rel
            folder, found = folder / names[0], [*found, names[0]]
        on_disk = PurePosixPath(*found).as_posix()
        self.respelled.append((rel, on_disk))
        return on_disk

    def _names(self, folder: Path) -> dict[str, list[str]]:
        """The entries of ``folder`` by their names in one letter case."""
        if folder not in self.listed:
            names: dict[str, list[str]] = {}
            try:
                for child in sorted(p.name for p in folder.iterdir()):
                    names.setdefault(child.casefold(), []).append(child)
            except OSError:  # not a folder, or unreadable: the path is said missing where it is read
                pass
            self.listed[folder] = names
        return self.listed[folder]


def _read_index(path: Path) -> list[dict[str, str]]:
    reader, read_to = None, 0
    try:
        separator, reader = user_csv_rows(path)  # Excel writes ";" where "," is the decimal mark
        reader.fieldnames = _index_columns(list(reader.fieldnames or []), path)
        width, rows = len(reader.fieldnames), []
        read_to = reader.reader.line_num
        for r in reader:
            extra = r.pop(None, None)  # type: ignore[call-overload]  # the cells beyond the header
            refuse_cells_beyond_header(path, width, extra, reader.reader.line_num, separator)
            rows.append({k.strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items() if k})
            read_to = reader.reader.line_num
        if separator == ";":
            rows = [{k: with_decimal_point(v) for k, v in row.items()} for row in rows]
    except (OSError, csv.Error) as err:
        raise DataError(f"cannot read {path}: {csv_error_text(err, reader, read_to)}") from None
    if not rows or "image" not in rows[0]:
        raise DataError(f"{path} needs a header with an 'image' column (and 'mask', 'masks' or 'label') "
                        "and at least one row")
    _read_label_column_as_masks(rows)
    for row in rows:
        row.setdefault("masks", row.pop("mask", ""))
        row["image"], row["masks"] = posix_cell(row["image"]), posix_cell(row["masks"])
    if any(not row["image"] for row in rows):
        raise DataError(f"{path} has a row with an empty 'image' cell; fill it or delete the row")
    return rows


# The index columns read by their names, matched in any letter case: spreadsheets and pandas write "Image",
# "Mask", "Split"; a "Split" column read as an attribute left the user's held-out images to the computed splits
INDEX_COLUMNS = (*PATH_COLUMNS, "split", "task", "pathology", *SUBJECT_COLUMNS)


def _index_columns(header: list[str], path: Path) -> list[str]:
    """An index's header with the columns fewsam reads by name (``INDEX_COLUMNS``) in lower case, the others as
    written (they are group attributes, named as the user wrote them); two that are then one name are refused,
    naming both, as either could be the one meant."""
    named: dict[str, str] = {}
    columns = []
    for column in header:
        name = column.strip().lower() if column.strip().lower() in INDEX_COLUMNS else column
        if name in named and name in INDEX_COLUMNS:
            raise DataError(f"{path}: columns {named[name]!r} and {column!r} are both the {name!r} column; "
                            "keep one of them")
        named[name] = column
        columns.append(name)
    return columns


def _read_label_column_as_masks(rows: list[dict[str, str]]) -> None:
    """An index without a mask column whose ``label`` column names image files (MONAI's data lists and CSV
    datasets pair ``image`` with ``label``) has its masks there: read as a group attribute, every image was
    unlabelled and a fit said the folder had no label files. A ``label`` column of words (benign, malignant)
    beside no mask column stays an attribute."""
    if "mask" in rows[0] or "masks" in rows[0]:
        return
    column = next((name for name in rows[0] if name.lower() == "label"), None)
    cells = [row[column] for row in rows if column is not None and row[column]]
    if cells and all(is_image_name(PurePosixPath(posix_cell(cell)).name) for cell in cells):
        for row in rows:
            row["masks"] = row.pop(str(column))


def posix_cell(cell: str) -> str:
    """An index cell's paths with '/' between folders: a table written on Windows (Excel, pandas' to_csv of
    ``os.path.join`` paths) names ``masks\\x.png``, which no file below root is called here, so the image was
    found and its mask said to be missing."""
    return cell.replace("\\", "/")


def _below_root(rows: list[dict[str, str]], root: Path) -> list[dict[str, str]]:
    """The rows of root's own index with paths below root, where every image path starts with root's own name
    and names its file only so (``data/images/x.png`` in ``data/index.csv``, written by a script run in the
    folder above): read below root, each image was ``data/data/images/x.png``, said missing when a fit read it."""
    prefix = root.resolve().name + "/"
    if not all(row["image"].startswith(prefix) for row in rows):
        return rows
    first = rows[0]["image"]
    if (root / first).exists() or not (root / first[len(prefix):]).exists():
        return rows
    for row in rows:
        row["image"] = row["image"][len(prefix):]
        row["masks"] = ";".join(m.removeprefix(prefix) for m in _split_masks(row["masks"]))
    return rows


def _parent_rows(root: Path) -> list[dict[str, str]]:
    index = root.parent / "index.csv"
    if root.parent == root or not index.is_file():
        return []
    prefix = root.name + "/"
    rows = [r for r in _read_index(index) if r["image"].startswith(prefix)]
    for row in rows:
        row["image"] = row["image"][len(prefix):]
        row["masks"] = ";".join(m[len(prefix):] for m in _split_masks(row["masks"]))
    return rows


def _split_masks(cell: str | list[str]) -> list[str]:
    """A row's mask paths: an index's cell separates them with ';' or '|'; the scan's rows hold them as a
    list, so that a mask file named ``semi;colon.png`` stays one path (split, it paired with no image)."""
    if isinstance(cell, list):
        return list(cell)
    return [m.strip() for m in re.split(r"[;|]", cell) if m.strip()]


def _scan(root: Path) -> list[dict[str, Any]]:
    files = natural_sorted((p for p in files_below(root) if is_image_name(p.name) and is_data_file(p)),
                           key=lambda p: p.relative_to(root).as_posix())
    by_stem: dict[tuple[Path, str], list[Path]] = {}
    extras: dict[tuple[Path, str], list[Path]] = {}
    for p in files:  # stems in lower case: Windows tools write x_MASK.PNG beside x.png
        stem = p.stem.lower()
        by_stem.setdefault((p.parent, stem), []).append(p)
        if "_mask_" in stem:
            extras.setdefault((p.parent, stem[: stem.rindex("_mask_")]), []).append(p)
    folders = MaskFolders(root, files)
    rows = _paired_rows(root, files, folders, by_stem, extras)
    if folders.field_of_view and not folders.used_drawn():  # no drawn annotation pairs: mask/ holds the labels
        folders = MaskFolders(root, files, field_of_view=False)
        rows = _paired_rows(root, files, folders, by_stem, extras)
    looked = _fields_of_view(root, rows, folders)
    if looked:
        folders.read_as_fields_of_view(looked)
        rows = _paired_rows(root, files, folders, by_stem, extras)
    folders.say_unread(rows)
    note_unpaired_masks(root, files, rows, folders)
    note_folders_of_one_naming(rows, files)
    return rows


def note_folders_of_one_naming(rows: list[dict[str, Any]], files: list[Path]) -> None:
    """Where no image has a mask, say which two folders side by side hold files of mostly the same names: one is
    most likely the other's masks under a name no reader knows (targets/, y/), each mask now read as an image to
    segment, and a fit refused as the folder having no label files, naming neither."""
    if any(row["masks"] for row in rows):
        return
    stems: dict[Path, set[str]] = {}
    for path in files:
        stems.setdefault(path.parent, set()).add(path.stem.lower())
    folders = natural_sorted(stems, key=lambda p: p.as_posix())
    for i, first in enumerate(folders):
        for second in folders[i + 1:]:
            shared = stems[first] & stems[second]
            if split_name(first.name) in SPLIT_WORDS or split_name(second.name) in SPLIT_WORDS:
                continue  # train/ and test/ folders share names as often as not
            if first.parent == second.parent and len(shared) * 2 >= max(len(stems[first]), len(stems[second]), 2):
                say_once(f"{first} and {second} hold files of the same names ({len(shared)}) and no image has a mask: "
                         f"if one holds the other's masks, rename it masks/ (masks are read from mask/, masks/, "
                         "label/, labels/, gts/, seg/ or a folder named for ground truth or annotations beside the "
                         "images); now each of their files is an image to segment", key=f"one-naming-{first}")
                return


FIELD_OF_VIEW_LOOKS = 2  # image/mask pairs of a mask/ folder looked at to tell a field of view from a label
FIELD_OF_VIEW_COVER = 0.4  # the least share of the picture a field-of-view mask covers (DRIVE's: about 70%)
FIELD_OF_VIEW_DARK = 0.1  # the most mean brightness outside it, as a share of the mean inside


def _fields_of_view(root: Path, rows: list[dict[str, Any]], folders: MaskFolders) -> set[Path]:
    """The mask/ or masks/ folders that gave images their masks but hold fields of view: a retinal
    release's test/ folder alone (DRIVE's images/ + mask/, without 1st_manual/) pairs each image with
    the mask of where the camera saw, and read as labels every score and fit would learn that disc."""
    looked: set[Path] = set()
    for folder in folders.used - folders.field_of_view:
        if folder.name.lower() not in ("mask", "masks"):
            continue
        pairs = [(root / row["image"], root / masks[0]) for row in rows
                 if (masks := _split_masks(row["masks"])) and folder in (root / masks[0]).parents]
        if pairs and all(_marks_field_of_view(*pair) for pair in pairs[:FIELD_OF_VIEW_LOOKS]):
            looked.add(folder)
    return looked


def _marks_field_of_view(image_path: Path, mask_path: Path) -> bool:
    """Whether a mask marks where its picture has content, as a fundus camera's field of view does: it
    covers most of the picture, and the picture is dark outside it. A lesion or organ label covers a
    part of a picture that is as bright beside it."""
    try:
        image = read_image(image_path, rgb=False)
        mask = read_mask_file(mask_path)[0] > 0
    except DataError:
        return False
    if image.shape != mask.shape or mask.all() or mask.mean() < FIELD_OF_VIEW_COVER:
        return False
    inside, outside = float(image[mask].mean()), float(image[~mask].mean())
    return inside > 0 and outside <= FIELD_OF_VIEW_DARK * inside


def _paired_rows(root: Path, files: list[Path], folders: MaskFolders, by_stem: dict[tuple[Path, str], list[Path]],
                 extras: dict[tuple[Path, str], list[Path]]) -> list[dict[str, Any]]:
    """One row per image of ``files`` (masks left out), with its masks as ``_scan`` pairs them."""
    rows = []
    for image in files:
        stem = image.stem.lower()
        if "_mask" in stem or folders.holds_mask(image):
            continue
        level = folders.image_level(image)
        if level is None and _flat_mask_of(image, by_stem):
            continue
        if level is not None:
            images_dir, below = level
            masks = folders.masks_of(image, images_dir, below, by_stem)
        else:
            first = next((found for suffix in FLAT_MASK_SUFFIXES
                          if (found := by_stem.get((image.parent, stem + suffix)))), None)
            masks = ([_same_suffix_first(first, image)] if first else []) + extras.get((image.parent, stem), [])
        rows.append({"image": image.relative_to(root).as_posix(),
                     "masks": [m.relative_to(root).as_posix() for m in masks]})
    return rows


# A mask beside its image in one folder is named as the image plus one of these (BUSI's x_mask, GlaS' x_anno)
FLAT_MASK_SUFFIXES = ("_mask", "_anno", "_annotation", "_seg", "_segmentation", "_label", "_gt")
# Words of a folder name that say it holds masks (Kvasir's masks/, ISIC's ..._GroundTruth, CVC's
# "Ground Truth", DRIVE's 1st_manual, Montgomery's ManualMask/leftMask), in any letter case
MASK_WORDS = frozenset({"mask", "masks", "label", "labels", "gt", "groundtruth", "annotation", "annotations",
                        "anno", "manual", "segmentation", "segmentations"})
# Whole folder names that say they hold masks, though as words of a longer name (LiverSeg_images) they need not:
# MedSAM's and many SAM fine-tuning repositories' imgs/ + gts/, and seg/, segs/
MASK_FOLDER_NAMES = frozenset({"gts", "seg", "segs"})


def names_masks(name: str) -> bool:
    """Whether a folder's name says it holds masks: a mask word in it (``MASK_WORDS``), or the whole name one of
    ``MASK_FOLDER_NAMES`` in any letter case. Beside imgs/, a gts/ folder of PNG masks was read as images, each
    mask a case of its own and every image unlabelled."""
    return bool(folder_words(name) & MASK_WORDS) or name.lower() in MASK_FOLDER_NAMES


# Of these, the words of annotations drawn by hand: beside such a folder, a folder named mask/ holds
# masks of the image's field of view (DRIVE's and HRF's mask/), not labels
DRAWN_WORDS = frozenset({"gt", "groundtruth", "annotation", "annotations", "anno", "manual"})


def folder_words(name: str) -> set[str]:
    """The lower-case words of a folder name, split at non-letters and at capitals
    (``ISIC2018_Task1_Training_GroundTruth``: isic, 2018, task, 1, training, ground, truth, groundtruth)."""
    words = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)]
    return set(words) | {a + b for a, b in zip(words, words[1:]) if (a, b) == ("ground", "truth")}


def _flat_mask_of(path: Path, by_stem: dict[tuple[Path, str], list[Path]]) -> bool:
    """Whether ``path`` is named as another image of its folder plus a mask suffix (``train_1_anno.bmp``)."""
    stem = path.stem.lower()
    return any(stem.endswith(s) and (path.parent, stem[: -len(s)]) in by_stem for s in FLAT_MASK_SUFFIXES)


def _number(stem: str) -> int | None:
    """The one whole number among a name's words (``21_training`` and ``21_manual1``: 21), else None."""
    numbers = [int(w) for w in re.split(r"[_\-\s.]+", stem) if w.isdigit()]
    return numbers[0] if len(numbers) == 1 else None


class MaskFolders:
    """The folders of masks below a scanned root, and how an image finds its masks in them.

    A folder holds masks when it is named mask/, masks/, label/ or labels/, or when its name holds a
    mask word (``MASK_WORDS``) and a sibling folder holds images. An image pairs with the masks of the
    sibling folders of its image folder (its deepest image/ or images/ folder, else its deepest
    folder with mask-folder siblings), at the same place below them: named as the image (or plus
    ``_mask``, ``_segmentation``...), else, in a mask folder split into sub-folders (Montgomery's
    leftMask/, rightMask/), one per sub-folder, merged; else by the one number in both names
    (DRIVE's ``21_training.tif`` and ``21_manual1.gif``). Folders of drawn annotations come first,
    then mask/, masks/, label/, labels/, then the others by name (1st_manual before 2nd_manual): the
    first that holds the image's mask is read, the others are said not to be. A folder named mask/ or
    masks/ is a field of view where one of drawn annotations gives images their masks, and is then not
    read (``field_of_view``: False reads it as any mask folder)."""

    def __init__(self, root: Path, files: list[Path], field_of_view: bool = True) -> None:
        self.root = root
        self.children: dict[Path, set[Path]] = {}
        for p in files:
            for folder in p.relative_to(root).parents:
                if folder.parts:
                    path = root / folder
                    self.children.setdefault(path.parent, set()).add(path)
        self.files: dict[Path, list[Path]] = {}
        for p in files:
            self.files.setdefault(p.parent, []).append(p)
        named = {f for kids in self.children.values() for f in kids if names_masks(f.name)}
        self.masks = {f for f in named if f.name.lower() in MASK_DIRS
                      or any(s not in named for s in self.children[f.parent])}
        drawn = field_of_view and any(folder_words(f.name) & DRAWN_WORDS for f in self.masks)
        self.field_of_view = {f for f in self.masks if drawn and f.name.lower() in ("mask", "masks")}
        self.used: set[Path] = set()
        self.numbers: dict[Path, list[int | None]] = {}
        self.looked_field_of_view: set[Path] = set()

    def read_as_fields_of_view(self, folders: set[Path]) -> None:
        """Stop reading ``folders`` as labels: their masks were seen to mark fields of view (``_fields_of_view``)."""
        self.field_of_view |= folders
        self.looked_field_of_view |= folders
        self.used -= folders

    def used_drawn(self) -> bool:
        """Whether a folder of drawn annotations gave some image its mask."""
        return any(folder_words(f.name) & DRAWN_WORDS for f in self.used)

    def holds_mask(self, path: Path) -> bool:
        return any(self.root / folder in self.masks for folder in path.relative_to(self.root).parents)

    def mask_siblings(self, folder: Path) -> list[Path]:
        """The mask folders beside ``folder``, in the order they are searched (class docstring)."""
        def order(f: Path) -> tuple[int, int, list]:
            words = folder_words(f.name)
            fixed = MASK_DIRS.index(f.name.lower()) if f.name.lower() in MASK_DIRS else len(MASK_DIRS)
            return (0 if words & DRAWN_WORDS else 1, fixed, natural_key(f.name))
        return sorted((f for f in self.children.get(folder.parent, ()) if f in self.masks
                       and f not in self.field_of_view), key=order)

    def image_level(self, image: Path) -> tuple[Path, tuple[str, ...]] | None:
        """(the image's image folder, its folders below it), or None for an image paired in its own folder."""
        folders = image.relative_to(self.root).parts[:-1]
        top = _deepest(folders, IMAGE_DIRS)
        if top is None:
            top = max((i for i in range(len(folders)) if self.mask_siblings(self.root.joinpath(*folders[: i + 1]))),
                      default=None)
        return None if top is None else (self.root.joinpath(*folders[: top + 1]), folders[top + 1:])

    def masks_of(self, image: Path, images_dir: Path, below: tuple[str, ...],
                 by_stem: dict[tuple[Path, str], list[Path]]) -> list[Path]:
        stem = image.stem.lower()
        for mask_dir in self.mask_siblings(images_dir):
            where = mask_dir.joinpath(*below)
            found = [m for suffix in MASK_STEM_SUFFIXES if (m := by_stem.get((where, stem + suffix)))][:1]
            if not found:  # one mask per sub-folder (a structure each) that is no sub-folder of images, merged
                mirrored = {f.name for f in self.children.get(images_dir.joinpath(*below), ())}
                found = [m for sub in natural_sorted(self.children.get(where, ()), key=lambda p: p.name)
                         if sub.name not in mirrored and (m := by_stem.get((sub, stem)))]
                if len(found) > 1:
                    say_once(f"{where}: each image has a mask in each of its {len(found)} sub-folders "
                             f"({', '.join(sorted({m[0].parent.name for m in found}))}); they are merged into one "
                             "mask (a pixel is foreground in any of them)", key=f"merged-masks-{where}")
            if not found:
                found = [[m] for m in [self._numbered(image, where)] if m is not None]
            if found:
                self.used.add(mask_dir)
                return [_same_suffix_first(m, image) for m in found]
        return []

    def _numbered(self, image: Path, where: Path) -> Path | None:
        """The one mask in ``where`` whose name holds the image's one number, where the images of the
        image's folder each hold a number of their own and no mask there is named as its image."""
        number = _number(image.stem)
        images = self._numbers(image.parent)
        if number is None or images.count(number) != 1 or None in images:
            return None
        masks = [p for p, n in zip(self.files.get(where, []), self._numbers(where)) if n == number]
        return masks[0] if len(masks) == 1 else None

    def _numbers(self, folder: Path) -> list[int | None]:
        """``_number`` of each file in ``folder``, worked out once per folder."""
        if folder not in self.numbers:
            self.numbers[folder] = [_number(p.stem) for p in self.files.get(folder, [])]
        return self.numbers[folder]

    def say_unread(self, rows: list[dict[str, Any]]) -> None:
        """Name the mask folders that are not read (field-of-view masks, a second annotator's), beside
        one that is: their masks have images of their names and would otherwise be said to have none."""
        for folder in natural_sorted(self.looked_field_of_view, key=lambda p: p.as_posix()):
            say_once(f"{folder}: its masks mark each picture's field of view (they cover most of it and the picture "
                     "is dark outside them, as DRIVE's and HRF's mask/ do), not a label; it is not read, so these "
                     "images have no labels here (DRIVE's labels are in 1st_manual/); to read them as labels "
                     "anyway, rename the folder labels/", key=f"fov-masks-{folder}")
        if not any(row["masks"] for row in rows):
            return
        for folder in natural_sorted(self.field_of_view - self.looked_field_of_view, key=lambda p: p.as_posix()):
            say_once(f"{folder}: beside folders of drawn annotations ({', '.join(self._drawn())}), a folder named "
                     f"{folder.name}/ holds each image's field-of-view mask (as DRIVE and HRF do), not its label; "
                     "it is not read", key=f"fov-masks-{folder}")
        for folder in natural_sorted(self.masks - self.used - self.field_of_view, key=lambda p: p.as_posix()):
            used = [f.name for f in self.mask_siblings(folder) if f in self.used]
            if used:
                say_once(f"{folder}: its masks are not read; the images' labels are read from {', '.join(used)} "
                         "(a folder of drawn annotations first, then mask/, masks/, label/, labels/, then by name); "
                         "to read these instead, move the other folder away", key=f"unread-masks-{folder}")

    def _drawn(self) -> list[str]:
        return sorted({f.name for f in self.masks if folder_words(f.name) & DRAWN_WORDS})

    def unread(self, path: Path) -> bool:
        """Whether ``path`` lies in a mask folder that ``say_unread`` names (not to be named twice)."""
        tops = [self.root / f for f in path.relative_to(self.root).parents if self.root / f in self.masks]
        if not tops or any(t in self.used for t in tops):
            return False
        return any(t in self.field_of_view or any(s in self.used for s in self.mask_siblings(t)) for t in tops)


def note_unpaired_masks(root: Path, files: list[Path], rows: list[dict[str, Any]],
                        folders: MaskFolders | None = None) -> None:
    """Say which masks no image was paired with (``masks/case1.png`` beside ``images/case 1.png``, an
    image renamed or deleted): left out without a word, their images would count as unlabelled and a fit
    would use fewer labelled images than the user drew."""
    folders = folders or MaskFolders(root, files)
    paired = {mask for row in rows for mask in _split_masks(row["masks"])}
    unpaired = [rel for p in files if ("_mask" in p.stem.lower() or folders.holds_mask(p)) and not folders.unread(p)
                and (rel := p.relative_to(root).as_posix()) not in paired]
    if unpaired:
        shown = ", ".join(unpaired[:3]) + (" ..." if len(unpaired) > 3 else "")
        say_once(f"{root}: {len(unpaired)} mask(s) have no image of their name and are left out: {shown}; "
                 "name each image as its mask (or the mask as its image plus _mask)", key=f"unpaired-masks-{root}")


def _deepest(folders: tuple[str, ...], names: tuple[str, ...]) -> int | None:
    """Index of the deepest folder whose name (any letter case) is one of ``names``."""
    return max((i for i, f in enumerate(folders) if f.lower() in names), default=None)


def _same_suffix_first(candidates: list[Path], image: Path) -> Path:
    """One mask of several with the same stem (x.png, x.jpg): the image's own format wins."""
    same = [m for m in candidates if m.suffix.lower() == image.suffix.lower()]
    return (same or candidates)[0]


def _single_task(rows: list[dict[str, str]], root: Path) -> str:
    tasks = sorted({r["task"] for r in rows if r.get("task")})
    if len(tasks) > 1:
        folders = sorted({r["image"].split("/")[0] for r in rows})
        raise DataError(f"{root} holds several tasks ({', '.join(tasks)}); open one task folder "
                        f"instead: {', '.join(str(root / f) for f in folders)}")
    if not rows:
        raise DataError(f"no images found in {root}; expected index.csv, image/+mask/ folders "
                        f"or X.png + X_mask.png pairs ({' '.join(IMAGE_SUFFIXES)})")
    return tasks[0] if tasks else ""


def _entry(root: Path, row: dict[str, str]) -> Entry:
    rel = path_below(root, row["image"].replace("\\", "/")).removeprefix("./")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts or not parts:
        raise DataError(f"image path {rel!r} in {root} must name a file inside {root} (relative, "
                        "no '..'), as its prediction mirrors it; move the images under the folder")
    attributes = {k: parse_cell(v, k) for k, v in row.items() if k not in PATH_COLUMNS}
    case_id = _strip_image_suffix(rel)
    subject = next((str(attributes[c]) for c in SUBJECT_COLUMNS if attributes.get(c) is not None),
                   case_id)
    masks = _mask_paths(root, row)
    return Entry(case_id=case_id, image=root / rel, label=masks[0] if masks else None, rel_path=rel,
                 subject=subject, attributes=attributes)


def _strip_image_suffix(rel: str) -> str:
    return rel[: rel.rindex(".")] if is_image_name(PurePosixPath(rel).name) else rel


def _check_unique(entries: list[Entry], root: Path) -> None:
    """Two images with one case id (a.png, a.jpg) would share a prediction file: refuse them."""
    seen: dict[str, str] = {}
    for e in entries:
        if e.case_id in seen:
            raise DataError(f"{root}: {seen[e.case_id]} and {e.rel_path} are both case "
                            f"{e.case_id!r} (their predictions would share one .png); "
                            "rename or remove one of them")
        seen[e.case_id] = e.rel_path


def _mask_paths(root: Path, row: dict[str, str]) -> list[Path]:
    return [root / m for m in _split_masks(row.get("masks", ""))]


# A table's columns naming what several images show, which a split keeps together: a patient, or HAM10000's lesion
# (photographed several times: its images in train and val would score the model on what it learned)
TABLE_SUBJECT_COLUMNS = (*SUBJECT_COLUMNS, "patient_id", "subject_id", "lesion_id")


def images_table(root: Path, entries: list[Entry]) -> AttributeTable | None:
    """A table in root with a row for every image of a folder scan (HAM10000's ``HAM10000_metadata.csv``:
    lesion_id, image_id, dx, age, sex, localization): its columns are the images' group attributes, as
    ``--attributes`` joins them, and its patient or lesion column their subjects (set on ``entries``), so
    that a split keeps a lesion's images together; said once. None where root holds no such table."""
    tables = natural_sorted((p for p in root.iterdir() if p.suffix.lower() in (".csv", ".tsv") and p.is_file()
                             and not p.name.startswith(".")), key=lambda p: p.name)
    for path in tables:
        try:
            table = read_attribute_table(path)
        except DataError:
            continue
        rows = [table.row_for(e.case_id, e.subject, e.rel_path) for e in entries]
        if not entries or not all(rows):
            continue
        column = next((c for c in TABLE_SUBJECT_COLUMNS if c != table.key and all(r.get(c) is not None for r in rows)),
                      None)
        for entry, row in zip(entries, rows):
            entry.subject = entry.subject if column is None else str(row[column])
        columns = sorted({c for row in rows for c in row} - {table.key})
        kept = f"; the images of one {column} stay in one split" if column else ""
        say_once(f"{path}: a row for every image; its columns ({', '.join(columns)}) are the images' attributes{kept}",
                 key=f"images-table-{path}")
        return table
    return None


def _splits(entries: list[Entry], style: PngStyle) -> tuple[dict[str, list[str]], str | None]:
    """The splits, and how fewsam drew 'val' where it computed them (None: the data names them)."""
    if any(e.attributes.get("split") for e in entries):
        splits: dict[str, list[str]] = {}
        for e in entries:
            splits.setdefault(split_name(str(e.attributes.get("split") or "none")), []).append(e.case_id)
        return splits, None
    by_path = {e.case_id: _split_from_path(e.rel_path) for e in entries}
    if all(by_path.values()):
        splits = {}
        for e in entries:
            splits.setdefault(by_path[e.case_id], []).append(e.case_id)
        return splits, None
    by_words = {e.case_id: _split_from_words(e.rel_path) for e in entries}
    if all(by_words.values()) and len(set(by_words.values())) > 1:
        return _worded_splits(entries, by_words)
    if style.name != "busi" or not all(map(_pathology_named, entries)):
        return computed_splits(entries), VAL_RULE
    for e in entries:
        e.attributes.setdefault("pathology", _pathology(e))
    return computed_splits(entries, rule=_busi_splits), BUSI_VAL_RULE


def _pathology(entry: Entry) -> str:
    """A BUSI image's pathology: its index column, else its folder (benign/, malignant/, normal/)."""
    return str(entry.attributes.get("pathology") or PurePosixPath(entry.rel_path).parts[0])


def _pathology_named(entry: Entry) -> bool:
    """Whether the data names a BUSI image's pathology (an index column, or a benign/, malignant/ or
    normal/ folder). A folder with BUSI's mask names and "busi" in its path may name none: taken by
    pathology, each image was a group of its own and no image went to "val"."""
    parts = PurePosixPath(entry.rel_path).parts
    return bool(entry.attributes.get("pathology")) or (len(parts) > 1 and parts[0].lower() in BUSI_FOLDERS)


# Words of folder or file names that name a split (ISIC's ..._Training_Input, ..._Validation_Input,
# ..._Test_Input; DRIVE's training/, test/; GlaS' train_1.bmp, testA_1.bmp)
def _split_from_words(rel_path: str) -> str:
    """The split the words of an image's folders, or else of its name, name (GlaS' ``train_1.bmp``,
    ``testA_1.bmp``); "" for none, or for two different ones."""
    path = PurePosixPath(rel_path)
    for names in (path.parts[:-1], (path.stem,)):
        named = {SPLIT_SPELLINGS[w] for name in names for w in folder_words(name) if w in SPLIT_SPELLINGS}
        if named:
            return named.pop() if len(named) == 1 else ""
    return ""


def _worded_splits(entries: list[Entry], by_words: dict[str, str]) -> tuple[dict[str, list[str]], str | None]:
    """Splits as the images' folder names word them; where none is validation (DRIVE: training/, test/),
    'val' is drawn from the training images by the usual rule, so a fit validates on held-out images."""
    splits: dict[str, list[str]] = {}
    for e in entries:
        splits.setdefault(by_words[e.case_id], []).append(e.case_id)
    if "val" in splits or "train" not in splits:
        return splits, None
    training = set(splits.pop("train"))
    drawn = computed_splits([e for e in entries if e.case_id in training])
    for name, ids in splits.items():
        drawn[name] = drawn.get(name, []) + ids
    return drawn, VAL_RULE


def _split_from_path(rel_path: str) -> str:
    parts = [p.lower() for p in PurePosixPath(rel_path).parts[:-1]]
    return next((w for w in SPLIT_WORDS if w in parts), "")


def _busi_splits(entries: list[Entry]) -> dict[str, list[str]]:
    """Per pathology, sorted by number: last 20% -> val; normal images in "normal" only."""
    groups: dict[str, list[str]] = {}
    for e in entries:
        groups.setdefault(_pathology(e), []).append(e.case_id)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for pathology, ids in sorted(groups.items()):
        ids = sorted(ids, key=natural_key)
        if pathology.lower() == "normal":
            splits["normal"] = ids
            continue
        n_val = max(1, round(0.2 * len(ids))) if len(ids) > 1 else 0
        splits["train"] += ids[: len(ids) - n_val]
        splits["val"] += ids[len(ids) - n_val:]
    return splits


def _decode(path: Path, convert: Any, load: bool = True) -> Any:
    """Open an image file with Pillow and apply ``convert`` to it (its pixels decoded first, unless
    ``load`` is False: its header alone); any failure is a DataError.

    Pillow's decoders raise many exception types on damaged or foreign files (OSError,
    SyntaxError, struct.error, DecompressionBombError, ...), so all of them are caught here.
    """
    refuse_missing_file(path, "restore it or fix the dataset index")
    try:
        with warnings.catch_warnings():
            # the user's own large scan, not an attack: Pillow's warning on stderr would say otherwise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if load:
                    im.load()
                return convert(im)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"{path}: the image has more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, more than "
                        "Pillow decodes; downsample it (SAM sees at most 1024 pixels a side)") from None
    except Exception as err:  # noqa: BLE001 - see docstring
        raise DataError(f"cannot read {path} (truncated or not an image?): "
                        f"{type(err).__name__}: {err}") from None


def read_image(path: Path, rgb: bool | None) -> np.ndarray:
    """(H, W) float32 greyscale or (H, W, 3) float32 RGB (``rgb`` None: RGB where the image shows
    colour; a dataset-wide choice made from its first image read a grey first image's colour
    neighbours as grey); 16-bit and float files keep their values, 16-bit colour ones too."""
    try:
        wide = _decode(path, lambda im: _wide_colour(im, path), load=False)
    except DataError:
        if not (path.suffix.lower() in TIFF_SUFFIXES and _itk_reads(path)):
            raise
        wide = True  # a TIFF Pillow has no decoder for (float colour, two channels): ITK reads it
    if wide:
        return _wide_colour_array(path, rgb)
    return _decode(path, lambda im: _image_array(as_shown(_first_page(im, path)), rgb, path))


TIFF_SUFFIXES = (".tif", ".tiff")


def _itk_reads(path: Path) -> bool:
    """Whether ITK reads the header of an image file (one Pillow cannot open: a float32 RGB TIFF as tifffile,
    scikit-image and ITK save normalised microscopy and histology pictures was said to be truncated)."""
    try:
        with quiet_itk(path):
            reader = itk_reader(path)
            reader.ReadImageInformation()
    except RuntimeError:
        return False
    return True


WIDE_COLOUR_MODES = ("RGB", "RGBA", "LA")  # Pillow's modes for 16-bit-per-channel colour (and grey + alpha)


def _wide_colour(im: Image.Image, path: Path) -> bool:
    """Whether an opened image stores 16 bits per channel with colour or alpha (48-bit RGB PNG or
    TIFF, 64-bit RGBA, 32-bit grey + alpha), which Pillow decodes to 8 bits per channel: a 12-bit
    image kept in 16 bits then read as 16 grey levels. Pictures turned by their EXIF orientation
    stay with Pillow, which turns them; a stack is said (``_first_page``) and read as its first page."""
    wide = im.mode in WIDE_COLOUR_MODES and any(";16" in str(tile.args) for tile in im.tile)
    if not wide or im.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):
        return False
    _first_page(im, path)
    return True


def _wide_colour_array(path: Path, rgb: bool | None) -> np.ndarray:
    """A 16-bit-per-channel colour file (``_wide_colour``), or a TIFF Pillow cannot decode (float colour, two
    channels), as ``read_image`` gives images, its values kept: read by ITK, which decodes all 16 bits and float
    pixels; alpha (a second or fourth channel) left out, as ``convert("RGB")`` leaves it."""
    colour = _itk_colour(path)
    grey = bool((colour == colour[..., :1]).all())
    if rgb or (rgb is None and not grey):
        return colour
    return colour[..., 0] if grey else colour @ np.asarray(GREY_WEIGHTS, dtype=np.float32)


def _itk_colour(path: Path) -> np.ndarray:
    """An image file read by ITK as (H, W, 3) float32 colour, its values kept (a grey file's one channel thrice;
    alpha, a second or fourth channel, left out); a stack as its first page, said."""
    try:
        with quiet_itk(path, pixels=True):
            image = itk_reader(path).Execute()
    except RuntimeError as err:
        raise DataError(f"cannot read {path} (truncated or not an image?): {itk_message(err)}") from None
    pixels = sitk.GetArrayFromImage(image).astype(np.float32)
    if image.GetNumberOfComponentsPerPixel() == 1:  # grey: a channel axis of one
        pixels = pixels[..., None]
    if image.GetDimension() > 2:  # a stack: pages, rows, columns, channels
        _say_stack(path, image.GetSize()[2])
        pixels = pixels[0]
    return pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)


GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as Pillow's convert("L") weighs R, G, B


EXIF_ORIENTATION = 0x0112


def as_shown(im: Image.Image) -> Image.Image:
    """The picture as viewers and annotation tools show it: a camera's JPEG may store its pixels
    turned and say so in its EXIF orientation tag, and masks are drawn on the turned picture, so
    the stored pixels would lie transposed under their mask (or mismatch its size)."""
    if im.getexif().get(EXIF_ORIENTATION, 1) in (0, 1):
        return im
    return ImageOps.exif_transpose(im)


def _first_page(im: Image.Image, path: Path) -> Image.Image:
    """A multi-page file (a TIFF stack) is read as its first page, and said once: this layout is
    2D, so the other pages would otherwise be left out without a word."""
    _say_stack(path, int(getattr(im, "n_frames", 1)))
    return im


def _say_stack(path: Path, pages: int) -> None:
    """Say once that a file of several pages is read as its first."""
    if pages > 1:
        say_once(f"{path} holds {pages} pages (a stack): fewsam reads 2D image files as their first page; "
                 "save each page as its own file, or the stack as a NIfTI volume, to segment them all",
                 key="png-multipage")


def _image_array(im: Image.Image, rgb: bool | None, path: Path) -> np.ndarray:
    rgb = shows_colour(im) if rgb is None else rgb
    if im.mode in HIGH_BIT_MODES:
        grey = np.array(im, dtype=np.float32)  # a copy: a float (F) image's array would be Pillow's read-only buffer
        if grey.ndim != 2:
            raise DataError(f"{path}: expected a 2D image, got shape {grey.shape}")
        return np.repeat(grey[..., None], 3, axis=-1) if rgb else grey
    return np.asarray(im.convert("RGB" if rgb else "L"), dtype=np.float32)


def _has_colour(path: Path) -> bool:
    """Whether an image file is colour (``shows_colour``); a float colour TIFF mask of equal channels
    (``_itk_mask``) is grey."""
    if _itk_alone_reads(path):
        colour = _itk_colour(path)
        return not bool((colour == colour[..., :1]).all())
    return _decode(path, shows_colour)


def shows_colour(im: Image.Image) -> bool:
    """Whether an image is colour; JPEG's chroma noise on a grey picture does not count."""
    if im.mode in HIGH_BIT_MODES or im.mode in ("1", "L", "LA"):
        return False
    a = np.asarray(im.convert("RGB"), dtype=np.int16)
    spread = np.abs(a[..., 0] - a[..., 1]) + np.abs(a[..., 1] - a[..., 2])
    return bool(spread.mean() > 1.0) if im.format in LOSSY_FORMATS else bool(spread.any())


MASK_ADVICE = "fix the mask or add classes.json"


def mask_to_classes(pixels: np.ndarray, to_class: dict[int, int], path: Path, what: str = "mask",
                    advice: str = MASK_ADVICE) -> np.ndarray:
    """Map mask pixel values to class indices; values outside the coding are a DataError naming
    ``what`` the file is and ``advice``: a dataset's mask is fixed by the user or described by a
    classes.json, a prediction is not (a classes.json changes the dataset it is scored against).

    A dataset's 0/255 mask with values between (edges blurred when the mask was resized, or drawn
    with anti-aliasing) is told the classes.json that thresholds it: "add classes.json" alone left
    the user to find its range form, and the message listed every one of up to 254 values."""
    lut = np.full(256, -1, dtype=np.int16)
    for pixel, cls in to_class.items():
        lut[pixel] = cls
    out = lut[pixels]
    if (out < 0).any():
        bad = sorted(int(v) for v in np.unique(pixels[out < 0]))
        values = ", ".join(map(str, bad[:8])) + (f", ... ({len(bad)} values)" if len(bad) > 8 else "")
        shown = _coding_text(to_class)
        if path.is_file() and _has_colour(path):
            advice += (f"; {colour_table_advice(path)}" if what == "mask" else
                       f"; the {what} is in colour, and masks are read as grey levels (or palette indices): store one "
                       "grey value per class")
        elif advice == MASK_ADVICE and to_class.get(255) == 1 and set(to_class.values()) == {0, 1} and \
                len(bad) > 2 and bad[-1] < 255 // 2:
            advice = ("are they numbered objects (instances, as GlaS and MoNuSeg masks store glands and nuclei)? "
                      + INSTANCE_ADVICE)
        elif advice == MASK_ADVICE and to_class.get(255) == 1 and set(to_class.values()) == {0, 1}:
            advice = ("save it with 0 and 255 only, or, where its edges were blurred by resizing or anti-aliasing, "
                      'threshold it with classes.json {"1": {"name": "foreground", "min": 128}}')
        raise DataError(f"{what} values [{values}] in {path} are not in this dataset's coding {shown} "
                        f"(pixel -> class); {advice}")
    return out.astype(np.uint8)


def _coding_text(to_class: dict[int, int]) -> str:
    """A coding for an error message: short ones in full, 256-value (ranged) ones as ranges."""
    if len(to_class) <= 8:
        return str({int(k): v for k, v in to_class.items()})
    runs: list[list[int]] = []
    for v in sorted(to_class):
        if runs and runs[-1][1] == v - 1 and to_class[runs[-1][0]] == to_class[v]:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return "{" + ", ".join(f"{a}-{b}: {to_class[a]}" for a, b in runs) + "}"


SHOWN_COLOURS = 4  # colours of a colour mask a refusal turns into a classes.json to paste


def colour_table_advice(path: Path) -> str:
    """How to read a colour mask that no classes.json names the colours of: a classes.json to paste, a class
    per colour the mask holds besides black (those in most pixels first, up to ``SHOWN_COLOURS``), named
    ``class<i>`` for the user to rename. Grey levels cannot stand for colours: red and a dark grey share one."""
    rgb = _decode(path, lambda im: np.asarray(as_shown(_first_page(im, path)).convert("RGB")))
    found, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    ordered = [tuple(int(v) for v in found[i]) for i in np.argsort(-counts, kind="stable") if found[i].any()]
    table = {str(i): {"name": f"class{i}", "colour": list(colour)}
             for i, colour in enumerate(ordered[:SHOWN_COLOURS], start=1)}
    more = len(ordered) - SHOWN_COLOURS
    rest = (f", and add the {more} other colours it holds the same way (where few pixels hold each, they are JPEG "
            "noise or smoothed edges: save masks as PNG without smoothing)" if more > 0 else "")
    return (f"the mask is in colour, and without colours in classes.json masks are read as grey levels: to read each "
            f"colour as a class, write classes.json in the data folder as {json.dumps(table)} (black is the "
            f"background; rename the classes){rest}; or store one grey value per class")


def read_mask_file(path: Path, palette_indices: bool = False) -> tuple[np.ndarray, bool]:
    """A mask as (H, W) uint8 pixel values, and whether the file was lossy (JPEG).

    A palette (mode P) mask with colour entries, as VOC-style tools and labelme save them, gives
    its palette indices: the index is the class, the colour only how it is shown. With
    ``palette_indices`` (a dataset whose masks are palette-coded) every palette file gives its
    indices: some classes have grey colours (VOC's car, index 7, is 128/128/128), so a mask or a
    prediction holding only such classes would otherwise be read as their grey levels. Modes 1, RGB,
    RGB and grey palettes are converted to L; 16-bit and float masks are clipped to 0-255 (refused where
    two values above 255 would merge). With an
    alpha channel (RGBA, LA), transparent pixels are background (``_transparent_mask``). A float colour TIFF,
    which Pillow cannot open, is read through ITK (``_itk_mask``).
    """
    def pixels(im: Image.Image) -> tuple[np.ndarray, bool]:
        lossy = _is_lossy(im)
        im = as_shown(_first_page(im, path))
        if im.mode == "P" and (palette_indices or _colour_palette(im)):
            return np.asarray(im), lossy
        if im.mode in ("RGBA", "LA"):
            return _transparent_mask(np.asarray(im.convert("RGBA")), np.asarray(im.convert("L"))), lossy
        if im.mode in WIDE_MODES:
            return _wide_mask(np.asarray(im), path), lossy
        return np.asarray(im if im.mode == "L" else im.convert("L")), lossy

    try:
        return _decode(path, pixels)
    except DataError:
        if not _itk_alone_reads(path):
            raise
    return _itk_mask(path), False


def _itk_alone_reads(path: Path) -> bool:
    """Whether an image file is a TIFF that Pillow cannot open and ITK can (float colour, two channels)."""
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return False
    try:
        _decode(path, lambda im: None, load=False)
    except DataError:
        return _itk_reads(path)
    return False


def _itk_mask(path: Path) -> np.ndarray:
    """A TIFF mask Pillow has no decoder for (float colour, as ITK, tifffile and scikit-image save a label kept
    beside its float RGB picture), read by ITK, as such pictures are: a grey mask in three equal channels, its
    values class values (``_wide_mask``); channels that differ hold no one class per pixel, and are refused."""
    colour = _itk_colour(path)
    if not (colour == colour[..., :1]).all():
        raise DataError(f"mask {path} is a float colour TIFF whose channels differ, so its pixels are not class "
                        "values; save it with one channel of class values (0, 1, 2, ... or 0/255 for one class)")
    return _wide_mask(colour[..., 0], path)


def _is_lossy(im: Image.Image) -> bool:
    """Whether an opened mask file was compressed with losses (JPEG, or a JPEG-compressed TIFF)."""
    return im.format in LOSSY_FORMATS or im.info.get("compression") in ("jpeg", "tiff_jpeg")


# JPEG's error on a colour mask, as distance in RGB, that a pixel may carry and still be read as its colour
COLOUR_TOLERANCE = 48.0
COLOUR_MASK_ADVICE = 'give its class a "colour" in classes.json, or recolour those pixels'


def colour_tolerance(colours: dict[int, tuple[int, int, int]]) -> float:
    """How far (Euclidean distance in RGB) a lossy (JPEG) colour mask's pixel may lie from a named colour and
    be read as it: ``COLOUR_TOLERANCE``, and never more than half the distance between the two closest named
    colours, within which the nearest colour is the only one the pixel can be a noisy copy of.

    Why 48: saved at quality 90 or above with colours at full resolution (4:4:4), JPEG moves a flat colour's
    pixels by at most about 40 (measured on masks of pure colours and of mid-tones 58 apart; about 20 at quality
    95), so masks of well-separated colours read whole with a margin (colours closer than 96 hold the
    tolerance to half their gap: 29 for the mid-tones, which quality 95 keeps to). JPEG's default chroma subsampling (4:2:0) blends two classes'
    colours along their edges by 100 and more, into colours no tolerance tells from one that classes.json
    never named (a blend of red and green is olive); those pixels are refused, with the advice to save PNG,
    rather than guessed into a class or the background."""
    table = np.asarray(list(colours.values()), dtype=np.float64)
    gaps = np.sqrt(((table[:, None] - table[None]) ** 2).sum(-1))
    closest = gaps[~np.eye(len(table), dtype=bool)].min(initial=np.inf)
    return float(min(COLOUR_TOLERANCE, closest / 2))


def read_colour_mask(path: Path, colours: dict[int, tuple[int, int, int]], what: str = "mask",
                     advice: str = COLOUR_MASK_ADVICE) -> tuple[np.ndarray, bool]:
    """A colour-coded mask (or a prediction of its dataset) as (H, W) uint8 classes, each pixel the class of
    its colour (``colours``: class -> (r, g, b)), and whether the file was lossy. RGB, RGBA and palette files
    alike are read by the colours they show; with an alpha channel that varies, pixels under half opacity are
    background, as in grey masks (``_transparent_mask``). A colour in no class is refused, naming it and
    its pixels; a lossy file's pixels go to the nearest colour within ``colour_tolerance``."""
    def classes(im: Image.Image) -> tuple[np.ndarray, bool]:
        lossy = _is_lossy(im)
        rgba = np.asarray(as_shown(_first_page(im, path)).convert("RGBA"))
        rgb = rgba[..., :3].copy()
        alpha = rgba[..., 3]
        if alpha.min() != alpha.max():
            rgb[alpha < 128] = colours[0]
        return colour_classes(rgb, colours, path, colour_tolerance(colours) if lossy else 0.0, what, advice), lossy

    return _decode(path, classes)


def colour_classes(rgb: np.ndarray, colours: dict[int, tuple[int, int, int]], path: Path, tolerance: float,
                   what: str = "mask", advice: str = COLOUR_MASK_ADVICE) -> np.ndarray:
    """(H, W, 3) colours as (H, W) uint8 classes: each distinct colour goes to the class of the nearest named
    colour within ``tolerance`` (0: exactly it); colours further from all are a DataError naming the one in
    most pixels, how many pixels hold it, and how many more are in other such colours."""
    classes = np.asarray(list(colours), dtype=np.uint8)
    table = np.asarray(list(colours.values()), dtype=np.float64)
    packed = rgb.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    found, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    found_rgb = np.stack([found >> 16, (found >> 8) & 255, found & 255], axis=-1).astype(np.float64)
    distance = np.sqrt(((found_rgb[:, None] - table[None]) ** 2).sum(-1))
    nearest = distance.argmin(axis=1)
    far = distance[np.arange(len(found)), nearest] > tolerance
    if far.any():
        raise DataError(_unknown_colour_message(found_rgb[far], counts[far], colours, path, tolerance, what, advice))
    return classes[nearest][inverse.reshape(-1)].reshape(rgb.shape[:2])


def _unknown_colour_message(found: np.ndarray, counts: np.ndarray, colours: dict[int, tuple[int, int, int]],
                            path: Path, tolerance: float, what: str, advice: str) -> str:
    """One line on the colours of a mask in no class: the one in most pixels, the rest counted."""
    worst = int(np.argmax(counts))
    colour = [int(v) for v in found[worst]]
    others = int(counts.sum() - counts[worst])
    rest = f" (and {others} more pixels in {len(counts) - 1} other such colours)" if others else ""
    named = ", ".join(f"{c}: {list(rgb)}" for c, rgb in list(colours.items())[:8])
    named += ", ..." if len(colours) > 8 else ""
    where = (f"more than {tolerance:g} from every class colour (JPEG blurs colours, most at class edges: save colour "
             "masks as PNG)" if tolerance else "which is no class's colour")
    return (f"{what} {path} holds the colour {colour} in {int(counts[worst])} pixels{rest}, {where}; class colours "
            f"{{{named}}}; {advice}")


WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # 16-bit, 32-bit and float greyscale


def _wide_mask(values: np.ndarray, path: Path) -> np.ndarray:
    """A 16-bit, 32-bit or float mask as 8-bit values: clipped to 0-255, which keeps 0/65535 (one
    foreground) and class indices; but two values above 255 (0/1000/2000, one per class) would both
    become 255 and their classes one, without a word, so they are refused. Float values are first
    rounded as float labels are (``rounded_float_label``): Pillow's own conversion truncates, so a
    float32 mask storing 1 as 0.99999994 (a resampling or scaling script's output) lost class 1 to
    the background and class 2 to class 1, and an interpolated 0.5 edge went unsaid."""
    values = rounded_float_label(values, path)
    distinct = np.unique(values)
    high = distinct[distinct > 255]
    if len(high) > 1:
        shown = ", ".join(f"{v:g}" for v in high[:5]) + (", ..." if len(high) > 5 else "")
        raise DataError(f"mask {path} holds several values above 255 ({shown}), which fewsam's 8-bit mask "
                        "codings cannot tell apart; save it with one value per class from 0 to 255 "
                        "(class indices 0, 1, 2, ..., or 0/255 for one class)")
    return np.clip(values, 0, 255).astype(np.uint8)


def _transparent_mask(rgba: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """A mask drawn with transparency, as overlay exports and paint tools save them: pixels under
    half opacity are background. Where every pixel has one colour and only the alpha varies, the
    alpha alone draws the mask (opaque = 255), so a white or black stroke on a transparent canvas
    is not read as an all-foreground or all-background mask; an alpha that never varies is ignored."""
    alpha = rgba[..., 3]
    if alpha.min() == alpha.max():
        return grey
    opaque = alpha >= 128
    colours = rgba[..., :3].reshape(-1, 3)
    if (colours == colours[0]).all():
        return np.where(opaque, 255, 0).astype(np.uint8)
    return np.where(opaque, grey, 0).astype(np.uint8)


def _colour_palette(im: Image.Image) -> bool:
    """Whether a palette image shows any of the indices it uses in colour (not as grey levels)."""
    palette = im.getpalette()
    if not palette:
        return False
    rgb = np.asarray(palette + [0] * (768 - len(palette)), dtype=np.int16)[:768].reshape(256, 3)
    used = rgb[np.unique(np.asarray(im))]
    return bool((used != used[:, :1]).any())


def read_mask_pixels(path: Path, palette_indices: bool = False) -> np.ndarray:
    """A mask (or a PNG prediction) as (H, W) uint8 pixel values (``read_mask_file``)."""
    return read_mask_file(path, palette_indices)[0]


def open_png_folder(root: Path) -> PngFolderDataset:
    return PngFolderDataset(root)
