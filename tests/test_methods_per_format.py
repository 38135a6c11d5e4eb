"""Every method run end to end on each kind of data, as a user with their own dataset would: the
faults that run found.

- A plain NIfTI folder with one labelled volume beside unlabelled ones (its unlabelled images are
  the "test" split): the semi-supervised methods had no unlabelled pool, said to label fewer
  cases, and refused ``--unlabeled-split test``; the unlabelled images now join the pool when
  named, and the empty-pool error names the split that holds them.
- A one-class run (a "lesion" model) predicting a folder of new, unlabelled 2D images: refused
  until the user wrote a classes.json, as the folder's one class is called "foreground"; it is
  now taken as the run's class and written in the folder's 0/255 coding.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_fewsam, write_lv_png_folder
from PIL import Image

from fewsam import api
from fewsam.data import open_dataset, select_labelled, select_unlabelled
from fewsam.data.phantom import phantom_volume
from fewsam.errors import DataError
from fewsam.methods import supervised
from fewsam.predict import predict


def write_one_labelled_nifti(root: Path, unlabelled: int = 2, slices: int = 2) -> Path:
    """images/case0..N (+ labels/case0 only): one labelled volume and ``unlabelled`` without labels."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(1 + unlabelled):
        image, label = phantom_volume(rng, slices, (48, 56))
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), np.eye(4)), root / "images" / f"case{i}.nii.gz")
        if i == 0:
            nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), np.eye(4)), root / "labels" / f"case{i}.nii.gz")
    return root


def test_unlabelled_images_outside_training_join_the_pool_when_named(tmp_path):
    dataset = open_dataset(write_one_labelled_nifti(tmp_path / "data"))
    labelled = select_labelled(dataset, n_cases=1)
    pool = select_unlabelled(dataset, labelled, None, 0, split="test")
    assert [(r.case_id, r.z) for r in pool] == [("case1", 0), ("case1", 1), ("case2", 0), ("case2", 1)]


def test_empty_pool_names_the_split_holding_the_unlabelled_images(tmp_path):
    dataset = open_dataset(write_one_labelled_nifti(tmp_path / "data"))
    with pytest.raises(DataError, match="2 case\\(s\\) without a label .* --unlabeled-split test"):
        select_unlabelled(dataset, select_labelled(dataset, n_cases=1), None, 0)


def test_semi_supervised_fit_learns_from_one_labelled_volume_and_unlabelled_ones(tmp_path):
    data = write_one_labelled_nifti(tmp_path / "data")
    fit = ["fit", "samatch", "--no-sam", "--data", str(data), "--val-split", "train", "--labeled-cases", "1",
           "--steps", "1", "--val-every", "1", "--image-size", "32", "--batch-size", "1", "--unlabeled-batch", "1",
           "--precision", "fp32", "--quiet", "--out", str(tmp_path / "run")]
    refused = run_fewsam(*fit, cwd=tmp_path)  # stderr also holds the note that val is the labelled case
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error:") and "--unlabeled-split test" in refused.stderr
    result = run_fewsam(*fit, "--unlabeled-split", "test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def write_png_images(root: Path, n: int, label_name: str | None) -> Path:
    """``n`` phantom slices as images/caseI.png; with ``label_name``, 0/255 masks of the LV in
    masks/ and a classes.json naming that one class."""
    write_lv_png_folder(root, n, None if label_name is None else 255)
    if label_name is not None:
        (root / "classes.json").write_text(f'{{"1": "{label_name}"}}')
    return root


def test_one_class_run_predicts_a_folder_of_new_images_without_a_classes_json(tmp_path):
    data = write_png_images(tmp_path / "data", 5, "lesion")
    opts = api.FitOptions(data=data, run=tmp_path / "run", labeled_cases=1, cache=str(tmp_path / "cache"),
                          show_progress=False)
    api.fit("supervised", opts, supervised.SupervisedConfig(
        image_size=32, channels=(4, 8, 16, 32), num_res_units=1, batch_size=1, steps=1, val_every=1))
    new = write_png_images(tmp_path / "new", 2, None)
    written = predict(tmp_path / "run", new, tmp_path / "pred", split="all", show_progress=False)
    assert len(written) == 2
    assert set(np.unique(np.asarray(Image.open(written[0])))) <= {0, 255}
