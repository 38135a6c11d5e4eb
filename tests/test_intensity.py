"""Intensity scaling before the encoder: percentile clipping keeps one bright artefact from setting
the range, and a clipped and an unclipped model never share embeddings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fewsam.cache import model_signature
from fewsam.data.intensity import CLIP_PERCENTILES, clip_to_percentiles
from fewsam.models.registry import build_model
from fewsam.models.sam import Preprocessing


def heart_with_hot_pixel(hot: float) -> np.ndarray:
    """A mid-grey disc on a dark field, and one corner pixel ``hot`` times brighter than the disc."""
    yy, xx = np.mgrid[:96, :96]
    image = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 20**2, 100.0, 10.0).astype(np.float32)
    image[0, 0] = 100.0 * hot
    return image


def test_a_bright_artefact_no_longer_darkens_the_anatomy() -> None:
    model = build_model("litemedsam")
    image = heart_with_hot_pixel(6.0)
    unclipped = dataclasses.replace(model.preprocessing, clip_percentiles=None)
    clipped = dataclasses.replace(model.preprocessing, clip_percentiles=CLIP_PERCENTILES)
    model.preprocessing = unclipped
    plain, _ = model.preprocess(image)
    model.preprocessing = clipped
    robust, _ = model.preprocess(image)
    centre = (0, 128, 128)
    assert float(plain[centre]) < 0.2  # min-max: the disc sits in the bottom sixth
    assert float(robust[centre]) == pytest.approx(1.0, abs=1e-3)  # clipped: the disc is the brightest


def test_clipping_is_part_of_the_preprocessing_signature_and_the_cache_key() -> None:
    model = build_model("litemedsam")
    with_clip = dataclasses.replace(model.preprocessing, clip_percentiles=(0.5, 99.5))
    without = dataclasses.replace(model.preprocessing, clip_percentiles=None)
    assert "clip=0.5-99.5" in with_clip.signature() and "clip" not in without.signature()
    model.preprocessing = with_clip
    clipped_key = model_signature(model)
    model.preprocessing = without
    assert model_signature(model) != clipped_key


def test_none_and_flat_images_pass_unchanged() -> None:
    image = heart_with_hot_pixel(6.0)
    assert clip_to_percentiles(image, None) is image
    flat = np.zeros((32, 32), np.float32)
    flat[3, 3] = 1.0  # 99.5th percentile is still 0: the one bright pixel is kept
    assert np.array_equal(clip_to_percentiles(flat, CLIP_PERCENTILES), flat)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(2, 40), st.integers(2, 40)),
              elements=st.floats(-1e4, 1e4, width=32)))
def test_clipping_keeps_order_and_bounds(image: np.ndarray) -> None:
    out = clip_to_percentiles(image, CLIP_PERCENTILES)
    lo, hi = np.percentile(image, CLIP_PERCENTILES)
    assert out.shape == image.shape
    if hi > lo:
        assert out.min() >= lo and out.max() <= hi
    order = np.argsort(image, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)  # monotone: never swaps two intensities


def test_default_preprocessing_clips() -> None:
    assert Preprocessing(256, "unit").clip_percentiles == CLIP_PERCENTILES
