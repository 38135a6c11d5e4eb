"""Round 8: what fewsam writes and how it names and finds files.

- A run fitted on 2D PNG masks coded 0/1 wrote 0/255 predictions for a folder of new, unlabelled
  images (no masks to show their coding): the run now keeps its masks' coding in config.json and
  a folder without masks or classes.json is written in it; a folder with masks keeps its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fewsam import api
from fewsam.data.phantom import phantom_volume
from fewsam.methods import supervised
from fewsam.predict import predict

TINY_STUDENT = dict(image_size=32, channels=(4, 8, 16, 32), num_res_units=1, batch_size=1, steps=1, val_every=1)


def write_png_folder(root: Path, n: int, foreground: int | None) -> Path:
    """``n`` phantom slices as images/caseI.png; with ``foreground``, masks/caseI.png holding the LV
    as that pixel value on 0."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        image, label = phantom_volume(rng, 1, (40, 48))
        Image.fromarray((image[0] * 255).astype(np.uint8)).save(root / "images" / f"case{i}.png")
        if foreground is not None:
            (root / "masks").mkdir(exist_ok=True)
            mask = ((label[0] == 3) * foreground).astype(np.uint8)
            Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


def fit_tiny_student(data: Path, run: Path) -> Path:
    opts = api.FitOptions(data=data, run=run, labeled_cases=1, cache=str(run.parent / "cache"), show_progress=False)
    api.fit("supervised", opts, supervised.SupervisedConfig(**TINY_STUDENT))
    return run


def test_a_run_fitted_on_zero_one_masks_writes_new_images_predictions_as_zero_one(tmp_path):
    run = fit_tiny_student(write_png_folder(tmp_path / "data", 5, foreground=1), tmp_path / "run")
    new = write_png_folder(tmp_path / "new", 2, foreground=None)
    written = predict(run, new, tmp_path / "pred", split="all", show_progress=False)
    assert len(written) == 2
    for path in written:
        assert set(np.unique(np.asarray(Image.open(path)))) <= {0, 1}
    assert json.loads((run / "config.json").read_text())["mask_coding"]["to_pixel"] == {"0": 0, "1": 1}
    # a folder with masks of its own (0/255) keeps its own coding
    from fewsam.predict import open_for_run

    own = write_png_folder(tmp_path / "own", 3, foreground=255)
    written = predict(run, own, tmp_path / "pred_own", split="all", show_progress=False)
    values = set().union(*(np.unique(np.asarray(Image.open(p))).tolist() for p in written))
    assert values <= {0, 255} and open_for_run(own, json.loads((run / "config.json").read_text())
                                               ).style.to_pixel == {0: 0, 1: 255}
