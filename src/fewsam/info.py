"""``fewsam info DATA``: what fewsam sees in a data folder before anything is fitted.

The layout it detected, the classes and how the files store them, each split's cases and
slices, the group attributes ``--group-by`` can use, and which splits fit, predict and evaluate
take when no option says otherwise. Only the index and file headers are read (ACDC h5 shapes,
NIfTI headers): no model is loaded and nothing is encoded, so it answers in seconds and imports
no torch. ``DEFAULT_SPLIT`` lives here, light, because predict, evaluate and their help use it.
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path
from typing import Any

from fewsam.config import FitOptions
from fewsam.data import LAYOUTS, open_dataset
from fewsam.data.attributes import default_bins, is_unknown_code, no_attributes_hint, table_sources
from fewsam.data.readers.common import IndexedDataset
from fewsam.data.readers.fairseg_npz import MASK_CODING, keeps_attributes_in_files
from fewsam.errors import DataError, FewsamError

DEFAULT_SPLIT = "val"  # what predict and evaluate use without --split: the split fit selects on by default
FIT_VAL_SPLIT = FitOptions.__dataclass_fields__["val_split"].default
MAX_SHOWN_VALUES = 12

STORAGE = {
    "h5": "class index per pixel in each file's 'label'; predictions: same file name, key 'pred'",
    "nifti": "class index per voxel in the label files; predictions: <case>.nii.gz (.nii for an nnU-Net set of "
             ".nii; .mha, .nrrd, .mgz for those inputs; .png, .tif for a 2D set's; .tif and its <case>.json spacing "
             "for a 3D TIFF's) on the image's grid",
    "png": "mask pixel values below; predictions: PNGs in the same coding at the image's relative path",
    "npz": "FairSeg mask codes below; predictions: <case>.npz with key 'pred' holding class indices",
    "dicom": "class index per voxel in labels/<case>.nii.gz; predictions: <case>.nii.gz on the series' grid",
}


def dataset_info(data: str | Path, attributes: str | Path | None = None) -> dict[str, Any]:
    """Everything ``fewsam info`` reports, as a JSON-ready dict (``describe`` renders it)."""
    dataset = open_dataset(data, attributes)
    slices: dict[str, int] = {}
    splits = {name: _split_info(dataset, name, slices) for name in dataset.split_names()}
    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "layout_description": LAYOUTS[dataset.layout][2] if dataset.layout in LAYOUTS else "",
        "format": dataset.format,
        "storage": getattr(dataset, "storage", None) or STORAGE.get(dataset.format, f"{dataset.format} files"),
        "classes": _classes(dataset),
        "unannotated_value": dataset.class_map.ignore,
        "splits": splits,
        "attributes": _attribute_summary(dataset),
        "defaults": _defaults(dataset, splits),
    }


def _split_info(dataset: IndexedDataset, name: str, slices: dict[str, int]) -> dict[str, Any]:
    """Cases, slices (header reads, cached across splits) and labelled cases of one split."""
    try:
        ids = dataset.split(name)
        for case_id in ids:
            if case_id not in slices:
                slices[case_id] = dataset.num_slices(case_id)
    except FewsamError as err:
        return {"error": str(err)}
    return {"cases": len(ids), "slices": sum(slices[c] for c in ids),
            "labelled": sum(dataset.has_label(c) for c in ids)}


def _classes(dataset: IndexedDataset) -> list[dict[str, Any]]:
    """Background and each class with the value that stands for it in the files."""
    stored = _stored_values(dataset)
    names = {0: "background", **dataset.class_map.names}
    return [{"value": value, "name": name, "stored_as": stored.get(value)} for value, name in names.items()]


def _stored_values(dataset: IndexedDataset) -> dict[int, int | str]:
    """class -> value in the label files: PNG codings invert or spread values, FairSeg uses -1/-2;
    a Slicer segmentation stores a class as its named segment, an RT structure set as its named ROI."""
    if dataset.format == "png" and dataset.style.colours:  # type: ignore[attr-defined]
        return {cls: f"colour {list(rgb)}" for cls, rgb in dataset.style.colours.items()}  # type: ignore[attr-defined]
    if dataset.format == "png":
        return dict(dataset.style.to_pixel)  # type: ignore[attr-defined]
    if keeps_attributes_in_files(dataset):  # FairSeg: its mask codes
        return {cls: code for code, cls in MASK_CODING.items() if code <= 0}
    if getattr(dataset, "labels_are_segmentations", False):
        segments = dataset.segments_by_class()  # type: ignore[attr-defined]
        part = getattr(dataset, "segment_part", "segment")  # an RT structure set's classes are ROIs
        return {0: 0, **{value: " or ".join(f"{part} {name!r}" for name in segments[value]) if value in segments
                         else f"no {part}" for value in dataset.class_map.names}}
    return {value: value for value in [0, *dataset.class_map.labels]}


def _case_attributes(dataset: IndexedDataset) -> tuple[list[dict[str, Any]], str]:
    """Every case's index attributes; FairSeg keeps them inside each file, so its first file stands in."""
    if keeps_attributes_in_files(dataset):
        first = next(iter(dataset.entries))
        return [dataset.load(first).attributes], f"read from the first file ({first}); each file holds its own"
    return [dataset.attributes_of(case_id) for case_id in dataset.entries], "from the index and attribute tables"


def _attribute_summary(dataset: IndexedDataset) -> dict[str, Any]:
    rows, source = _case_attributes(dataset)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return {"source": source, "cases": len(rows), "tables": table_sources(dataset),
            "columns": {c: _column_summary(c, [row.get(c) for row in rows]) for c in columns}}


def _column_summary(column: str, values: list[Any]) -> dict[str, Any]:
    """How many cases have a value, numeric range or the distinct texts, and the default bins. -1 is no
    value (``is_unknown_code``), as --group-by takes it: an age range from -1 announced a group there is not."""
    present = [v for v in values if v is not None and not is_unknown_code(v, default_bins(column))]
    numbers = [v for v in present if isinstance(v, Real) and not isinstance(v, bool)]
    texts = sorted({str(v) for v in present if not isinstance(v, Real) or isinstance(v, bool)})
    kind = "numeric" if numbers and not texts else "text" if texts and not numbers else "mixed" if present else "empty"
    out: dict[str, Any] = {"cases_with_value": len(present), "kind": kind}
    if numbers:
        out["range"] = [min(numbers), max(numbers)]
    if texts:
        out["values"] = texts[:MAX_SHOWN_VALUES]
        out["distinct_values"] = len(texts)
    if default_bins(column) and numbers:
        out["default_bins"] = default_bins(column).labels
    return out


def _defaults(dataset: IndexedDataset, splits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What fit, predict and evaluate take when their split options are left out."""
    return {
        "fit": {"val_split": FIT_VAL_SPLIT, "val": _named_split(splits, FIT_VAL_SPLIT, "--val-split"),
                "budget_order": _budget(dataset)},
        "predict": {"split": DEFAULT_SPLIT, **_named_split(splits, DEFAULT_SPLIT, "--split")},
        "evaluate": {"split": DEFAULT_SPLIT, **_named_split(splits, DEFAULT_SPLIT, "--split")},
    }


def split_cases(dataset: IndexedDataset, name: str | None, option: str) -> list[str]:
    """The case ids of split ``name`` (None: ``DEFAULT_SPLIT``). A dataset without the default split
    (a folder whose index names train and test only) is refused naming ``option``: the user, who left
    the option out, never typed the 'val' the reader's own message would quote."""
    name = name or DEFAULT_SPLIT
    try:
        return dataset.split(name)
    except DataError:
        if name not in (DEFAULT_SPLIT, FIT_VAL_SPLIT) or name in dataset.split_names():
            raise
        raise DataError(f"{dataset.root} has no {name!r} split, which {option} takes by default; pass {option} "
                        f"with one of {', '.join(dataset.split_names())}, or a list file of case ids") from None


def _named_split(splits: dict[str, dict[str, Any]], name: str, option: str) -> dict[str, Any]:
    if name in splits:
        return splits[name]
    return {"error": f"this dataset has no {name!r} split; pass {option} with one of {', '.join(splits)}"}


def _budget(dataset: IndexedDataset) -> dict[str, Any]:
    """The order --labeled-cases/--labeled-slices take labelled slices in."""
    try:
        order = [ref for ref in dataset.labelled_budget_order() if dataset.has_label(ref.case_id)]
    except FewsamError as err:
        return {"error": str(err)}
    subjects = list(dict.fromkeys(dataset.subject_of(ref.case_id) for ref in order))
    first = f"{order[0].case_id}:{order[0].z}" if order else None
    return {"slices": len(order), "subjects": len(subjects), "first": first}


def describe(info: dict[str, Any]) -> str:
    """``dataset_info`` as the lines ``fewsam info`` prints."""
    lines = [f"{info['root']}",
             f"layout   {info['layout']}: {info['layout_description']}",
             f"storage  {info['storage']}",
             "classes  " + ", ".join(f"{c['value']} {c['name']} (stored as {c['stored_as']})"
                                     for c in info["classes"]),
             *([f"ignore   {info['unannotated_value']} (unannotated pixels: no loss learns from them, no score "
                "counts them)"] if info.get("unannotated_value") is not None else []),
             "splits"]
    lines += [f"  {name:<14} {_split_line(s)}" for name, s in info["splits"].items()]
    lines += _attribute_lines(info["attributes"])
    lines += _default_lines(info["defaults"])
    return "\n".join(lines)


def _split_line(split: dict[str, Any]) -> str:
    if "error" in split:
        return f"unusable: {split['error']}"
    return f"{split['cases']} cases, {split['slices']} slices, {split['labelled']} labelled"


def _attribute_lines(attributes: dict[str, Any]) -> list[str]:
    columns = attributes["columns"]
    if not columns:
        return [f"group attributes for --group-by: {no_attributes_hint('case', attributes['tables'])}"]
    lines = [f"group attributes for --group-by ({attributes['source']})"]
    for name, c in columns.items():
        text = f"  {name:<14} {c['kind']}, {c['cases_with_value']}/{attributes['cases']} cases"
        if "range" in c:
            text += f", {c['range'][0]:g} to {c['range'][1]:g}"
        if "values" in c:
            more = c["distinct_values"] - len(c["values"])
            text += ": " + ", ".join(c["values"]) + (f" (+{more} more)" if more > 0 else "")
        if "default_bins" in c:
            text += f"; binned by default: {', '.join(c['default_bins'])}"
        lines.append(text)
    return lines


def _default_lines(defaults: dict[str, Any]) -> list[str]:
    fit, budget = defaults["fit"], defaults["fit"]["budget_order"]
    budget_text = (f"unusable: {budget['error']}" if "error" in budget else
                   f"{budget['slices']} slices of {budget['subjects']} subjects, starting at {budget['first']}")
    return ["defaults",
            f"  fit       selects on split {fit['val_split']!r} (--val-split): {_split_line(fit['val'])}",
            f"  fit       labelled budget (--labeled-cases/--labeled-slices) in order: {budget_text}",
            f"  predict   split {defaults['predict']['split']!r} when --split is omitted: "
            f"{_split_line(defaults['predict'])}",
            f"  evaluate  split {defaults['evaluate']['split']!r} when --split is omitted: "
            f"{_split_line(defaults['evaluate'])}"]
