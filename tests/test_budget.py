"""Labelled-budget selection: the SSL4MIS convention on real ACDC lists, and known-answer cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data
from fewsam.data import SliceRef, open_dataset, select_labelled, select_unlabelled, unlabelled_pool
from fewsam.errors import DataError, FewsamError
from test_readers import make_nnunet, volume


@pytest.fixture(scope="module")
def acdc():
    return open_dataset(shared_data("acdc"))


@pytest.fixture(scope="module")
def lines():
    return (shared_data("acdc") / "train_slices.list").read_text().split()


@pytest.mark.parametrize("n_cases, n_lines, patients", [
    (3, 68, {"patient099", "patient038", "patient050"}),
    (7, 136, None),
])
def test_acdc_labelled_cases_are_the_first_lines(acdc, lines, n_cases, n_lines, patients):
    chosen = select_labelled(acdc, n_cases=n_cases)
    assert [r.case_id for r in chosen] == lines[:n_lines]
    assert all(r.z == 0 for r in chosen)
    if patients:
        assert {acdc.subject_of(r.case_id) for r in chosen} == patients


def test_acdc_unlabelled_pool_is_the_rest(acdc, lines):
    chosen = select_labelled(acdc, n_cases=3)
    pool = unlabelled_pool(acdc, chosen)
    assert [r.case_id for r in pool] == lines[68:]
    assert not set(pool) & set(chosen)


def test_slice_budget_and_limits(acdc, lines):
    assert [r.case_id for r in select_labelled(acdc, n_slices=10)] == lines[:10]
    assert select_labelled(acdc, n_cases=0) == []
    assert len(select_labelled(acdc, n_cases=70)) == 1312
    with pytest.raises(DataError, match="70 cases"):
        select_labelled(acdc, n_cases=71)
    with pytest.raises(DataError, match="1312 slices"):
        select_labelled(acdc, n_slices=2000)
    with pytest.raises(FewsamError, match="exactly one"):
        select_labelled(acdc, n_cases=3, n_slices=10)
    with pytest.raises(FewsamError, match="exactly one"):
        select_labelled(acdc)


class Interleaved:
    """A dataset whose subjects' slices are not contiguous in the budget order."""

    root = Path("interleaved")

    def labelled_budget_order(self):
        return [SliceRef(c, 0) for c in ["a_1", "b_1", "a_2", "c_1", "b_2"]]

    def subject_of(self, case_id):
        return case_id.split("_")[0]

    def has_label(self, case_id):
        return True


def test_cases_take_every_slice_of_the_first_subjects():
    ds = Interleaved()
    chosen = select_labelled(ds, n_cases=2)
    assert [r.case_id for r in chosen] == ["a_1", "b_1", "a_2", "b_2"]
    assert unlabelled_pool(ds, chosen) == [SliceRef("c_1", 0)]


def test_volume_datasets_budget_whole_volumes(tmp_path):
    rng = np.random.default_rng(0)
    ds = open_dataset(make_nnunet(tmp_path, {f"c{i}": volume(rng, (3, 4, 4)) for i in range(5)}))
    chosen = select_labelled(ds, n_cases=2)
    assert chosen == [SliceRef(c, z) for c in ("c0", "c1") for z in range(3)]
    assert len(unlabelled_pool(ds, chosen)) == 6


def test_images_without_mask_go_to_the_pool_only():
    ds = open_dataset(shared_data("multisite") / "ProstateSlice")
    assert not ds.has_label("I2CVB/train/image/00_03")
    chosen = select_labelled(ds, n_cases=17)
    assert len(chosen) == 17 and SliceRef("I2CVB/train/image/00_03", 0) not in chosen
    assert unlabelled_pool(ds, chosen) == [SliceRef("I2CVB/train/image/00_03", 0)]


def test_unlabelled_pool_restricted_to_a_list_file(acdc, lines, tmp_path):
    chosen = select_labelled(acdc, n_cases=3)
    keep = lines[100:110] + lines[:2]  # two labelled slices in the list stay out of the pool
    listed = tmp_path / "pool.list"
    listed.write_text("\n".join(keep) + "\n")
    pool = select_unlabelled(acdc, chosen, None, 0, str(listed))
    assert [r.case_id for r in pool] == lines[100:110]
    assert select_unlabelled(acdc, chosen, 4, 0, str(listed)) == select_unlabelled(acdc, chosen, 4, 0, str(listed))
    assert len(select_unlabelled(acdc, chosen, 4, 0, str(listed))) == 4
