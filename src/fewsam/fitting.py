"""What every method's fit shares: the opened data + model + cache, the labelled set, the loss.

``open_fit`` turns the ``FitOptions`` all ``fewsam fit`` commands take (``fewsam.config``) into a
``FitContext`` (the dataset, the frozen
SAM and its embedding cache, the labelled slices and validation cases, the labelled loss), which
each method's ``fit(ctx, cfg, run_dir)`` consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import Tensor

from fewsam.cache import EmbeddingCache
from fewsam.config import FitOptions, UnlabelledPoolConfig, field_default, listed, given_option_name
from fewsam.data import open_dataset, select_labelled, select_unlabelled
from fewsam.data.budget import unannotated_gaps
from fewsam.data.types import Case, ClassMap, Dataset, SliceRef
from fewsam.errors import DataError
from fewsam.fairness import FairGroups, fair_groups_for
from fewsam.info import split_cases
from fewsam.labels import IGNORE, holds_class
from fewsam.losses import DiceCELoss
from fewsam.models.acceleration import REFERENCE, Acceleration, resolve_acceleration
from fewsam.models.precision import resolve_precision
from fewsam.models.sam import SamModel
from fewsam.progress import say_once

LabelledLoss = Callable[[Tensor, Tensor, Sequence[Any]], Tensor]  # loss(logits, target, batch items)


@dataclass
class FitContext:
    """The opened data, model and cache of a fit, with its labelled slices and validation cases."""

    dataset: Dataset
    model: SamModel | None  # None for the U-Net students that need no SAM
    cache: EmbeddingCache | None
    device: str = "cpu"
    show_progress: bool = True
    labelled: list[SliceRef] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    seed: int = 0
    fair: FairGroups | None = None  # the labelled cases' groups when the fit scales its loss fairly
    acceleration: Acceleration = REFERENCE  # how the decoder / student train (``models.acceleration``)
    options: FitOptions | None = None  # what opened it: a method that fits another first (distill's teacher) reuses them

    def labelled_loss(self, ignore_index: int | None) -> LabelledLoss:
        """The loss of a batch of labelled items: Dice + CE, with fair scaling when asked for. Pixels of
        ``ignore_index`` count in neither term; where the labels have unannotated pixels (``ClassMap.ignore``,
        which the methods' label look-ups make IGNORE) those are left out too."""
        if ignore_index is None and self.class_map.ignore is not None:
            ignore_index = IGNORE
        if self.fair is not None:
            return self.fair.loss(ignore_index)
        return DiceCELoss(ignore_index)

    def unlabelled_pool(self, cfg: UnlabelledPoolConfig) -> list[SliceRef]:
        """The training slices a semi-supervised fit learns from without labels (the options of ``cfg``)."""
        return select_unlabelled(self.dataset, self.labelled, cfg.unlabeled_limit, self.seed, cfg.unlabeled_split)

    @property
    def class_map(self) -> ClassMap:
        return self.dataset.class_map

    @property
    def values(self) -> list[int]:
        """Label values in query order: background first."""
        return [0] + self.class_map.labels


def open_fit(opts: FitOptions, needs_sam: bool = True) -> FitContext:
    """Open data, load the model and cache, pick the labelled slices and the validation cases.

    ``needs_sam`` False (the U-Net students without SAM): no SAM weights are loaded, so a user
    without them can still train the baselines."""
    from fewsam.models.registry import load_model

    if opts.data is None:
        raise DataError("say which data to fit on: --data DIR")
    if opts.budget_cases is None and opts.labeled_slices is None:
        raise DataError("say how many labels to use: --labeled-cases N or --labeled-slices K")
    dataset = open_dataset(opts.data, opts.attributes)
    labelled = select_labelled(dataset, n_cases=opts.budget_cases, n_slices=opts.labeled_slices,
                               annotated_only=opts.annotated_slices_only)
    if not labelled:
        raise DataError("the labelled set is empty; use a positive --labeled-cases or --labeled-slices")
    if not opts.annotated_slices_only:
        say_sparse_annotation(dataset, labelled)
    refuse_constant_images(dataset, labelled)
    refuse_background_only(dataset, opts.data)
    val_ids = split_cases(dataset, opts.val_split, "--val-split")
    refuse_unlabelled_validation(dataset, val_ids, opts.val_split)
    warn_labelled_validation(labelled, val_ids, opts.val_split)
    if opts.annotated_slices_only:
        dataset = AnnotatedValidation(dataset, set(val_ids) - {r.case_id for r in dataset.labelled_budget_order()})
    model = load_model(opts.model, opts.checkpoint, device=opts.device) if needs_sam else None
    if not needs_sam:
        say_unused_model(opts)
    cache = None if model is None else EmbeddingCache(opts.cache, model, resolve_precision(opts.precision, opts.device))
    fair = fair_groups_for(opts.fair_attribute, opts.fair_gamma, opts.fair_bins, dataset, labelled)
    return FitContext(dataset, model, cache, opts.device, opts.show_progress, labelled, val_ids, opts.seed, fair,
                      resolve_acceleration(opts.precision, opts.device), opts)


class AnnotatedValidation:
    """``dataset`` whose validation cases (``cropped``: those outside the training slices, whose slice
    numbers nothing else refers to) read as their annotated slices only, with --annotated-slices-only:
    a volume annotated on some slices scores its unannotated ones as false positives wherever the model
    finds the anatomy there, and the checkpoint chosen would be the one that finds it least. Everything
    else is the dataset's own."""

    def __init__(self, dataset: Dataset, cropped: set[str]) -> None:
        self._dataset, self._cropped = dataset, cropped
        self._annotated: dict[str, list[int]] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # its own, not yet set (while unpickled): never the dataset's
            raise AttributeError(name)
        return getattr(self._dataset, name)

    def load(self, case_id: str, *, with_label: bool = True) -> Case:
        if case_id not in self._cropped:
            return self._dataset.load(case_id, with_label=with_label)
        case = self._dataset.load(case_id)
        if case.label is None:
            return case
        zs = self._annotated.setdefault(case_id, [z for z in range(case.num_slices)
                                                  if holds_class(case.label[z], case.ignore)])
        if not zs:  # nothing annotated: scored whole, as refuse_background_only_validation has its say
            zs = self._annotated[case_id] = list(range(case.num_slices))
        return replace(case, image=case.image[zs], label=case.label[zs] if with_label else None)

    def num_slices(self, case_id: str) -> int:
        if case_id not in self._cropped:
            return self._dataset.num_slices(case_id)
        if case_id not in self._annotated:
            self.load(case_id)
        return len(self._annotated[case_id])


def say_sparse_annotation(dataset: Dataset, labelled: list[SliceRef]) -> None:
    """Say, once, that a labelled volume leaves slices empty between annotated ones (``unannotated_gaps``),
    and how to learn from its annotated slices only: a fit taking those slices for background is taught
    that the anatomy on them is not there."""
    found = unannotated_gaps(dataset, labelled)
    if found:
        case_id, gaps = found
        say_once(f"labelled case {case_id} has {gaps} empty slice(s) between slices that hold a class; if its volume "
                 "was annotated on some slices only, add --annotated-slices-only, or its empty slices are learnt "
                 "as background", key="sparse-annotation")


def refuse_background_only(dataset: Dataset, data: object) -> None:
    """Refuse a dataset whose labels name no class but the background (every label file all zeros, no
    dataset.json or classes.json naming one): there is nothing to learn, and the checks further on would
    only say that the labelled slices lack an empty list of classes."""
    if not dataset.class_map.labels:
        raise DataError(f"the labels of {data} hold no class but the background (every label is all 0); "
                        "label the structures to segment, or name them in dataset.json or classes.json")


def say_unused_model(opts: FitOptions) -> None:
    """A U-Net fit (SAM-Match --no-sam) given --model, --checkpoint or --cache loads no SAM and reads no
    embedding: said, rather than recording a run the user may think was fitted with those weights. Said,
    not refused: the FixMatch and SAM-Match arms of a study share one command line."""
    model_default = field_default(FitOptions.__dataclass_fields__["model"])
    cache_default = field_default(FitOptions.__dataclass_fields__["cache"])
    given = " ".join(([] if opts.model == model_default and opts.checkpoint is None else [f"--model {opts.model}"]) +
                     ([] if opts.checkpoint is None else [f"--checkpoint {opts.checkpoint}"]) +
                     ([] if opts.cache == cache_default else [f"--cache {opts.cache}"]))
    if given:
        say_once(f"{given} is not used: this fit trains a U-Net on pixels alone and loads no SAM")


def say_unused_options(cfg: Any, names: Sequence[str], why: str) -> None:
    """The options among ``names`` given away from their default that this fit does not read, as another of
    its options turns off what they tune: said once, with ``why``, rather than refused, since they stay on
    offer so that the arms of one study (FixMatch beside SAM-Match) share one command line."""
    given = [given_option_name(f, getattr(cfg, f.name)) for f in fields(cfg)
             if f.name in names and getattr(cfg, f.name) != field_default(f)]
    if given:
        say_once(f"{listed(given)} {'are' if len(given) > 1 else 'is'} not used: {why}")


def say_if_warm_up_fills_the_fit(warmup_steps: int, steps: int, unlabelled: str, instead: str) -> None:
    """A semi-supervised fit whose --warmup-steps last all its --steps never learns from the unlabelled
    pool (a short trial run of the default recipe, --steps 100 beside a 200-step warm-up): said, since
    the run records the semi-supervised method while it fits the labelled-only one."""
    if warmup_steps >= steps:
        say_once(f"--warmup-steps {warmup_steps} is not less than --steps {steps}: {unlabelled} never starts, so "
                 f"this fit is {instead}")


def refuse_constant_images(dataset: Dataset, labelled: list[SliceRef]) -> None:
    """A labelled case whose labelled slices hold one value everywhere shows no anatomy: an export gone
    wrong (a blank PNG, an all-zero volume), which would teach the model that a class looks like
    nothing. Blank slices inside a case with real content (volume ends) are fine."""
    by_case: dict[str, list[int]] = {}
    for ref in labelled:
        by_case.setdefault(ref.case_id, []).append(ref.z)
    for case_id, zs in by_case.items():
        image = np.asarray(dataset.load(case_id).image[zs])
        if image.size and float(image.max()) == float(image.min()):
            raise DataError(f"labelled case {case_id} of {dataset.root} is a constant image (every pixel "
                            f"{image.flat[0]}); check how it was exported, or label another case")


def refuse_unlabelled_validation(dataset: Dataset, val_ids: list[str], val_split: str) -> None:
    """Every fit selects its model on the validation cases' labels: a case without a label file is
    refused before any encoding or training, not when the first validation finds it missing."""
    missing = [case_id for case_id in val_ids if not dataset.has_label(case_id)]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"validation case(s) {shown} of {dataset.root} have no label to select the model on; "
                        f"give --val-split a split (or list file) of labelled cases (now {val_split!r})")


def warn_labelled_validation(labelled: list[SliceRef], val_ids: list[str], val_split: str) -> None:
    """Validation cases that are also labelled for training select the model on what it learned from,
    so their Dice overstates what unseen cases get. Allowed (a user with very few labelled images may
    have nothing else), but said once, in the terminal and the run's log."""
    overlap = sorted({ref.case_id for ref in labelled} & set(val_ids))
    if overlap:
        shown = ", ".join(overlap[:3]) + (f" and {len(overlap) - 3} more" if len(overlap) > 3 else "")
        say_once(f"{len(overlap)} of the {len(val_ids)} validation cases ({shown}) are also labelled "
                 f"for training, so --val-split {val_split!r} selects the model on its own training data and its "
                 "validation Dice overstates unseen cases; give a split of cases outside the labelled budget")


def refuse_background_only_validation(cases: Sequence[Case]) -> None:
    """Validation labels without a single foreground pixel score a prediction of nothing as perfect
    (an empty class scores Dice 1), so model selection would keep whichever weights predict least.
    ``cases``: the loaded validation cases (labels present)."""
    if cases and not any(case.label is not None and holds_class(case.label, case.ignore) for case in cases):
        raise DataError("the validation cases' labels contain no foreground pixel, so no model can be selected "
                        "on them; give --val-split a split (or list file) whose labels show the classes")


def run_record(opts: FitOptions, ctx: FitContext) -> dict[str, Any]:
    """The shared part of RUN/config.json: enough to predict again and to refuse a mismatched resume
    (the data hash: labels edited since the run was fitted)."""
    from fewsam.runs import DATA_HASH, MASK_CODING, data_sha256

    return {
        "model": opts.model if ctx.model is not None else None,
        "checkpoint": recorded_path(opts.checkpoint) if ctx.model is not None else None,
        "weights_sha256": ctx.model.weights_sha256 if ctx.model is not None else None,
        "preprocess": ctx.model.preprocess_signature() if ctx.model is not None else None,
        "data": str(Path(opts.data).resolve()),
        "class_map": ctx.class_map.to_json(),
        # a 2D dataset's mask pixel coding: predictions of new, unlabelled images are written in it
        MASK_CODING: ctx.dataset.mask_coding() if hasattr(ctx.dataset, "mask_coding") else None,
        "values": ctx.values,
        "labelled": {"cases": opts.budget_cases, "slices": opts.labeled_slices,
                     "refs": [f"{r.case_id}:{r.z}" for r in ctx.labelled],
                     **({"annotated_only": True} if opts.annotated_slices_only else {})},
        "val_split": opts.val_split,
        DATA_HASH: data_sha256(ctx.dataset, ctx.labelled, ctx.val_ids),
        "fair": ({"attribute": opts.fair_attribute, "gamma": opts.fair_gamma, "bins": opts.fair_bins,
                  "attributes": recorded_path(opts.attributes)}
                 if opts.fair_attribute else None),
        "seed": opts.seed,
        "encoder_precision": ctx.cache.precision.name if ctx.cache is not None else None,
        # only off the reference path, so that the config of an fp32 run reads as that of any fp32 run
        **({} if ctx.acceleration == REFERENCE else {"acceleration": ctx.acceleration.name}),
        "device": opts.device,
        "cache": opts.cache,
    }


def recorded_path(path: str | Path | None) -> str | None:
    """A file option (the SAM checkpoint, the --attributes table) as RUN/config.json names it: an
    absolute path, which predict loads the weights from; a path relative to where fit ran would not be
    found by a predict run from another folder, and a fit resumed from another folder with the same
    relative spelling would read another file, while one spelled otherwise was refused as a change."""
    return None if path is None else str(Path(path).expanduser().resolve())
