"""Group attributes for fit and evaluate, and FairSeg's error-bound scaling wired into any trainer.

One place turns a case into its group: the case's attributes (index CSV columns, a joined
attribute CSV such as ACDC's ``patient_info.csv``, or the attributes stored in FairSeg npz
files), binned with ``fewsam.data.group_of`` (``--bins bmi:25,30``; age at 60 by default).
A case without a value is in no group: it counts in overall scores, and in training it gets
the scaling weight 1 (group id -1).

Any method's trainer gets fair scaling through ``fair_groups_for(...)`` (``None`` without
``--fair-attribute``): its ``FairGroups.loss(ignore_index)`` is a ``FairLoss`` callable
``loss_fn(logits, target, batch)`` that looks up each batch item's case, maps it to a group id
and applies ``losses.FairScaledLoss``; ``FairGroups.save(run_dir)`` records the groups. gamma = 0 is exactly the
unscaled Dice + CE loss.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from fewsam.data import Bins, group_of, parse_bins
from fewsam.data.attributes import (AtLeast, attribute_value, default_bins, no_attributes_hint, parse_cell,
                                     table_sources, without_leading_zeros)
from fewsam.data.readers.fairseg_npz import keeps_attributes_in_files
from fewsam.data.types import Dataset
from fewsam.labels import IGNORE
from fewsam.errors import DataError, FewsamError
from fewsam.losses import FairScaledLoss
from fewsam.metrics import CI_METRICS, MIN_GROUPS, equity_scaled
from fewsam.progress import say_once

GROUPS_FILE = "fair_groups.json"


def resolve_bins(column: str, bins: str | Bins | None) -> Bins | None:
    """``--bins`` for ``column``: parsed, and refused when it names another column."""
    if bins is None or isinstance(bins, Bins):
        parsed = bins
    elif isinstance(bins, str):
        parsed = parse_bins(bins)
    else:  # edges alone name no column: the parser's AttributeError named nothing the caller gave
        raise FewsamError(f"--bins must be text such as '{column}:EDGE[,EDGE...]' (or a Bins), not {bins!r}")
    if parsed is not None and parsed.column != column:
        raise FewsamError(f"--bins names column {parsed.column!r} but the group column is {column!r}; "
                          f"write --bins {column}:EDGE[,EDGE...]")
    return parsed


def check_bin_values(column: str, bins: Bins | None, attributes: Mapping[str, dict[str, Any]]) -> None:
    """Refuse text in a binned column, naming the case and the value: ``group_of`` would make it a
    group of its own ("27,5" beside "25-30"), which silently changes ES-Dice and the worst-group gap.

    ``bins``: the explicit ``--bins`` (any text is refused), or None for the column's default bins
    (age, bmi), which refuse text only beside numbers: an all-text "age" column is grouped by value.
    A column without bins that holds measurements is refused (``refuse_unbinned_measurements``).
    ``attributes``: case id -> the case's attributes.
    """
    binned = bins or default_bins(column)
    values = {cid: value for cid, attrs in attributes.items() if (value := attribute_value(attrs, column)) is not None}
    if binned is None:
        refuse_unbinned_measurements(column, list(values.values()))
        return
    how = f"--bins {column}:{','.join(f'{e:g}' for e in binned.edges)}" + ("" if bins else " (its default bins)")
    refuse_split_top_codes(column, binned, how, values)
    refuse_infinite_values(column, how, values)
    text = {cid: v for cid, v in values.items() if not isinstance(v, Real) or isinstance(v, bool)}
    if not text or (bins is None and len(text) == len(values)):
        return
    case_id, value = next(iter(text.items()))
    raise DataError(f"case {case_id} has {column} = {value!r}, not a number, so {how} cannot bin it "
                    f"({len(text)} case(s) like it); write plain numbers with a decimal point (27.5, not 27,5) "
                    "or leave the value empty for no group")


def refuse_infinite_values(column: str, how: str, values: Mapping[str, Any]) -> None:
    """Refuse an infinite value in a binned column, naming the case: "inf" is what pandas writes for a BMI
    computed with a height of 0 (a missing height recorded as 0), and it fell in the top bin (">=30") as if
    it were measured there."""
    infinite = {cid: v for cid, v in values.items()
                if isinstance(v, Real) and not isinstance(v, bool) and math.isinf(v)}
    if infinite:
        case_id, value = next(iter(infinite.items()))
        raise DataError(f"case {case_id} has {column} = {value}, not a finite number, so {how} cannot bin it "
                        f"({len(infinite)} case(s) like it; a division by zero where the table was computed?); "
                        "correct the value, or leave it empty for no group")


def refuse_split_top_codes(column: str, bins: Bins, how: str, values: Mapping[str, Any]) -> None:
    """Refuse a top-coded value ("90+") that lies across an edge of the bins (age:60,95): its case may be in
    either of two bins, and taking one would move it, or leaving it out would drop it from its group unsaid."""
    split = {cid: v for cid, v in values.items() if isinstance(v, AtLeast) and not bins.holds_all_from(v)}
    if not split:
        return
    case_id, value = next(iter(split.items()))
    raise DataError(f"case {case_id} has {column} = {value} (top-coded: {value:g} or more), which {how} cannot "
                    f"place in one bin ({len(split)} case(s) like it); give no edge above {value:g}, e.g. "
                    f"--bins {column}:{','.join(f'{e:g}' for e in bins.edges if e <= value) or f'{value:g}'}")


# A numeric column grouped by value (no --bins) holds codes (sex 0/1, a site number) when its values are
# whole numbers and few; more distinct values than this, or any fraction, is a measurement.
MAX_VALUE_GROUPS = 10


def refuse_unbinned_measurements(column: str, values: list[Any]) -> None:
    """Refuse a numeric column that holds measurements (BMI 27.3, weight, an age column of another
    name) given without --bins: grouped by value, every distinct number is a group of its own, and
    ES-Dice, the worst-group gap and fair scaling compare single cases. Any grouping of numbers is
    some --bins, so the way out always exists; whole numbers, few of them, stay groups (codes)."""
    numbers = sorted({float(v) for v in values if isinstance(v, Real) and not isinstance(v, bool)})
    fractions = [x for x in numbers if not x.is_integer()]
    if not fractions and len(numbers) <= MAX_VALUE_GROUPS:
        return
    why = (f"fractions such as {fractions[0]:g}" if fractions else
           f"{len(numbers)} different whole numbers (more than {MAX_VALUE_GROUPS} groups)")
    middle = numbers[len(numbers) // 2]
    raise DataError(f"{column!r} holds measurements ({why}), which would make one group per value; bin it with "
                    f"--bins, e.g. --bins {column}:{middle:g} (groups <{middle:g} and >={middle:g}), or with more "
                    f"edges, --bins {column}:EDGE,EDGE,...")


def check_sources_agree(dataset: Any, case_ids: Iterable[str], column: str, bins: Bins | None) -> None:
    """Refuse a case whose index and joined attribute tables put it in different groups of ``column``
    (sex "F" in index.csv, "M" in --attributes), naming both: the later table would win unseen and
    move the case to another group. Values that bin alike (BMI 26 and 27 under 25/30) agree."""
    sources = getattr(dataset, "attribute_sources", None)
    if sources is None:
        return
    for case_id in case_ids:
        known = [(where, value) for where, attrs in sources(case_id)
                 if (value := attribute_value(attrs, column)) is not None]
        for where, other in known[1:]:
            first, value = known[0]
            if group_of({column: other}, column, bins) != group_of({column: value}, column, bins):
                raise DataError(f"case {case_id} has {column} = {value!r} in {first} but {other!r} in {where}; "
                                f"correct the wrong one, or leave one of the two cells empty")


def say_tables_over_files(dataset: Any, case_ids: Iterable[str], column: str, bins: Bins | None) -> None:
    """Say, once, that a joined table puts cases in other groups of ``column`` than the values stored in
    their files (Harvard-FairSeg's npz files hold race, gender, ethnicity, language...), naming the first
    case, both values and how many cases differ. The table wins, as the user gave it for this run and a
    file cannot be corrected as a cell can (the files' race codes even differ between releases), but it
    is said: taken unsaid, the table moved cases between groups. Values that bin alike agree."""
    file_attributes = getattr(dataset, "file_attributes", None)
    if file_attributes is None:
        return
    differing = []
    for case_id in case_ids:
        where, stored = file_attributes(case_id)
        tables = [(source, value) for source, row in dataset.table_rows(case_id)
                  if (value := attribute_value(row, column)) is not None]
        if attribute_value(stored, column) is None or not tables:
            continue
        table, value = tables[-1]  # the last joined table wins (``attributes_of``)
        if group_of({column: value}, column, bins) != group_of(stored, column, bins):
            differing.append((case_id, attribute_value(stored, column), where, value, table))
    if differing:
        case_id, stored_value, where, value, table = differing[0]
        more = f" (and {len(differing) - 1} more cases)" if len(differing) > 1 else ""
        say_once(f"case {case_id} has {column} = {stored_value!r} in its file {where} but {value!r} in {table}{more}: "
                 f"the table's value is used; leave its {column} cells empty to use the files' values",
                 key=f"table-over-file-{column}")


def check_group_spellings(column: str, groups: Iterable[str | None]) -> None:
    """Refuse group values that differ only in case ("Female" and "female") or in leading zeros (site "01"
    and "1", where Excel stripped the zeros of the cells it was given to edit): typed by hand in one
    table, they mean one group, but would be scored as two, each with part of its cases, and change
    ES-Dice and the worst-group gap."""
    spellings: dict[str, str] = {}
    for group in groups:
        if group is None:
            continue
        first = spellings.setdefault(without_leading_zeros(group.casefold()), group)
        if first != group:
            how = "only in case" if first.casefold() == group.casefold() else "only in leading zeros"
            raise DataError(f"{column} has the values {first!r} and {group!r}, which differ {how} and would "
                            "be scored as two groups; write one spelling for each group in the attribute table")


def case_attributes(dataset: Dataset, case_id: str) -> dict[str, Any]:
    """A case's attributes, without reading pixels when the index already has them.

    FairSeg npz files keep their attributes inside the file, so those cases are loaded.
    """
    if not keeps_attributes_in_files(dataset):
        return dataset.attributes_of(case_id)
    return dataset.load(case_id).attributes


def check_group_column(column: str, groups: Iterable[str | None], attributes: Iterable[dict[str, Any]],
                       cases: str = "case", tables: Sequence[str] = ()) -> None:
    """Refuse a group column that no case has a value for, naming the attributes that exist.
    ``cases``: what the cases are (fit groups its labelled cases: other cases may well have the column).
    ``tables``: the attribute tables joined to the dataset (``table_sources``), so that where no case has
    any value the hint names the table that holds none for them instead of asking for one."""
    if any(g is not None for g in groups):
        return
    available = sorted({k for attrs in attributes for k, v in attrs.items() if v is not None})
    names = ", ".join(available) if available else no_attributes_hint(cases, tables)
    if cases == "case":
        raise FewsamError(f"no case has a value for attribute {column!r}; available attributes: {names}")
    raise FewsamError(f"no {cases} has a value for attribute {column!r}, and fair scaling groups the {cases}s; "
                      f"available attributes of the {cases}s: {names}")


def case_groups(dataset: Any, case_ids: Sequence[str], column: str,
                bins: str | Bins | None = None, cases: str = "case") -> dict[str, str | None]:
    """case id -> group label (None when the case has no value for ``column``); ``cases``: what the
    cases are, as an error names them."""
    binned = resolve_bins(column, bins)
    attrs = {cid: case_attributes(dataset, cid) for cid in dict.fromkeys(case_ids)}
    check_bin_values(column, binned, attrs)
    check_sources_agree(dataset, attrs, column, binned)
    say_tables_over_files(dataset, attrs, column, binned)
    groups = {cid: group_of(a, column, binned) for cid, a in attrs.items()}
    check_group_column(column, groups.values(), attrs.values(), cases, table_sources(dataset))
    check_group_spellings(column, groups.values())
    return groups


def group_indices(groups: dict[str, str | None]) -> tuple[dict[str, int], list[str]]:
    """Group labels -> integer ids in sorted label order; no group -> -1."""
    names = sorted({g for g in groups.values() if g is not None})
    index = {name: i for i, name in enumerate(names)}
    return {cid: (-1 if g is None else index[g]) for cid, g in groups.items()}, names


def _case_id(item: Any) -> str:
    """The case of a batch item: an EmbeddedSlice (``.ref.case_id``), a SliceRef or a case id."""
    ref = getattr(item, "ref", item)
    return ref if isinstance(ref, str) else ref.case_id


class FairLoss:
    """``loss_fn(logits, target, batch)`` for a trainer: Dice + CE with fair error-bound scaling.

    case_group: case id -> group id (-1 = unknown; cases not listed are unknown too).
    logits (B, C, *spatial), target (B, *spatial) long, batch: B items naming their cases.
    """

    def __init__(self, case_group: dict[str, int], gamma: float, ignore_index: int | None = IGNORE,
                 ce_weight: float = 0.5, dice_weight: float = 0.5, record: dict[str, Any] | None = None) -> None:
        self.case_group = dict(case_group)
        self.loss = FairScaledLoss(gamma, ce_weight, dice_weight, ignore_index=ignore_index)
        self.record = record or {"gamma": gamma}

    def group_tensor(self, batch: Sequence[Any]) -> Tensor:
        return torch.tensor([self.case_group.get(_case_id(item), -1) for item in batch], dtype=torch.long)

    def __call__(self, logits: Tensor, target: Tensor, batch: Sequence[Any]) -> Tensor:
        return self.loss(logits, target, self.group_tensor(batch).to(logits.device))


@dataclass(frozen=True)
class FairGroups:
    """The labelled cases' groups and gamma of a fit with fair scaling; makes its loss, records itself."""

    case_group: dict[str, int]  # case id -> group id (-1: no group)
    gamma: float
    record: dict[str, Any]

    def loss(self, ignore_index: int | None) -> FairLoss:
        return FairLoss(self.case_group, self.gamma, ignore_index=ignore_index, record=self.record)

    def save(self, run_dir: Path) -> Path:
        """Write ``fair_groups.json``: the groups and how many labelled cases each holds. A resumed fit
        whose labelled cases now fall in other groups (the attribute table edited since, or other
        --bins values a table's path does not show) is refused: its weights so far were scaled by the
        recorded groups, and the data hash covers images and labels, not attributes."""
        from fewsam.runs import write_json

        path = Path(run_dir) / GROUPS_FILE
        refuse_other_groups(path, _recorded_groups(path), self.record)
        write_json(path, self.record)
        return path


def _recorded_groups(path: Path) -> Any:
    """The case groups ``path`` records; None for a new run (or a file a kill left damaged: rewritten)."""
    try:
        return json.loads(path.read_text()).get("case_group")
    except (OSError, ValueError, AttributeError):
        return None


def refuse_other_groups(path: Path, recorded: Any, record: dict[str, Any]) -> None:
    """Refuse groups of the labelled cases other than ``path`` records, naming the first case that moved.

    A recorded group that fewsam now reads as no value ("-1", FairSeg's code for unknown, "unknown",
    "#N/A": an earlier fewsam grouped them) is no change of the table: the same command fitted the run
    and would otherwise be refused with nothing the user could restore. Those cases resume in no group
    (weight 1), as a new fit puts them, and the fit says so once."""
    if not isinstance(recorded, dict):
        return
    # groups are text in Unicode's composed form now (``group_of``); an earlier fit may have recorded one decomposed
    recorded = {case: unicodedata.normalize("NFC", g) if isinstance(g, str) else g for case, g in recorded.items()}
    if recorded == record["case_group"]:
        return
    now = record["case_group"]
    differing = [c for c in sorted(set(recorded) | set(now)) if recorded.get(c) != now.get(c)]
    unread = [c for c in differing if c in recorded and now.get(c, "") is None
              and reads_as_no_value(recorded[c], record["attribute"], record.get("bins"))]
    moved = [c for c in differing if c not in unread]
    if moved:
        case = moved[0]
        raise DataError(f"{path} records the labelled cases' {record['attribute']!r} groups this run was fitted "
                        f"with, and the attributes now give others (case {case}: {recorded.get(case)!r} -> "
                        f"{now.get(case)!r}); restore the attribute table to resume, or choose another --out")
    if unread:
        values = sorted({str(recorded[c]) for c in unread})
        say_once(f"{path} records {len(unread)} labelled case(s) (the first: {unread[0]}) in {record['attribute']!r} "
                 f"group(s) {', '.join(map(repr, values))}, which fewsam reads as no value (unknown): the fit resumes "
                 "with them in no group (loss weight 1), as a new fit puts them", key=f"resumed-unknown-{path}")


def reads_as_no_value(group: Any, column: str, bins: str | Bins | None) -> bool:
    """Whether a recorded group label, read as a table cell of ``column`` is, gives no group: the spellings of
    an unknown value (``MISSING``) and -1 (``is_unknown_code``), under the run's own --bins."""
    if not isinstance(group, str):
        return False
    try:
        binned = resolve_bins(column, bins)
    except FewsamError:
        return False
    return group_of({column: parse_cell(group, column)}, column, binned) is None


def fair_groups_for(column: str | None, gamma: float, bins: str | None, dataset: Any,
                    labelled: Sequence[Any]) -> FairGroups | None:
    """The groups of a fit's labelled cases for fair scaling on ``column``; None without one.

    Called before the run folder exists, so a bad column is refused before anything is written."""
    if not column:
        return None
    if gamma < 0:
        raise FewsamError(f"--fair-gamma must be >= 0, got {gamma}")
    groups = case_groups(dataset, [_case_id(r) for r in labelled], column, bins, cases="labelled case")
    case_group, names = group_indices(groups)
    refuse_one_group(column, gamma, groups, names)
    record = {"attribute": column, "gamma": gamma, "bins": bins, "groups": names,
              "labelled_cases_per_group": {n: sum(g == n for g in groups.values()) for n in names},
              "labelled_cases_without_group": sum(g is None for g in groups.values()),
              "case_group": groups}
    return FairGroups(case_group, gamma, record)


def refuse_one_group(column: str, gamma: float, groups: dict[str, str | None], names: list[str]) -> None:
    """Fair scaling weighs each group's loss against the best group's: with the labelled cases all in one
    group (cases without a value weigh 1) every weight is 1, so the fit would be the unscaled one while
    its run records fair scaling. Refused, as --fair-gamma without --fair-attribute is; gamma 0, the
    unscaled loss asked for by name, is left alone."""
    if gamma == 0 or len(names) > 1:
        return
    with_value = sum(g is not None for g in groups.values())
    rest = "; the others have no value" if with_value < len(groups) else ""
    raise DataError(f"fair scaling on {column!r} needs labelled cases of two groups or more, but every labelled case "
                    f"with a value is in group {names[0]!r} ({with_value} of {len(groups)}{rest}), so the loss "
                    "would not be scaled; label cases of another group (a larger --labeled-cases), or leave "
                    "--fair-attribute out")


def per_class_equity(result: dict[str, Any], alpha: float = 1.0, es_mode: str = "sum") -> dict[str, dict[str, float | None]]:
    """ES-Dice, ES-IoU and worst-group Dice gap of each class (FairSeg reports cup and rim apart).

    ``result`` is a ``metrics.group_summary`` output; classes follow ``result["per_class"]``. The
    spread is measured around the per-class means of the cases in a group (``result["grouped"]``;
    a summary without it holds no case outside the groups), as ``group_summary``'s ES-Dice is.
    """
    out: dict[str, dict[str, float | None]] = {}
    groups = result.get("groups", {})
    grouped = result.get("grouped", result)["per_class"]
    for name in result["per_class"]:
        overall = grouped.get(name, {})
        entry: dict[str, float | None] = {}
        for m in CI_METRICS:
            scores = [g["per_class"].get(name, {}).get(m) for g in groups.values()]
            usable = len(groups) >= MIN_GROUPS and overall.get(m) is not None and None not in scores
            entry[f"es_{m}"] = equity_scaled(overall[m], scores, alpha, es_mode) if usable else None
        dice = [g["per_class"].get(name, {}).get("dice") for g in groups.values()]
        dice = [d for d in dice if d is not None]
        entry["worst_group_gap"] = max(dice) - min(dice) if len(dice) >= MIN_GROUPS else None
        out[name] = entry
    return out
