"""Labelled-budget selection: which training slices are labelled, and the unlabelled rest.

"N labelled cases" takes every slice of the first N subjects (patients) in the dataset's
labelled-budget order; for ACDC that is a prefix of train_slices.list (3 cases = its first 68
lines). "K labelled slices" takes the first K slices of that order. Cases the dataset knows to
have no label file (``has_label``, e.g. a PNG image without mask) are never chosen. The
unlabelled pool is the rest of the order, in order (SSL4MIS, UniMatch, SAM-Match convention).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice

import numpy as np

from fewsam.data.types import Dataset, SliceRef
from fewsam.errors import DataError, FewsamError
from fewsam.labels import holds_class, wholly_annotated
from fewsam.progress import say_once


def select_labelled(ds: Dataset, n_cases: int | None = None, n_slices: int | None = None,
                    annotated_only: bool = False) -> list[SliceRef]:
    """The labelled slices for a budget of ``n_cases`` subjects or ``n_slices`` slices (one of).

    ``annotated_only``: only the slices whose label holds a class count as labelled (volumes annotated on
    a few slices, the others left 0); the others join the unlabelled pool (``unlabelled_pool``)."""
    if (n_cases is None) == (n_slices is None):
        raise FewsamError("give exactly one labelled budget: a number of cases "
                          "(--labeled-cases) or of slices (--labeled-slices)")
    order = [r for r in ds.labelled_budget_order() if ds.has_label(r.case_id)]
    if n_slices is not None:
        _check_budget(n_slices, len(order), "slices", ds)
        if annotated_only:
            return _first_annotated(ds, order, n_slices)
        return order[:n_slices]
    subject = {cid: ds.subject_of(cid) for cid in dict.fromkeys(r.case_id for r in order)}
    subjects = list(dict.fromkeys(subject.values()))
    _check_budget(n_cases, len(subjects), "cases", ds)
    chosen = set(subjects[:n_cases])
    picked = [r for r in order if subject[r.case_id] in chosen]
    if not annotated_only:
        return picked
    kept = list(annotated_slices(ds, picked))
    say_once(f"--annotated-slices-only: {len(kept)} of the {len(picked)} slices of the {n_cases} labelled case(s) hold "
             "a class and are labelled; the others join the unlabelled pool")
    return kept


def annotated_slices(ds: Dataset, refs: list[SliceRef]) -> Iterator[SliceRef]:
    """The slices of ``refs`` whose label holds a class, in order; each case's label read once, as it comes."""
    return slices_whose_label(ds, refs, holds_class)


def wholly_annotated_slices(ds: Dataset, refs: list[SliceRef]) -> Iterator[SliceRef]:
    """The slices of ``refs`` whose label marks no pixel unannotated (``labels.wholly_annotated``), in order."""
    return slices_whose_label(ds, refs, wholly_annotated)


def slices_whose_label(ds: Dataset, refs: list[SliceRef], keep: Callable[[np.ndarray, int | None], bool]
                       ) -> Iterator[SliceRef]:
    """The slices of ``refs`` with a label that ``keep(label, unannotated value)`` accepts, in order; each
    case's label read once, as it comes, so a long volume's label is not read once per slice."""
    by_case: dict[str, list[SliceRef]] = {}
    for ref in refs:
        by_case.setdefault(ref.case_id, []).append(ref)
    for case_id, case_refs in by_case.items():
        case = ds.load(case_id)
        yield from (r for r in case_refs if case.label is not None and keep(case.label[r.z], case.ignore))


def _first_annotated(ds: Dataset, order: list[SliceRef], n_slices: int) -> list[SliceRef]:
    """The first ``n_slices`` annotated slices of the budget order, reading only the labels it needs."""
    picked = list(islice(annotated_slices(ds, order), n_slices))
    if len(picked) < n_slices:
        raise DataError(f"a budget of {n_slices} annotated slices is not possible: the training split of {ds.root} "
                        f"has {len(picked)} slices whose label holds a class; choose at most {len(picked)}")
    return picked


def unannotated_gaps(ds: Dataset, refs: list[SliceRef]) -> tuple[str, int] | None:
    """The first labelled case (and how many slices) whose label leaves slices empty between annotated ones:
    anatomy is continuous along a volume, so such a case was most likely annotated on some slices only, and
    a fit that takes its empty slices for background learns that the anatomy on them is background."""
    by_case: dict[str, list[int]] = {}
    for ref in refs:
        by_case.setdefault(ref.case_id, []).append(ref.z)
    for case_id, zs in by_case.items():
        if len(zs) < 3:
            continue
        case = ds.load(case_id)
        if case.label is None:
            continue
        annotated = {z for z in zs if holds_class(case.label[z], case.ignore)}
        gaps = [z for z in zs if annotated and min(annotated) < z < max(annotated) and z not in annotated]
        if gaps:
            return case_id, len(gaps)
    return None


def unlabelled_pool(ds: Dataset, labelled: list[SliceRef]) -> list[SliceRef]:
    """Training slices not in ``labelled``, in labelled-budget order."""
    taken = set(labelled)
    return [r for r in ds.labelled_budget_order() if r not in taken]


def select_unlabelled(ds: Dataset, labelled: list[SliceRef], limit: int | None, seed: int,
                      split: str | None = None) -> list[SliceRef]:
    """The unlabelled pool, or a seeded subset of ``limit`` slices of it (kept in pool order), so a
    semi-supervised fit can bound what it encodes and loads. ``split`` (a split name or list file)
    restricts the pool to its cases, e.g. to keep patients held out for evaluation out of it."""
    pool = unlabelled_pool(ds, labelled)
    if split is not None:
        pool = _pool_of_split(ds, pool + unlabelled_outside_training(ds, ds.split(split)), labelled, split)
    else:
        _say_pool_left_outside(ds, refuse=not pool)
    if limit is None or limit >= len(pool):
        return pool
    idx = np.sort(np.random.default_rng(seed).choice(len(pool), limit, replace=False))
    return [pool[i] for i in idx]


def unlabelled_outside_training(ds: Dataset, case_ids: list[str]) -> list[SliceRef]:
    """The slices of those ``case_ids`` that have no label and lie outside the training split.

    Every reader puts its unlabelled images in "test" (``computed_splits``), so one labelled
    volume beside unlabelled ones left a semi-supervised fit nothing to learn from. Named by
    --unlabeled-split they may join the pool: with no label they are never a validation or
    evaluated case whose score they could inflate."""
    training = {r.case_id for r in ds.labelled_budget_order()}
    return [SliceRef(cid, z) for cid in dict.fromkeys(case_ids) if cid not in training and not ds.has_label(cid)
            for z in range(ds.num_slices(cid))]


def _say_pool_left_outside(ds: Dataset, refuse: bool) -> None:
    """Unlabelled images sit in "test", outside the default pool (they may be the user's held-out test
    images): say which split holds them, for --unlabeled-split. With every training slice labelled
    (``refuse``), the advice to label fewer cases would be wrong: refused naming that split instead."""
    training = {r.case_id for r in ds.labelled_budget_order()}
    outside = {cid for cid in ds.split("all") if cid not in training and not ds.has_label(cid)}
    if not outside:
        return
    holding = [name for name in ds.split_names() if name != "all" and outside & set(ds.split(name))]
    where = f"{len(outside)} case(s) without a label lie outside the training split (in {', '.join(holding)})"
    option = f"--unlabeled-split {holding[0] if holding else 'LIST'} (a split or list file naming them)"
    if refuse:
        raise DataError(f"no unlabelled training slices are left, but {where}: pass {option} to learn from them")
    say_once(f"{where} and are not in the unlabelled pool, as they may be held-out test images; {option} learns "
             "from them", key="pool-left-outside")


def _pool_of_split(ds: Dataset, pool: list[SliceRef], labelled: list[SliceRef], split: str) -> list[SliceRef]:
    """The slices of ``pool`` whose cases ``split`` names. Only training cases outside the labelled budget
    (and cases with no label at all, ``unlabelled_outside_training``) can be in the pool: a split that names none of them (``val``, a list of the labelled cases) is
    refused naming what its cases are, not with the advice to label fewer cases, and the cases it
    names that cannot be in the pool are said once, as they are left out."""
    named = list(dict.fromkeys(ds.split(split)))
    in_pool = {r.case_id for r in pool}
    taken = {r.case_id for r in labelled} - in_pool  # every slice labelled
    left_out = [case_id for case_id in named if case_id not in in_pool]
    if left_out:
        n_labelled = sum(case_id in taken for case_id in left_out)
        n_other = len(left_out) - n_labelled
        why = " and ".join(part for part in (f"{n_labelled} labelled for training" if n_labelled else "",
                                             f"{n_other} not in the training split" if n_other else "") if part)
        shown = ", ".join(left_out[:3]) + (f" and {len(left_out) - 3} more" if len(left_out) > 3 else "")
        if len(left_out) == len(named):
            raise DataError(f"--unlabeled-split {split!r} names no training case outside the labelled budget (its "
                            f"{len(named)} case(s), {shown}: {why}); the unlabelled pool is drawn from the training "
                            "split's unlabelled cases: give a split or list file of those, or leave the option out")
        say_once(f"{len(left_out)} of the {len(named)} cases of --unlabeled-split {split!r} ({shown}) are left out of "
                 f"the unlabelled pool: {why}")
    allowed = set(named)
    return [r for r in pool if r.case_id in allowed]


def _check_budget(n: int, available: int, unit: str, ds: Dataset) -> None:
    if not 0 <= n <= available:
        raise DataError(f"a budget of {n} labelled {unit} is not possible: the training split of "
                        f"{ds.root} has {available} {unit}{_held_for_validation(ds)}; choose at most {available}")


def _held_for_validation(ds: Dataset) -> str:
    """The labelled cases of "val", named in a budget error: 4 labelled volumes give a training split
    of 3, and a user asking for 4 should hear where the fourth is."""
    try:
        held = sum(ds.has_label(case_id) for case_id in ds.split("val"))
    except DataError:
        return ""
    return f" ({held} more labelled case(s) are in 'val', for validation)" if held else ""
