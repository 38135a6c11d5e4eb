"""Augmented copies of labelled slices: what the decoder trains on beside the dihedral views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fewsam.augment import SliceAugmentation, augment_slice, augmented_case, slice_rng
from fewsam.data.types import Case

ALWAYS = SliceAugmentation(p_spatial=1.0, p_gamma=1.0, p_noise=1.0, p_blur=1.0, p_low_resolution=1.0)
NEVER = SliceAugmentation(p_spatial=0.0, p_gamma=0.0, p_noise=0.0, p_blur=0.0, p_low_resolution=0.0)


def disk_slice(h: int = 64, w: int = 48, value: int = 3) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2
    image = np.where(inside, 200.0, 20.0).astype(np.float32) + np.linspace(0, 10, w, dtype=np.float32)
    return image, (inside * value).astype(np.uint8)


def test_same_slice_same_seed_same_copy() -> None:
    image, label = disk_slice()
    a = augment_slice(image, label, slice_rng(0, 1, "p1", 2), ALWAYS)
    b = augment_slice(image, label, slice_rng(0, 1, "p1", 2), ALWAYS)
    c = augment_slice(image, label, slice_rng(0, 2, "p1", 2), ALWAYS)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_nothing_drawn_leaves_the_slice_unchanged() -> None:
    image, label = disk_slice()
    out, out_label = augment_slice(image, label, slice_rng(0, 0, "p", 0), NEVER)
    assert np.allclose(out, image, atol=1e-4) and np.array_equal(out_label, label)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), value=st.sampled_from([1, 3, 255]))
def test_label_values_kept_and_shapes_unchanged(seed: int, value: int) -> None:
    image, label = disk_slice(value=value)
    out, out_label = augment_slice(image, label, slice_rng(seed, 0, "p", 0), ALWAYS)
    assert out.shape == image.shape and out_label.shape == label.shape
    assert set(np.unique(out_label)) <= {0, value}
    assert np.isfinite(out).all()


def test_spatial_transform_moves_image_and_label_together() -> None:
    """The label still covers the bright disk after rotation and scaling."""
    image, label = disk_slice()
    spatial_only = SliceAugmentation(p_spatial=1.0, p_gamma=0.0, p_noise=0.0, p_blur=0.0, p_low_resolution=0.0)
    for copy in range(5):
        out, out_label = augment_slice(image, label, slice_rng(0, copy, "p", 0), spatial_only)
        assert out_label.any()
        assert out[out_label > 0].mean() > 150 > out[out_label == 0].mean()


def test_what_comes_from_outside_is_background() -> None:
    image, label = disk_slice()
    shrink = SliceAugmentation(scale=(0.5, 0.5), rotate_deg=0.0, p_spatial=1.0, p_gamma=0.0, p_noise=0.0,
                               p_blur=0.0, p_low_resolution=0.0)
    out, out_label = augment_slice(image, label, slice_rng(0, 0, "p", 0), shrink)
    assert out_label[0, 0] == 0 and out[0, 0] == image.min()
    assert out_label.sum() < label.sum()


def test_colour_slices_keep_their_channels() -> None:
    image, label = disk_slice()
    rgb = np.stack([image, image * 0.5, image * 0.25], axis=-1)
    out, out_label = augment_slice(rgb, label, slice_rng(0, 0, "p", 0), ALWAYS)
    assert out.shape == rgb.shape and out_label.shape == label.shape


def test_a_constant_image_stays_constant() -> None:
    label = np.zeros((32, 32), np.uint8)
    image = np.full((32, 32), 7.0, np.float32)
    out, _ = augment_slice(image, label, slice_rng(0, 0, "p", 0), ALWAYS)
    assert np.allclose(out, 7.0)


def test_augmented_case_replaces_every_slice() -> None:
    image, label = disk_slice()
    case = Case("p1", np.stack([image, image]), np.stack([label, label]), "nifti", "p1.nii.gz")
    out = augmented_case(case, seed=0, copy=3)
    assert out.image.shape == case.image.shape and out.label.dtype == case.label.dtype
    assert not np.array_equal(out.image[0], out.image[1])  # each slice draws its own transform


def _cache_entries(cache: Path) -> set[str]:
    return {p.name for p in cache.rglob("*.npy")} | {p.name for p in cache.rglob("*.npz")}


def test_fit_trains_on_augmented_copies_deterministically(tiny_sam_phantom, tmp_path) -> None:
    """--augmented-views K encodes K more images per labelled slice (cached as any slice) and two fits
    of one seed keep identical weights; few-shot SAM makes 8 by default, FewMatch none."""
    from fewsam.methods.fewmatch import FewMatchConfig
    from fewsam.methods.fewshot import FewShotConfig

    assert FewShotConfig().augmented_views == 8 and FewMatchConfig().augmented_views == 0
    from conftest import fit_twice_identically

    base = ["fit", "fewshot", "--data", str(tiny_sam_phantom), "--labeled-slices", "2", "--views", "1",
            "--steps", "2", "--val-every", "2", "--batch-size", "2", "--quiet", "--precision", "fp32",
            "--no-test-mirroring", "--no-sam-refinement"]
    plain, augmented = tmp_path / "plain", tmp_path / "augmented"
    import torch

    plain_run, _ = fit_twice_identically([*base, "--cache", str(plain / "cache"), "--augmented-views", "0"], plain)
    augmented_run, _ = fit_twice_identically([*base, "--cache", str(augmented / "cache"), "--augmented-views", "3"],
                                             augmented)
    assert len(_cache_entries(augmented / "cache")) == len(_cache_entries(plain / "cache")) + 2 * 3
    weights = [torch.load(run / "checkpoint_best.pt", weights_only=True)["module"] for run in (plain_run, augmented_run)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the copies were trained on
