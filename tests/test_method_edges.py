"""The methods on data unlike ACDC: labelled budgets without foreground or without a class,
validation cases without labels or without foreground. Each is refused (or said) before any
training, with the reason, instead of a fit that cannot learn or cannot select a model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fewsam import api, progress
from fewsam.errors import DataError
from fewsam.methods.fewshot import FewShotConfig
from fewsam.methods.student import check_labelled_classes
from fewsam.methods.supervised import SupervisedConfig
from fewsam.models import registry

REAL_LOAD_MODEL = registry.load_model  # the fixture below stands it in for every other test
TINY_STUDENT = SupervisedConfig(image_size=16, channels=(4, 8), num_res_units=0, batch_size=2, steps=1,
                                val_every=1)


def _nnunet(root: Path, labels: list[np.ndarray | None], values: tuple[int, ...] = (1, 2)) -> Path:
    """An nnU-Net raw folder of 2-slice 16x16 cases c0..cN (None: no label file); the last two
    cases are the validation split."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(len(labels))]
    for name, label in zip(names, labels):
        image = rng.normal(100, 20, (2, 16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), np.eye(4)), root / "imagesTr" / f"{name}_0000.nii.gz")
        if label is not None:
            nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), np.eye(4)), root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, **{f"k{v}": v for v in values}},
        "numTraining": len(names), "file_ending": ".nii.gz"}))
    (root / "splits_final.json").write_text(json.dumps([{"train": names[:-2], "val": names[-2:]}]))
    return root


def _label(*values: int) -> np.ndarray:
    """A (2, 16, 16) label with one 4x4 square per value."""
    label = np.zeros((2, 16, 16), np.uint8)
    for i, value in enumerate(values):
        label[:, 2:6, 2 + 5 * i:6 + 5 * i] = value
    return label


def _no_weights(*args, **kwargs):
    raise AssertionError("a SAM model was loaded")


@pytest.fixture(autouse=True)
def one_thread_no_sam(monkeypatch):
    """Every fit here is refused before SAM is needed (or needs none); fresh notices per test."""
    monkeypatch.setattr(registry, "load_model", _no_weights)
    monkeypatch.setattr(progress, "_said", {})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _options(data: Path, tmp_path: Path, **budget) -> api.FitOptions:
    return api.FitOptions(data=data, run=tmp_path / "run", cache=str(tmp_path / "cache"), show_progress=False,
                          **(budget or {"labeled_cases": 1}))


# --- the labelled budget of the U-Net students --------------------------------------------------

def test_student_refuses_labelled_slices_without_any_foreground(tmp_path):
    data = _nnunet(tmp_path / "d", [_label(), _label(1, 2), _label(1, 2), _label(1, 2)])
    with pytest.raises(DataError, match=r"student's 16x16 input\) contain no pixel of class\(es\) \[1, 2\]"):
        api.fit("supervised", _options(data, tmp_path), TINY_STUDENT)
    assert not (tmp_path / "run" / "checkpoint_best.pt").exists()


def test_student_says_which_classes_the_labelled_slices_never_show(tmp_path):
    data = _nnunet(tmp_path / "d", [_label(1), _label(1, 2), _label(1, 2), _label(1, 2)], values=(1, 2))
    api.fit("supervised", _options(data, tmp_path), TINY_STUDENT)
    notes = [note for note in progress.said() if "no pixel of class" in note]
    assert notes == [notes[0]] and "[2]" in notes[0] and "[1" not in notes[0]


def test_check_labelled_classes_on_indices_of_non_contiguous_values():
    """values (0, 1, 4) are indices 0, 1, 2 in the student frame: index 2 present means 4 is shown."""
    labels = torch.zeros(1, 4, 4, dtype=torch.uint8)
    labels[0, 0, 0] = 2
    check_labelled_classes(labels, [0, 1, 4])
    assert [note for note in progress.said() if "[1]" in note]
    with pytest.raises(DataError, match=r"\[1, 4\]"):
        check_labelled_classes(torch.zeros(1, 4, 4, dtype=torch.uint8), [0, 1, 4])


# --- the validation cases ---------------------------------------------------------------------

@pytest.mark.parametrize("method, config", [("fewshot", FewShotConfig(steps=1)), ("supervised", TINY_STUDENT)])
def test_validation_cases_without_label_files_are_refused_before_any_work(tmp_path, method, config):
    """few-shot SAM used to embed and train, then fail at the first validation with
    'prediction shape ... differs from label shape ()'."""
    data = _nnunet(tmp_path / "d", [_label(1, 2), _label(1, 2), None, None])
    with pytest.raises(DataError, match=r"c2, c3 of .* have no label to select the model on; give --val-split"):
        api.fit(method, _options(data, tmp_path), config)
    assert not (tmp_path / "run" / "config.json").exists()


def test_validation_labels_without_foreground_are_refused(tmp_path):
    """All-background validation labels score an empty prediction as Dice 1: selection is meaningless."""
    data = _nnunet(tmp_path / "d", [_label(1, 2), _label(1, 2), _label(), _label()])
    with pytest.raises(DataError, match="validation cases' labels contain no foreground pixel"):
        api.fit("supervised", _options(data, tmp_path), TINY_STUDENT)
    assert not (tmp_path / "run" / "checkpoint_best.pt").exists()


def test_validation_on_labelled_cases_is_said_once_and_allowed(tmp_path):
    """--val-split all (or train) selects the model on its own training cases: allowed, but said."""
    data = _nnunet(tmp_path / "d", [_label(1, 2), _label(1, 2), _label(1), _label(2)])
    api.fit("supervised", _options(data, tmp_path), TINY_STUDENT)
    assert not [note for note in progress.said() if "also labelled" in note]
    options = api.FitOptions(data=data, run=tmp_path / "run_all", cache=str(tmp_path / "cache"), show_progress=False,
                             labeled_cases=1, val_split="all")
    api.fit("supervised", options, TINY_STUDENT)
    notes = [note for note in progress.said() if "also labelled" in note]
    assert len(notes) == 1 and "1 of the 4 validation cases (c0)" in notes[0]


def test_one_validation_case_with_foreground_is_enough(tmp_path):
    data = _nnunet(tmp_path / "d", [_label(1, 2), _label(1, 2), _label(), _label(2)])
    result = api.fit("supervised", _options(data, tmp_path), TINY_STUDENT)
    assert result.best_step == 1 and 0.0 <= result.best_score <= 1.0


# --- image shapes the SAM frame must hold -------------------------------------------------------

def test_resized_shape_keeps_a_row_of_a_long_strip():
    from fewsam.models.sam import resized_hw

    assert resized_hw(1, 600, 256) == (1, 256)
    assert resized_hw(3000, 2, 1024) == (1024, 1)
    assert resized_hw(40, 600, 256) == (17, 256)  # ordinary shapes round as segment-anything does


def test_a_one_row_strip_goes_through_the_sam_frame_and_back():
    """A 1 x 600 slice: LiteMedSAM's 256 frame used to resize it to 0 rows (a RuntimeError)."""
    from fewsam.embedded import frame_label
    from fewsam.labels import IGNORE
    from fewsam.models.sam import postprocess_logits

    model = REAL_LOAD_MODEL("litemedsam")  # the real preprocessing is what is under test
    image = np.random.default_rng(0).random((1, 600)).astype(np.float32)
    x, info = model.preprocess(image)
    assert x.shape == (3, 256, 256) and info.resized_hw == (1, 256)
    label = np.zeros((1, 600), np.uint8)
    label[0, 100:300] = 1
    framed = frame_label(label, info)
    assert framed[0, 50] == 1 and framed[0, 10] == 0 and (framed[1:] == IGNORE).all()
    assert postprocess_logits(torch.zeros(1, 2, 64, 64), info).shape == (1, 2, 1, 600)


# --- numbers out of range -----------------------------------------------------------------------

def test_an_image_spanning_more_than_float32s_range_scales_to_finite_values():
    """A no-data fill of -3e38 beside +3e38: max - min overflowed to inf and the student's input was NaN."""
    from fewsam.data.intensity import scale_to_unit
    from fewsam.methods.student import student_image

    image = np.full((16, 16), 100.0, np.float32)
    image[0, 0], image[1, 1] = -3e38, 3e38
    scaled = scale_to_unit(torch.from_numpy(image))
    assert torch.isfinite(scaled).all() and float(scaled.min()) == 0.0 and float(scaled.max()) == 1.0
    assert torch.isfinite(student_image(image, 8)).all()
    ordinary = torch.from_numpy(np.random.default_rng(0).normal(-700, 300, (3, 32, 32)).astype(np.float32))
    lo, hi = ordinary.min(), ordinary.max()
    assert torch.equal(scale_to_unit(ordinary), (ordinary - lo) / (hi - lo))  # bit-identical: caches stay valid


class _LossAt:
    """A one-weight task whose loss turns NaN at step ``bad``."""

    def __init__(self, bad: int) -> None:
        self.module, self.bad = torch.nn.Linear(1, 1), bad

    def training_loss(self, rng, step):
        loss = self.module(torch.ones(1, 1)).sum() ** 2
        return (loss * float("nan") if step == self.bad else loss), {}

    def validate(self):
        return {"score": 0.0}


def test_a_nan_loss_stops_the_fit_before_it_reaches_the_weights(tmp_path):
    from fewsam.errors import RunError
    from fewsam.train import TrainConfig, train

    task = _LossAt(bad=2)
    with pytest.raises(RunError, match=r"training loss is nan at step 3; nothing of this step was applied"):
        train(task, TrainConfig(steps=5, lr=0.1, val_every=1, warmup_steps=0), tmp_path / "run", show_progress=False)
    assert all(torch.isfinite(p).all() for p in task.module.parameters())
    last = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=False)
    assert last["state"]["step"] == 2  # the resume state is the last finite step's


@pytest.mark.parametrize("size, says", [(33, "multiple of 16 (the U-Net halves it 4 times), not 33; e.g. 32"),
                                        (200, "not 200; e.g. 208")])
def test_a_student_image_size_the_unet_cannot_halve_is_refused_before_any_work(size, says):
    from fewsam.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)):
        SupervisedConfig(image_size=size)
    assert SupervisedConfig(image_size=48).image_size == 48
