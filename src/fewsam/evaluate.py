"""``fewsam evaluate``: a prediction folder + the data folder -> the evaluation JSON contract.

Predictions are paired with cases by relative path, so any tool's output laid out that way can
be evaluated, or by the names other tools give them (``fewsam.data.writers``: one flat folder, the labels'
names, MONAI's, TransUNet's ``<case>_pred.nii.gz``). Metrics are per volume (3D) as in the papers; distances
are in mm when the data knows its spacing and in pixels otherwise, and the JSON says which (each case, and
its summaries: a split of both has its HD95 and ASD summarised over the mm cases, ``metrics.summarise``).
"""

from __future__ import annotations

import hashlib
import math
import os
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from fewsam.compare import read_evaluation
from fewsam.config import argument_name, checked_arguments, listed
from fewsam.data import Bins, group_of, load_labelled_case, open_dataset, read_prediction
from fewsam.data.attributes import default_bins, table_sources
from fewsam.data.readers.common import files_below
from fewsam.data.readers.fairseg_npz import keeps_attributes_in_files
from fewsam.data.types import Dataset
from fewsam.data.writers import (TEST_SCRIPT_ENDINGS, TEST_SCRIPT_SUFFIX, missing_predictions, other_names,
                                 prediction_format, read_instead, sought_as)
from fewsam.errors import DataError
from fewsam.fairness import (check_bin_values, check_group_column, check_group_spellings,
                             check_sources_agree, per_class_equity, resolve_bins, say_tables_over_files)
from fewsam.info import DEFAULT_SPLIT, split_cases
from fewsam.labels import holds_class
from fewsam.metrics import (BOTH_EMPTY, case_metrics, group_summary, in_distance_unit, summarise,
                            summary_distance_unit)
from fewsam.predict import dataset_folder_holding
from fewsam.progress import say_once, tracked_with_parts


DEFAULT_ALPHA, DEFAULT_ES_MODE = 1.0, "sum"  # FairSeg's equity scaling


@checked_arguments
def evaluate(
    pred: str | Path,
    data: str | Path,
    split: str | None = None,
    group_by: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    show_progress: bool = True,
    *,
    bins: str | Bins | None = None,
    attributes: str | Path | None = None,
    es_mode: str = DEFAULT_ES_MODE,
    n_boot: int = 1000,
    both_empty: str = BOTH_EMPTY[0],
    annotated_slices_only: bool = False,
) -> dict[str, Any]:
    """Per-case, per-class and mean Dice/IoU/HD95/ASD of ``split`` (default ``DEFAULT_SPLIT``, "val"),
    and group metrics with ``group_by``.

    Groups: ``group_by`` names a case attribute (found with the data, or in the ``attributes``
    CSV); ``bins`` (e.g. "bmi:25,30") bins a continuous one (age is binned at 60 by default); a
    binned column holding text is an error naming the case (``fairness.check_bin_values``).
    Cases without a value count in the overall scores and in no group; the JSON lists them.
    ``both_empty``: how a class absent from both a prediction and its label scores (``metrics.BOTH_EMPTY``:
    "perfect" counts Dice 1, "skip" leaves it out as nnU-Net does), recorded in the result.
    ``annotated_slices_only``: each case is scored on the slices its label annotates (a class on them),
    for volumes annotated on some slices only (``annotated_slices``), recorded in the result.
    """
    pred = Path(pred)
    if pred.exists() and not pred.is_dir():
        raise DataError(f"--pred {pred} is a file; give the prediction folder `fewsam predict --out` wrote")
    if not pred.is_dir():
        raise DataError(f"prediction folder {pred} does not exist; run `fewsam predict` first")
    if es_mode not in ("sum", "std"):
        raise DataError(f"--es-mode must be 'sum' or 'std', not {es_mode!r}")
    check_alpha(alpha)
    if both_empty not in BOTH_EMPTY:
        raise DataError(f"--both-empty must be {' or '.join(BOTH_EMPTY)}, not {both_empty!r}")
    if n_boot < 1:  # 0 draws gave no interval without a word, fewer a ValueError from numpy
        raise DataError(f"n_boot must be at least 1, not {n_boot}: the bootstrap resamples that many times for "
                        "the confidence intervals (default 1000)")
    check_grouping(group_by, bins, alpha=alpha, es_mode=es_mode, attributes=attributes)
    explicit = resolve_bins(group_by, bins) if group_by else None
    binned = (explicit or default_bins(group_by)) if group_by else None
    dataset = open_dataset(data, attributes)
    check_not_the_labels(pred, dataset)
    names = dataset.class_map.names
    records, case_attrs = [], []
    unannotated = UnannotatedCount()
    case_ids = split_cases(dataset, split, "--split")
    if group_by and not keeps_attributes_in_files(dataset):  # FairSeg's are inside the files: checked below
        check_group_attributes_early(dataset, case_ids, group_by, explicit, binned)
    if group_by:
        check_sources_agree(dataset, case_ids, group_by, binned)
        say_tables_over_files(dataset, case_ids, group_by, binned)
    refuse_missing_predictions(dataset, case_ids, pred)
    for case_id, classes in tracked_with_parts(case_ids, "evaluate", "class", show_progress):
        case = load_labelled_case(dataset, case_id, "evaluate against")
        unannotated.add(case)
        predicted = read_prediction(case, pred, dataset.class_map, dataset)
        predicted, label = (annotated_slices(predicted, case.label, case.ignore) if annotated_slices_only
                            else (predicted, case.label))
        per_class = case_metrics(predicted, label, list(names), case.spacing, both_empty, case.ignore,
                                 classes_scored=classes.counter(len(names)))
        case_attrs.append(case.attributes)
        records.append({
            "case": case_id,
            "subject": dataset.subject_of(case_id),
            "label_sha256": label_fingerprint(case.label),
            "per_class": {names[k]: v for k, v in per_class.items()},
            "distance_unit": "mm" if case.spacing else "pixel",
            "group": group_of(case.attributes, group_by, binned) if group_by else None,
        })
    result = summarise(records)
    say_distances_left_out(records)
    result.update(unannotated.said())
    if group_by:
        check_bin_values(group_by, explicit, dict(zip(case_ids, case_attrs)))
        check_group_column(group_by, (r["group"] for r in records), case_attrs, tables=table_sources(dataset))
        check_group_spellings(group_by, (r["group"] for r in records))
        result.update(group_summary(records, alpha=alpha, es_mode=es_mode, n_boot=n_boot))
        if binned is not None:
            result["groups"] = _bin_order(result["groups"], binned)
        result.update(group_by=group_by, bins=binned.labels if binned else None, alpha=alpha, es_mode=es_mode,
                      missing_group_cases=[r["case"] for r in records if r["group"] is None],
                      per_class_equity=per_class_equity(result, alpha, es_mode))
    result["distance_unit"] = summary_distance_unit(records) or "pixel"
    result["both_empty"] = both_empty
    result["annotated_slices_only"] = annotated_slices_only
    result["split"] = os.fspath(split) if split else DEFAULT_SPLIT  # a list file's Path: its path, as JSON
    return result


class UnannotatedCount:
    """How many of the scored labels' voxels are unannotated (``Case.ignore``), which every score leaves
    out (``metrics.annotated_part``): said once, and recorded, so that a reader of the means knows what
    they are over."""

    def __init__(self) -> None:
        self.value: int | None = None
        self.unannotated = self.total = 0

    def add(self, case: Any) -> None:
        if case.ignore is not None:
            self.value = case.ignore
            self.unannotated += int(np.count_nonzero(case.label == case.ignore))
        self.total += int(case.label.size)

    def said(self) -> dict[str, Any]:
        """The record's fields (none without unannotated voxels), after saying it once."""
        if self.value is None:
            return {}
        share = self.unannotated / max(self.total, 1)
        say_once(f"the labels mark unannotated voxels (value {self.value}): {self.unannotated} of {self.total} "
                 f"({100 * share:.1f}%), left out of every score", key="evaluate-unannotated")
        return {"unannotated_value": self.value, "unannotated_fraction": share}


def say_distances_left_out(records: list[dict[str, Any]]) -> None:
    """Say, once, that the split mixes cases with and without voxel spacing, and so that the HD95 and ASD
    summaries leave the pixel-unit cases out (``metrics.summarise``): the JSON's means say so only by a
    count, and a reader expecting every case in them would take the mm figures for all cases'."""
    unit = summary_distance_unit(records)
    other = [r["case"] for r in records if not in_distance_unit(r, unit)]
    if not other:
        return
    kept = len(records) - len(other)
    say_once(f"{len(other)} of the {len(records)} cases have no voxel spacing in their files (the first: {other[0]}), "
             f"so their HD95 and ASD are in pixels: the HD95 and ASD means (overall, per class and per group) are "
             f"over the {kept} cases in mm, Dice and IoU over all {len(records)}; each case's record keeps its "
             "distances with its own distance_unit", key="distances-left-out-of-mm")


def annotated_slices(predicted: np.ndarray, label: np.ndarray, ignore: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A case's prediction and label on the slices its label annotates (a class on them), so the slices
    its annotator left 0 are not scored as false positives wherever the prediction finds the anatomy; a
    label annotating no slice is scored whole. Distances are then measured across the kept slices as if
    they were adjacent: read HD95 and ASD of such scores with care."""
    zs = [z for z in range(label.shape[0]) if holds_class(label[z], ignore)]
    return (predicted[zs], label[zs]) if zs else (predicted, label)


def label_fingerprint(label: np.ndarray) -> str:
    """sha256 of a case's label (its shape and class indices): ``fewsam compare`` pairs two evaluations'
    scores of a case only where both were scored against the same label, which the case id alone does
    not say (case_001 of two datasets, or labels corrected between the two evaluations)."""
    digest = hashlib.sha256(repr(tuple(label.shape)).encode())
    wide = label.size and int(label.max()) > 255  # 8-bit bytes for the labels that fit them, as always hashed
    digest.update(np.ascontiguousarray(label, dtype=np.uint16 if wide else np.uint8).tobytes())
    return digest.hexdigest()


def refuse_missing_predictions(dataset: Dataset, case_ids: list[str], pred: Path) -> None:
    """Every case of the split needs its prediction: the ones missing, counted and the first named."""
    missing = missing_predictions(dataset, case_ids, pred)
    if missing and len(missing) == len(case_ids):
        refuse_foreign_folder(pred, missing[0][1], dataset.format)
    if missing:
        case_id, path = missing[0]
        more = f" (and {len(missing) - 1} more of the {len(case_ids)} cases)" if len(missing) > 1 else ""
        sought = sought_as(path, other_names(dataset, case_id, pred), dataset.format)
        raise DataError(f"prediction {sought} for case {case_id} not found{more}; predict this split into that "
                        "folder first")


def refuse_foreign_folder(pred: Path, expected: Path, fmt: str) -> None:
    """No case of the split has its prediction in ``pred``: say what the folder holds instead (a few
    of its files), as "case 1 not found (and 99 more)" alone hides that it holds predictions in another
    format or naming (another tool's ``_pred`` files), or of another dataset. Either way the first case's
    file names are said (a DICOM series' NIfTI, SEG or RT structure set), for predictions of another tool to be
    named so."""
    found = [path.relative_to(pred).as_posix() for path in islice(
        (p for p in files_below(pred) if not p.name.startswith(".")), 3)]
    accepted = [expected, *read_instead(expected, fmt)]
    shown = " or ".join(path.relative_to(pred).as_posix() for path in accepted)
    if not found:
        raise DataError(f"prediction folder {pred} is empty; predict this split into it first (the first case's "
                        f"prediction: {shown})")
    raise DataError(f"{pred} holds none of this split's predictions as `fewsam predict` names them (the first: "
                    f"{shown}), but files such as {', '.join(found)}: predictions of another dataset or split, or "
                    f"named by another tool? {_rename_or_convert(accepted, found)}, or predict this split into a new "
                    "folder")


def _rename_or_convert(accepted: list[Path], found: list[str]) -> str:
    """What to do with another tool's files: rename them where they are in a format this layout's predictions
    are read in (``accepted``: a DICOM series' NIfTI, SEG or RT structure set; an h5 or npz layout's predictions
    are read as NIfTI too, named as TransUNet's and SAMed's test scripts name them); else convert them, as a
    renamed file stays unreadable."""
    wanted = list(dict.fromkeys(prediction_format(path.name) for path in accepted))
    if any(prediction_format(name) in wanted for name in found):
        return "rename them to that pattern"
    volumes = prediction_format("x" + TEST_SCRIPT_ENDINGS[0])
    if wanted[0] in (".h5", ".npz") and any(prediction_format(name) == volumes for name in found):
        return (f"this layout reads NIfTI predictions named <case>{TEST_SCRIPT_SUFFIX}{TEST_SCRIPT_ENDINGS[0]}, as "
                "TransUNet's test script names them: rename them so")
    return (f"they are not {' or '.join(f'{kind} files' for kind in wanted)}, which this layout's predictions are: "
            "convert them to that format and pattern")


def check_not_the_labels(pred: Path, dataset: Dataset) -> None:
    """--pred in the dataset's own folders (its root, its image or label folders) holds the inputs, not
    predictions (``fewsam predict`` never writes there): the labels folder would score the ground
    truth against itself, Dice 1.0 without a word."""
    inside = dataset_folder_holding(pred, dataset)
    if inside is not None:
        raise DataError(f"--pred {pred} lies in the dataset's own folder {inside}, which holds its images and "
                        "labels, not predictions; give the folder `fewsam predict --out` wrote")


def check_json_beside_predictions(json_out: Path | None, pred: Path) -> None:
    """--json over an existing file inside --pred replaces it only when it is an earlier evaluation:
    other files there are a prediction this command reads, or another tool's (nnU-Net's summary.json
    sits among its predictions), which --overwrite would silently destroy."""
    if json_out is None or not json_out.is_file() or not pred.is_dir():
        return
    folder = pred.resolve()
    if folder not in json_out.resolve().parents:
        return
    try:
        read_evaluation(json_out)
    except DataError:
        raise DataError(f"--json {json_out} is a file in the prediction folder {pred} that `fewsam evaluate` "
                        "did not write; writing there would replace it: give another --json") from None


def check_alpha(alpha: float) -> None:
    """ES-Dice = Dice / (1 + alpha x spread) only ranks fairness for a finite alpha >= 0: a negative
    one rewards unequal groups (scores above the Dice, or a division by zero), NaN gives NaN."""
    if not math.isfinite(alpha) or alpha < 0:
        raise DataError(f"{argument_name('alpha')} must be a finite number of at least 0 (FairSeg uses 1), "
                        f"not {alpha}")


def check_group_attributes_early(dataset: Any, case_ids: list[str], group_by: str, explicit: Bins | None,
                                 binned: Bins | None) -> None:
    """The group column's values, from what the dataset knows without reading pixels, checked before any
    case is scored: a column no case has (a typo) was refused only once every case had been read and scored."""
    known = {cid: dataset.attributes_of(cid) for cid in case_ids}
    check_bin_values(group_by, explicit, known)
    check_group_column(group_by, (group_of(attrs, group_by, binned) for attrs in known.values()), known.values(),
                       tables=table_sources(dataset))


def check_grouping(group_by: str | None, bins: str | Bins | None, *, alpha: float = DEFAULT_ALPHA,
                   es_mode: str = DEFAULT_ES_MODE, attributes: str | Path | None = None) -> None:
    """--bins, --alpha, --es-mode and --attributes shape the group metrics of the --group-by column:
    without one (or with an empty one) the command would print no group metrics at all and say
    nothing about the options it ignored."""
    if group_by is not None and not group_by.strip():
        raise DataError("--group-by names no column; give an attribute column (`fewsam info DATA` lists them) "
                        "or leave it out")
    if group_by:
        return
    if bins is not None:
        raise DataError("--bins bins the --group-by column, which is not given; add --group-by COLUMN or leave "
                        "--bins out")
    given = [name for name, set_ in (("--alpha", alpha != DEFAULT_ALPHA), ("--es-mode", es_mode != DEFAULT_ES_MODE),
                                     ("--attributes", attributes is not None)) if set_]
    if given:
        verb, them = ("shape", "them") if len(given) > 1 else ("shapes", "it")
        raise DataError(f"{listed(given)} {verb} the group metrics of the --group-by column, which is not "
                        f"given; add --group-by COLUMN or leave {them} out")


def _bin_order(groups: dict[str, Any], bins: Bins) -> dict[str, Any]:
    """Bins in numeric order ("<25", "25-30", ">=30"), then any other group (an all-text column under
    default bins keeps its values)."""
    order = [g for g in bins.labels if g in groups] + [g for g in groups if g not in bins.labels]
    return {g: groups[g] for g in order}
