"""The box-wise contour fill of RT structure sets against a plain fill of the whole plane.

``filled_box`` counts edge crossings only within the rows and columns the contours span; the reference
here tests every voxel centre of the plane against every edge by the same rule (a centre on a left or
top edge in, on a right or bottom edge out; several contours even-odd). Vertices are drawn on voxel
centres, on voxel borders, anywhere, and beyond the plane, so edges run through centres and along rows."""

from __future__ import annotations

import numpy as np
import pytest

from fewsam.data.readers.dicom_rtstruct import INDEX_DECIMALS, filled, filled_box

HEIGHT, WIDTH = 23, 31


def plane_fill(contours: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Each centre (c, r) is in where the edges crossing its row at or left of it are odd in number: an
    edge crosses row r where ceil(low) <= r < ceil(high) of its ends' rows."""
    inside = np.zeros((height, width), dtype=bool)
    columns = np.arange(width)
    for points in contours:
        for (x0, y0), (x1, y1) in zip(points, np.roll(points, -1, axis=0)):
            for r in range(height):
                if np.ceil(min(y0, y1)) <= r < np.ceil(max(y0, y1)):
                    x = np.round(x0 + (r - y0) * (x1 - x0) / (y1 - y0), INDEX_DECIMALS)
                    inside[r] ^= columns >= x
    return inside


def random_polygon(rng: np.random.Generator, kind: str) -> np.ndarray:
    """3 to 12 vertices: on voxel centres (integers), on borders (x.5), anywhere, or partly off the plane."""
    n = int(rng.integers(3, 13))
    if kind == "centres":
        return rng.integers(-2, [WIDTH + 2, HEIGHT + 2], (n, 2)).astype(np.float64)
    if kind == "borders":
        return rng.integers(-2, [WIDTH + 2, HEIGHT + 2], (n, 2)) + 0.5
    if kind == "beyond":
        return np.round(rng.uniform(-15, [WIDTH + 15, HEIGHT + 15], (n, 2)), INDEX_DECIMALS)
    return np.round(rng.uniform(0, [WIDTH, HEIGHT], (n, 2)), INDEX_DECIMALS)


@pytest.mark.parametrize("kind", ["centres", "borders", "anywhere", "beyond", "mixed"])
def test_box_fill_equals_a_fill_of_the_whole_plane_on_random_polygons(kind):
    rng = np.random.default_rng(sum(map(ord, kind)))
    kinds = ["centres", "borders", "anywhere", "beyond"]
    for _ in range(150):
        count = int(rng.integers(1, 4))
        contours = [random_polygon(rng, kind if kind != "mixed" else kinds[int(rng.integers(4))])
                    for _ in range(count)]
        expected = plane_fill(contours, HEIGHT, WIDTH)
        box = filled_box(contours, HEIGHT, WIDTH)
        placed = np.zeros((HEIGHT, WIDTH), dtype=bool)
        placed[box.rows, box.columns] = box.voxels
        assert np.array_equal(placed, expected)
        assert np.array_equal(filled(contours, HEIGHT, WIDTH), expected)


def test_a_square_on_voxel_centres_covers_its_area_within_its_box():
    """Corners on centres (2, 3) and (6, 8): the left and top edges' centres in, the right and bottom out."""
    box = filled_box([np.array([[2.0, 3.0], [6.0, 3.0], [6.0, 8.0], [2.0, 8.0]])], HEIGHT, WIDTH)
    assert (box.top, box.left) == (3, 2) and box.voxels.shape == (5, 4) and box.voxels.all()
