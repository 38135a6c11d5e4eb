"""Known-answer and property tests for fewsam.metrics."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from fewsam.errors import DataError, FewsamError
from fewsam.metrics import (
    binary_metrics,
    case_metrics,
    dice_per_class,
    equity_scaled,
    group_summary,
    summarise,
    wilcoxon_compare,
)

SQRT5, SQRT8 = math.sqrt(5), math.sqrt(8)


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


# Concentric squares: a 6x6 ring of 20 surface pixels around a 2x2 square (all 4 are surface).
# From the 2x2 every pixel is 2 from the ring. From the ring: 8 pixels at 2, 8 at sqrt(5),
# 4 corners at sqrt(8); the 95th percentile of those 20 sorted values is sqrt(8).
BIG, SMALL = square(10, 2, 2, 6), square(10, 4, 4, 2)
RING_MEAN = (8 * 2 + 8 * SQRT5 + 4 * SQRT8) / 20


@pytest.mark.parametrize(
    "pred, label, expected",
    [
        # 4x4 vs the same square shifted one column: overlap 12 of 16 + 16. Of the 12 surface
        # pixels of pred, 6 lie on label's top/bottom rows (distance 0), the other 6 are 1 away.
        (square(8, 1, 1, 4), square(8, 1, 2, 4), {"dice": 24 / 32, "iou": 12 / 20, "hd95": 1.0, "asd": 0.5}),
        # shifted one row and one column: overlap 3x3 = 9.
        (square(8, 1, 1, 4), square(8, 2, 2, 4), {"dice": 18 / 32, "iou": 9 / 23}),
        (BIG, SMALL, {"dice": 8 / 40, "iou": 4 / 36, "hd95": SQRT8, "asd": RING_MEAN}),
        (SMALL, BIG, {"dice": 8 / 40, "iou": 4 / 36, "hd95": SQRT8, "asd": 2.0}),
        (BIG, BIG, {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}),
    ],
)
def test_binary_metrics_known_answers(pred, label, expected):
    result = binary_metrics(pred, label)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value), name


@pytest.mark.parametrize(
    "pred_empty, label_empty, expected",
    [
        (True, True, {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}),
        (True, False, {"dice": 0.0, "iou": 0.0, "hd95": None, "asd": None}),
        (False, True, {"dice": 0.0, "iou": 0.0, "hd95": None, "asd": None}),
    ],
)
def test_empty_mask_conventions(pred_empty, label_empty, expected):
    empty = np.zeros((6, 6), dtype=bool)
    pred = empty if pred_empty else square(6, 1, 1, 3)
    label = empty if label_empty else square(6, 2, 2, 3)
    assert binary_metrics(pred, label) == expected


def test_spacing_scales_distances():
    isotropic = binary_metrics(BIG, SMALL, spacing=(0.5, 0.5))
    assert isotropic["hd95"] == pytest.approx(SQRT8 / 2)
    assert isotropic["asd"] == pytest.approx(RING_MEAN / 2)
    # rows 3 mm apart: the small square is 2 columns (2 mm) from the ring's side walls.
    assert binary_metrics(SMALL, BIG, spacing=(3.0, 1.0))["asd"] == pytest.approx(2.0)


def test_surface_touching_the_array_edge():
    # a 5x5 image filled by one object: its surface is the image border (16 pixels). The inner
    # 3x3 square's 8 surface pixels are each 1 from it; from the border, 12 pixels are 1 away
    # and the 4 corners sqrt(2).
    full, inner = np.ones((5, 5), dtype=bool), square(5, 1, 1, 3)
    assert binary_metrics(inner, full)["asd"] == pytest.approx(1.0)
    assert binary_metrics(full, inner)["asd"] == pytest.approx((12 + 4 * math.sqrt(2)) / 16)
    assert binary_metrics(full, inner)["hd95"] == pytest.approx(math.sqrt(2))


def test_case_metrics_multiclass_volume():
    label = np.zeros((3, 8, 8), dtype=np.int64)
    label[:, 1:5, 1:5] = 1
    label[1, 6:8, 6:8] = 2
    pred = label.copy()
    pred[:, 1:5, 1] = 0  # class 1 loses one column per slice: 12 of 16 voxels on 3 slices
    result = case_metrics(pred, label, [1, 2, 3], spacing=(5.0, 1.0, 1.0))
    assert result[1]["dice"] == pytest.approx(2 * 36 / (36 + 48))
    assert result[1]["iou"] == pytest.approx(36 / 48)
    assert result[2] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}
    assert result[3] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}


def test_a_one_slice_case_is_measured_as_its_image():
    """A PNG or 2D NIfTI case is (1, H, W): its surface is the contour in the image, not every pixel."""
    pred, label = SMALL.astype(int)[None], BIG.astype(int)[None]
    result = case_metrics(pred, label, [1], spacing=(8.0, 0.5, 0.5))[1]
    assert result == pytest.approx({"dice": 8 / 40, "iou": 4 / 36, "hd95": SQRT8 / 2, "asd": 1.0})


def test_dice_per_class_agrees_with_case_metrics():
    label = np.array([[0, 1, 1], [2, 2, 0], [0, 0, 0]])
    pred = np.array([[0, 1, 0], [2, 2, 2], [0, 0, 0]])
    dice = dice_per_class(pred, label, [1, 2, 3])
    assert dice == pytest.approx({1: 2 / 3, 2: 4 / 5, 3: 1.0})
    full = case_metrics(pred, label, [1, 2, 3])
    assert dice == pytest.approx({c: m["dice"] for c, m in full.items()})


@pytest.mark.parametrize(
    "pred_shape, spacing",
    [((4, 4), None), ((4, 4, 4), (1.0, 1.0))],
)
def test_case_metrics_rejects_inconsistent_inputs(pred_shape, spacing):
    with pytest.raises(DataError):
        case_metrics(np.zeros(pred_shape, int), np.zeros((4, 4, 4), int), [1], spacing=spacing)


def random_blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A few random boxes, so shapes are irregular and not symmetric."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(3):
        lo = [rng.integers(0, s - 3) for s in shape]
        hi = [lo_i + rng.integers(2, s - lo_i) for lo_i, s in zip(lo, shape)]
        mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


@pytest.mark.parametrize(
    "shape, spacing",
    [((24, 20), None), ((24, 20), (0.7, 1.9)), ((6, 16, 14), None), ((6, 16, 14), (5.0, 0.8, 0.8))],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside MONAI's own surface code
def test_matches_monai(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    pred, label = random_blob(rng, shape), random_blob(rng, shape)
    ours = binary_metrics(pred, label, spacing)
    y_pred = torch.from_numpy(pred)[None, None].float()
    y = torch.from_numpy(label)[None, None].float()
    monai_spacing = None if spacing is None else list(spacing)
    hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=monai_spacing)
    asd = compute_average_surface_distance(y_pred, y, include_background=True, spacing=monai_spacing)
    assert ours["hd95"] == pytest.approx(float(hd95), rel=1e-5)
    assert ours["asd"] == pytest.approx(float(asd), rel=1e-5)


masks = st.lists(st.booleans(), min_size=36, max_size=36).map(lambda v: np.array(v).reshape(6, 6))


@settings(max_examples=60, deadline=None)
@given(masks, masks)
def test_metrics_symmetric_and_bounded(a, b):
    ab, ba = binary_metrics(a, b), binary_metrics(b, a)
    assert ab["dice"] == pytest.approx(ba["dice"])
    assert ab["iou"] == pytest.approx(ba["iou"])
    assert ab["hd95"] == ba["hd95"] or ab["hd95"] == pytest.approx(ba["hd95"])
    assert 0.0 <= ab["iou"] <= ab["dice"] <= 1.0


def record(case, group, rv_dice, rv_hd95, lv_dice, lv_hd95=1.0):
    return {
        "case": case,
        "group": group,
        "per_class": {
            "RV": {"dice": rv_dice, "iou": rv_dice / 2, "hd95": rv_hd95, "asd": 1.0},
            "LV": {"dice": lv_dice, "iou": lv_dice / 2, "hd95": lv_hd95, "asd": 2.0},
        },
    }


def test_summarise_means_and_missing():
    cases = [
        record("a", None, 0.8, 4.0, 0.9),
        record("b", None, 0.0, None, 0.7, 3.0),
        record("c", None, 0.4, 2.0, 0.8),
    ]
    summary = summarise(cases)
    assert summary["n_cases"] == 3
    assert summary["cases"] is cases
    rv, lv = summary["per_class"]["RV"], summary["per_class"]["LV"]
    assert rv["dice"] == pytest.approx(0.4)
    assert rv["hd95"] == pytest.approx(3.0)  # (4 + 2) / 2, the missing value ignored
    assert rv["hd95_missing"] == 1 and rv["dice_missing"] == 0
    assert lv["hd95"] == pytest.approx(5.0 / 3)
    # the mean is over classes of the per-class means
    assert summary["mean"]["dice"] == pytest.approx((0.4 + 0.8) / 2)
    assert summary["mean"]["hd95"] == pytest.approx((3.0 + 5.0 / 3) / 2)
    assert summary["mean"]["asd"] == pytest.approx(1.5)


def test_summarise_all_missing_is_none():
    summary = summarise([record("a", None, 0.0, None, 0.0, None)])
    assert summary["per_class"]["RV"]["hd95"] is None
    assert summary["mean"]["hd95"] is None


@pytest.mark.parametrize(
    "overall, groups, alpha, mode, expected",
    [
        (0.7, [0.8, 0.6], 1.0, "sum", 0.7 / 1.2),
        (0.7, [0.8, 0.6], 2.0, "sum", 0.7 / 1.4),
        (0.7, [0.8, 0.6], 1.0, "std", 0.7 / (1 + math.sqrt(0.02))),
        (0.7, [0.7, 0.7, 0.7], 1.0, "sum", 0.7),
        (0.7, [0.9], 1.0, "std", 0.7),
        (0.5, [], 1.0, "sum", 0.5),
    ],
)
def test_equity_scaled(overall, groups, alpha, mode, expected):
    assert equity_scaled(overall, groups, alpha, mode) == pytest.approx(expected)


def test_equity_scaled_rejects_unknown_mode():
    with pytest.raises(ValueError):
        equity_scaled(0.5, [0.4, 0.6], mode="max")


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0, 1),
    st.lists(st.floats(0, 1), max_size=6),
    st.floats(0, 5),
    st.sampled_from(["sum", "std"]),
)
def test_equity_scaled_never_exceeds_overall(overall, groups, alpha, mode):
    assert equity_scaled(overall, groups, alpha, mode) <= overall + 1e-12


def test_group_summary_known_values():
    cases = [
        record("a", "DCM", 0.8, 1.0, 0.8),
        record("b", "DCM", 0.8, 1.0, 0.8),
        record("c", "NOR", 0.6, 1.0, 0.6),
        record("d", None, 0.6, 1.0, 0.6),
    ]
    summary = group_summary(cases, n_boot=200)
    assert summary["mean"]["dice"] == pytest.approx(0.7)
    assert summary["missing_group"] == 1
    assert list(summary["groups"]) == ["DCM", "NOR"]
    dcm, nor = summary["groups"]["DCM"], summary["groups"]["NOR"]
    assert (dcm["n"], nor["n"]) == (2, 1)
    assert dcm["mean"]["dice"] == pytest.approx(0.8) and nor["mean"]["dice"] == pytest.approx(0.6)
    # ES over the three cases with a group: Dice (0.8 + 0.8 + 0.6)/3 = 2.2/3, spread 0.2;
    # IoU (0.4 + 0.4 + 0.3)/3 = 1.1/3, spread 0.1
    assert summary["es_dice"] == pytest.approx((2.2 / 3) / 1.2)
    assert summary["es_iou"] == pytest.approx((1.1 / 3) / 1.1)
    assert summary["worst_group_gap"] == pytest.approx(0.2)
    # constant scores within a group: the interval collapses to the value
    assert dcm["ci95"]["dice"] == pytest.approx([0.8, 0.8])
    lo, hi = summary["overall_ci95"]["dice"]
    assert 0.6 <= lo <= 0.7 <= hi <= 0.8


def test_group_summary_std_mode_and_no_groups():
    cases = [record("a", 1, 0.8, 1.0, 0.8), record("b", 2, 0.6, 1.0, 0.6)]
    assert group_summary(cases, es_mode="std", n_boot=50)["es_dice"] == pytest.approx(0.7 / (1 + math.sqrt(0.02)))
    ungrouped = group_summary([record("a", None, 0.8, 1.0, 0.8)], n_boot=50)
    assert ungrouped["groups"] == {} and ungrouped["missing_group"] == 1
    assert ungrouped["es_dice"] is None and ungrouped["worst_group_gap"] is None


def test_bootstrap_is_deterministic_and_seeded():
    rng = np.random.default_rng(7)
    cases = [record(str(i), i % 3, float(d), 1.0, float(d)) for i, d in enumerate(rng.uniform(0.3, 0.9, 30))]
    first, again = group_summary(cases, seed=3), group_summary(cases, seed=3)
    assert first["overall_ci95"] == again["overall_ci95"]
    assert first["groups"]["0"]["ci95"] == again["groups"]["0"]["ci95"]
    assert group_summary(cases, seed=4)["overall_ci95"] != first["overall_ci95"]
    lo, hi = first["overall_ci95"]["dice"]
    assert lo < first["mean"]["dice"] < hi


def test_wilcoxon_known_answer():
    # five positive, distinct differences: W- = 0, exact two-sided p = 2 / 2**5
    a = {f"c{i}": 0.8 + 0.01 * i for i in range(5)} | {"only_a": 0.1}
    b = {f"c{i}": 0.7 for i in range(5)} | {"only_b": 0.9}
    result = wilcoxon_compare(a, b, n_comparisons=3)
    assert result["n"] == 5
    assert result["median_diff"] == pytest.approx(0.12)
    assert result["statistic"] == 0.0
    assert result["p"] == pytest.approx(0.0625)
    assert result["p_bonferroni"] == pytest.approx(0.1875)
    assert wilcoxon_compare(a, b, n_comparisons=20)["p_bonferroni"] == 1.0


def test_wilcoxon_identical_runs():
    scores = {"a": 0.5, "b": 0.6, "c": 0.7}
    assert wilcoxon_compare(scores, dict(scores))["p"] == 1.0


def test_wilcoxon_needs_two_paired_cases():
    with pytest.raises(FewsamError):
        wilcoxon_compare({"a": 0.5, "b": 0.6}, {"a": 0.4, "c": 0.3})
