"""nnU-Net's "ignore" label (sparse annotation: scribbles, a few slices painted, the rest marked
unannotated): its voxels are no class, no loss learns from them and no score counts them; the methods
that can learn from partial labels fit on them, SAM-Match fine-tunes SAM on the wholly annotated labelled
slices and refuses, in one line, labels with none."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import assert_one_line_error, run_fewsam
from test_resume_every_method import POOL, REFERENCE, STUDENT, TRAINED, fit_command, invoke
from test_wide_label_values import framed_slice
from fewsam import progress
from fewsam.cli import app
from fewsam.data import open_dataset, write_prediction
from fewsam.data.phantom import phantom_volume
from fewsam.data.types import ClassMap, SliceRef
from fewsam.errors import DataError
from fewsam.evaluate import evaluate
from fewsam.fitting import FitContext
from fewsam.info import dataset_info, describe
from fewsam.labels import IGNORE, holds_class, value_lut
from fewsam.methods.fewshot import remap_labels
from fewsam.methods.samatch import pooled_dice, sam_training_slices
from fewsam.methods.samatch.sam_decoder import val_slice_refs
from fewsam.methods.student import PoolTruth, load_slices
from fewsam.metrics import case_metrics, volume_score

UNANNOTATED = 4
LABELS = {"background": 0, "RV": 1, "Myo": 2, "LV": 3, "ignore": UNANNOTATED}
CLASSES_ONLY = {"background": 0, "RV": 1, "Myo": 2, "LV": 3}


def sparse(label: np.ndarray) -> np.ndarray:
    """The phantom's label with the right half of every slice left unannotated (its anatomy included)."""
    out = label.copy()
    out[..., label.shape[-1] // 2:] = UNANNOTATED
    return out


def second_slice_sparse(label: np.ndarray) -> np.ndarray:
    """The phantom's label with the right half of its second slice left unannotated: the first stays whole."""
    out = label.copy()
    out[1:, :, label.shape[-1] // 2:] = UNANNOTATED
    return out


def write_nnunet_sparse(root: Path, cases: int = 4, labels: dict | None = None,
                        unannotated: Callable[[np.ndarray], np.ndarray] = sparse) -> Path:
    """imagesTr/ + labelsTr/ + dataset.json of phantom volumes whose labels ``unannotated`` marks (by
    default: each slice annotated on its left half)."""
    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        image, label = phantom_volume(rng, 2, (40, 48))
        for path, array in ((root / "imagesTr" / f"case{i}_0000.nii.gz", (image * 1000).astype(np.float32)),
                            (root / "labelsTr" / f"case{i}.nii.gz", unannotated(label).astype(np.uint8))):
            nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.diag([1.5, 1.5, 5.0, 1.0])), path)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels or LABELS,
                                                   "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


# ------------------------------------------------------------------------------------------ reading


def test_the_ignore_label_is_the_unannotated_value_not_a_class(tmp_path):
    dataset = open_dataset(write_nnunet_sparse(tmp_path))
    assert dataset.class_map.names == {1: "RV", 2: "Myo", 3: "LV"}
    assert dataset.class_map.ignore == UNANNOTATED
    case = dataset.load("case0")
    assert case.ignore == UNANNOTATED and UNANNOTATED in np.unique(case.label)
    assert "ignore   4 (unannotated pixels" in describe(dataset_info(tmp_path))


def test_region_based_labels_may_have_an_ignore_label(tmp_path):
    labels = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3, "ignore": UNANNOTATED}
    dataset = open_dataset(write_nnunet_sparse(tmp_path, labels=labels))
    assert dataset.class_map.labels == [1, 2, 3] and dataset.class_map.ignore == UNANNOTATED


@pytest.mark.parametrize("ignore, message", [
    (2, "the 'ignore' label's value 2 is also the class 'Myo'"),
    (0, "the 'ignore' label cannot be 0, the background"),
    ([4, 5], "the 'ignore' label must be one integer label value"),
    (True, "the 'ignore' label must be one integer label value"),
    (70000, "labels entry 'ignore' has value 70000"),
], ids=["a-class", "background", "list", "bool", "beyond-16-bits"])
def test_an_ignore_label_fewsam_cannot_tell_from_the_classes_is_one_error_line(tmp_path, ignore, message):
    data = write_nnunet_sparse(tmp_path / "data", cases=1, labels={**LABELS, "ignore": ignore})
    assert_one_line_error(run_fewsam("info", str(data), cwd=tmp_path), message)


def test_label_files_may_hold_only_classes_and_the_ignore_value(tmp_path):
    data = write_nnunet_sparse(tmp_path, cases=1)
    path = data / "labelsTr" / "case0.nii.gz"
    label = np.asarray(nib.load(str(path)).dataobj).copy()
    label[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(label, np.diag([1.5, 1.5, 5.0, 1.0])), path)
    with pytest.raises(DataError, match=r"label values \[7\]"):
        open_dataset(data).load("case0")


# ------------------------------------------------------------------------------ learning and scoring


def test_unannotated_pixels_become_the_ignored_index_of_every_training_target(tmp_path):
    assert value_lut([0, 1, 2, 3], UNANNOTATED)[UNANNOTATED] == IGNORE
    assert value_lut([0, 1, 2, 3])[UNANNOTATED] == 0
    label = np.zeros((16, 8), np.uint8)
    label[2:6, 1:3], label[8:, :] = 1, UNANNOTATED
    sample = framed_slice(label)
    sample = remap_labels([sample], [0, 1], UNANNOTATED)[0]
    assert (sample.label_frame[16:32, :16] == IGNORE).all() and (sample.label_frame[4:12, 2:6] == 1).all()

    dataset = open_dataset(write_nnunet_sparse(tmp_path))
    slices = load_slices(dataset, [SliceRef("case0", 0)], 32, [0, 1, 2, 3])
    assert (slices.labels[0, :, 16:] == IGNORE).all() and (slices.labels[0, :, :15] != IGNORE).all()


def test_the_labelled_loss_leaves_unannotated_pixels_out(tmp_path):
    dataset = open_dataset(write_nnunet_sparse(tmp_path, cases=1))
    loss = FitContext(dataset, None, None).labelled_loss(None)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :, 4:] = IGNORE
    logits = torch.randn(1, 4, 8, 8)
    changed = logits.clone()
    changed[..., 4:] = torch.randn(1, 4, 8, 4) * 10
    assert torch.allclose(loss(logits, target, []), loss(changed, target, []))


def test_scores_count_only_the_annotated_pixels():
    label = np.zeros((2, 10, 10), np.uint8)
    label[:, 2:5, 2:5] = 1
    label[:, :, 6:] = UNANNOTATED
    pred = np.where(label == UNANNOTATED, 1, label).astype(np.uint8)  # class 1 painted over the unannotated part
    assert volume_score(pred, label, [1], UNANNOTATED) == 1.0
    assert volume_score(pred, label, [1]) < 0.5  # scored as if that part were background
    metrics = case_metrics(pred, label, [1], (1.0, 1.0, 1.0), ignore=UNANNOTATED)[1]
    assert metrics["dice"] == 1.0 and metrics["hd95"] == 0.0
    assert holds_class(label[0], UNANNOTATED) and not holds_class(np.full((3, 3), UNANNOTATED), UNANNOTATED)


def test_evaluate_scores_predictions_on_the_annotated_part(tmp_path):
    data = write_nnunet_sparse(tmp_path / "data", cases=2)
    dataset = open_dataset(data)
    for case_id in ("case0", "case1"):
        case = dataset.load(case_id)
        write_prediction(case, np.where(case.label == UNANNOTATED, 3, case.label).astype(np.uint8), tmp_path / "pred")
    scores = evaluate(tmp_path / "pred", data, "all", show_progress=False)
    assert all(c["per_class"][name]["dice"] == 1.0 for c in scores["cases"] for name in ("RV", "Myo", "LV"))
    assert scores["unannotated_value"] == UNANNOTATED and scores["unannotated_fraction"] == 0.5  # the right halves


def fixmatch_command(data: Path, tmp_path: Path) -> list[str]:
    """``fit samatch --no-sam`` (FixMatch) with the student's tiny recipe."""
    return ["fit", "samatch", "--no-sam", "--data", str(data), "--labeled-slices", "2", *REFERENCE, "--cache",
            str(tmp_path / "cache"), *STUDENT, *POOL, "--warmup-steps", "2", "--threshold", "0"]


@pytest.mark.parametrize("method", [m for m in TRAINED if m != "samatch"] + ["fixmatch"])
def test_every_method_that_learns_from_partial_labels_fits_on_them(tiny_sam_phantom, tmp_path, method):
    data = write_nnunet_sparse(tmp_path / "sparse")
    command = fixmatch_command(data, tmp_path) if method == "fixmatch" else fit_command(method, data, tmp_path)
    result = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "config.json").is_file()


def test_samatch_refuses_labels_with_no_wholly_annotated_slice_before_any_work(tiny_sam_phantom, tmp_path):
    """Scribbles leave unannotated pixels on every labelled slice: no class shows its whole object for
    SAM to be fine-tuned on, so the fit stops in one line that names what fits such labels."""
    data = write_nnunet_sparse(tmp_path / "sparse")
    result = CliRunner().invoke(app, [*fit_command("samatch", data, tmp_path), "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, DataError)
    message = str(result.exception)
    assert "every labelled slice marks unannotated pixels" in message and "--no-sam" in message
    assert "\n" not in message
    assert not list((tmp_path / "run").glob("**/*.pt"))


def test_samatch_fine_tunes_sam_on_the_wholly_annotated_labelled_slices(tiny_sam_phantom, tmp_path):
    """--labeled-slices 2 takes case0's two slices, the second of which is half unannotated: SAM learns
    from the first alone (said), the student from both, and the fit runs to its end."""
    data = write_nnunet_sparse(tmp_path / "sparse", unannotated=second_slice_sparse)
    run = tmp_path / "run"
    invoke([*fit_command("samatch", data, tmp_path), "--out", str(run)])
    assert (run / "sam" / "checkpoint_best.pt").is_file() and (run / "checkpoint_best.pt").is_file()
    assert "SAM is fine-tuned on the 1 of the 2 labelled slices that mark no pixel unannotated" in \
        (run / "fit.log").read_text()


def test_the_slices_sam_learns_from_mark_no_pixel_unannotated(tmp_path):
    data = write_nnunet_sparse(tmp_path / "sparse", cases=2, unannotated=second_slice_sparse)
    dataset = open_dataset(data)
    refs = [SliceRef(case, z) for case in ("case0", "case1") for z in (0, 1)]
    assert sam_training_slices(FitContext(dataset, None, None, labelled=refs)) == [refs[0], refs[2]]
    assert val_slice_refs([dataset.load("case0"), dataset.load("case1")], 4) == [refs[0], refs[2]]
    scribbled = open_dataset(write_nnunet_sparse(tmp_path / "scribbled", cases=1))
    with progress.notices_collected():
        assert val_slice_refs([scribbled.load("case0")], 4) == []
        assert any("SAM's box Dice has nothing to score" in notice for notice in progress.notices())

    whole = open_dataset(write_nnunet_sparse(tmp_path / "whole", cases=2, labels=CLASSES_ONLY,
                                             unannotated=lambda label: label))
    assert sam_training_slices(FitContext(whole, None, None, labelled=refs)) is refs  # no label read again


def test_the_pool_report_scores_pseudo_labels_on_the_annotated_pixels(tmp_path):
    """A class predicted over a pool slice's unannotated half is no false positive: nothing says what is there."""
    data = write_nnunet_sparse(tmp_path / "sparse", cases=1)
    dataset = open_dataset(data)
    truth = PoolTruth(dataset, [SliceRef("case0", 0)], [0, 1, 2, 3])[0]
    label = dataset.load("case0").label[0]
    assert (truth[label == UNANNOTATED] == IGNORE).all()
    pred = np.where(truth == IGNORE, 3, truth).astype(np.uint8)
    assert pooled_dice([pred], [truth], 4)["mean"] == 1.0


def test_the_studio_shows_unannotated_pixels_as_background(tmp_path):
    """The page paints every pixel of a slice; a label of values it has no class for (4) stopped it."""
    from fewsam.studio.project import Project

    data = write_nnunet_sparse(tmp_path / "data", cases=1)
    project = Project(data, tmp_path / "project")
    label = project.load_case("case0").label
    assert UNANNOTATED not in np.unique(label) and set(np.unique(label)) <= set(project.allowed_values())
    assert (label[..., 24:] == 0).all() and (label[..., :24] > 0).any()


# ------------------------------------------------------------------ classes.json for other layouts


def test_classes_json_names_the_unannotated_value_of_label_maps(tmp_path):
    data = write_nnunet_sparse(tmp_path / "nn", cases=2)
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    (plain / "labels").mkdir()
    for path in (data / "imagesTr").iterdir():
        (plain / "images" / path.name.replace("_0000", "")).write_bytes(path.read_bytes())
    for path in (data / "labelsTr").iterdir():
        (plain / "labels" / path.name).write_bytes(path.read_bytes())
    (plain / "classes.json").write_text(json.dumps({"1": "RV", "2": "Myo", "3": "LV", "ignore": UNANNOTATED}))
    dataset = open_dataset(plain)
    assert dataset.class_map.names == {1: "RV", 2: "Myo", 3: "LV"} and dataset.load("case0").ignore == UNANNOTATED


def write_scribble_pngs(root: Path, classes: dict, mask_values: tuple[int, int]) -> Path:
    """Two images with masks of 0 background, ``mask_values[0]`` the class and ``mask_values[1]`` unannotated."""
    from PIL import Image

    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(2):
        mask = np.full((32, 32), mask_values[1], np.uint8)
        mask[8:16, 8:16], mask[:4] = mask_values[0], 0
        Image.fromarray(np.full((32, 32), 60 * i, np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    (root / "classes.json").write_text(json.dumps(classes))
    return root


@pytest.mark.parametrize("classes, values", [
    ({"1": "polyp", "ignore": 255}, (1, 255)),
    ({"1": "polyp", "ignore": 128}, (255, 128)),
    ({"classes": {"1": "polyp", "2": "wall"}, "ignore": 200}, (2, 200)),
], ids=["one-class-ignore-255", "one-class-ignore-128", "two-classes"])
def test_png_masks_read_their_unannotated_value_from_classes_json(tmp_path, classes, values):
    data = write_scribble_pngs(tmp_path / "d", classes, values)
    dataset = open_dataset(data)
    case = dataset.load(dataset.split("all")[0])
    cls = 1 if values[0] in (1, 255) else values[0]
    assert case.ignore == classes["ignore"] and (case.label[0, 8:16, 8:16] == cls).all()
    assert (case.label[0, 20:] == classes["ignore"]).all() and (case.label[0, :4] == 0).all()
    pred = np.where(case.label == classes["ignore"], 0, case.label).astype(np.uint8)
    path = write_prediction(case, pred, tmp_path / "pred")
    from PIL import Image
    assert set(np.unique(np.asarray(Image.open(path)))) == {0, values[0]}  # the class as the masks store it


@pytest.mark.parametrize("classes, message", [
    ({"1": {"name": "polyp", "pixel": 200}, "ignore": 200}, "the \"ignore\" mask value 200 is also class 1's"),
    ({"1": {"name": "polyp", "colour": [255, 0, 0]}, "ignore": 255}, "not by colour"),
    ({"1": {"name": "polyp", "min": 100}, "ignore": 50}, "not by range"),
    ({"1": "polyp", "ignore": 300}, "labels entry 'ignore' has value 300; label values are 0 (the background) to 255"),
], ids=["a-class-value", "colours", "ranges", "beyond-8-bits"])
def test_a_png_ignore_value_fewsam_cannot_read_is_refused(tmp_path, classes, message):
    data = write_scribble_pngs(tmp_path / "d", classes, (200, 255))
    with pytest.raises(DataError, match=re.escape(message)):
        open_dataset(data)


def test_a_validation_slice_left_wholly_unannotated_is_not_scored_as_annotated(tmp_path):
    """--annotated-slices-only scores validation volumes on the slices holding a class; a slice all
    unannotated holds none, and kept, it scored every prediction on it against nothing."""
    from fewsam.fitting import AnnotatedValidation

    data = write_nnunet_sparse(tmp_path, cases=4)
    path = data / "labelsTr" / "case3.nii.gz"
    img = nib.load(str(path))
    label = np.asarray(img.dataobj).copy()  # (x, y, z)
    label[..., 1] = UNANNOTATED
    nib.save(nib.Nifti1Image(label, img.affine), path)
    cropped = AnnotatedValidation(open_dataset(data), {"case3"}).load("case3")
    assert cropped.num_slices == 1 and holds_class(cropped.label[0], UNANNOTATED)
