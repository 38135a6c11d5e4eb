import numpy as np
import pytest

from fewsam.models.sam import PreprocessInfo
from fewsam.prompts import (box_from_mask, largest_component, masked_average_pool, point_from_mask,
                            region_weights, to_model_frame)

INFO = PreprocessInfo((100, 200), (128, 256), 256)  # scale 1.28 in both axes


def test_box_scales_to_model_frame():
    mask = np.zeros((100, 200), bool)
    mask[10:20, 50:100] = True
    np.testing.assert_allclose(box_from_mask(mask, INFO), [50 * 1.28, 10 * 1.28, 100 * 1.28, 20 * 1.28])
    np.testing.assert_allclose(box_from_mask(mask, INFO, margin=5), [45 * 1.28, 5 * 1.28, 105 * 1.28, 25 * 1.28])


def test_empty_class_gets_no_prompt():
    empty = np.zeros((100, 200), bool)
    assert box_from_mask(empty, INFO) is None and point_from_mask(empty, INFO) is None


def test_point_is_inside_a_ring():
    yy, xx = np.mgrid[:100, :200]
    r = np.hypot(yy - 50, xx - 100)
    ring = (r > 20) & (r < 30)
    x, y = point_from_mask(ring, INFO) / 1.28 - 0.5
    assert ring[int(round(y)), int(round(x))]


def test_largest_component_keeps_biggest():
    mask = np.zeros((20, 20), bool)
    mask[0:3, 0:3] = True
    mask[10:18, 10:18] = True
    assert largest_component(mask).sum() == 64


def test_model_frame_pads_bottom_right():
    label = np.ones((100, 200), np.uint8)
    framed = to_model_frame(label, INFO)
    assert framed.shape == (256, 256) and framed[:128].all() and not framed[128:].any()


def test_masked_average_pool_known_values():
    emb = np.zeros((2, 4, 4), np.float32)
    emb[0, :2] = 1.0  # top half channel 0 = 1
    emb[1] = np.arange(16).reshape(4, 4)
    weights = np.zeros((2, 4, 4), np.float32)
    weights[0, :2] = 1
    protos = masked_average_pool(emb, weights)
    np.testing.assert_allclose(protos[0], [1.0, np.arange(8).mean()])
    assert np.isnan(protos[1]).all()


def test_region_weights_keep_thin_structures():
    label = np.zeros((256, 256), np.uint8)
    label[100, :] = 2  # one pixel thick: covers no 4x4 cell centre
    w = region_weights(label, [0, 2])
    assert w[1].sum() == pytest.approx(256 / 16)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)


def test_click_prompts_positive_then_negatives_padded_in_a_batch():
    from fewsam.prompts import click_prompts, stack_clicks

    info = PreprocessInfo((20, 20), (40, 40), 40)  # twice the original size in SAM's frame
    own, other, absent = (np.zeros((20, 20), bool) for _ in range(3))
    own[2:5, 2:5], other[10:13, 14:17] = True, True
    pts, labels = click_prompts(own, [other, absent], info, "contrast")  # an empty mask gives no click
    np.testing.assert_allclose(pts, [[7, 7], [31, 23]])  # deepest pixels (3, 3) and (15, 11), x2 + 1
    np.testing.assert_array_equal(labels, [1, 0])
    lone = click_prompts(own, [other], info, "positive")
    points, batch_labels = stack_clicks([(pts, labels), lone])
    assert points.shape == (2, 2, 2)
    np.testing.assert_array_equal(batch_labels.numpy(), [[1, 0], [1, -1]])
    with pytest.raises(ValueError):
        click_prompts(own, [], info, "negative")
