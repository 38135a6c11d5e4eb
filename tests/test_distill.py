"""Distill: a U-Net student on labelled slices + a fitted run's pseudo-labels of the unlabelled pool."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.data.phantom import write_phantom_dataset
from fewsam.methods import distill
from fewsam.methods.distill import DistillConfig, DistillTask
from fewsam.methods.student import SliceSet
from tests.conftest import assert_one_line_error, fit_twice_identically, run_fewsam

COMMON = ["--quiet", "--precision", "fp32"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A phantom dataset and a tiny few-shot run fitted on its first two labelled slices (with the recipe
    that ``test_without_a_teacher_the_fit_makes_its_own_few_shot_teacher_first`` gives distill's own teacher)."""
    root = tmp_path_factory.mktemp("distill")
    data = write_phantom_dataset(root / "data", n_train=3, n_val=1, slices=2, seed=1)
    cache = root / "cache"
    result = CliRunner().invoke(app, ["fit", "fewshot", "--data", str(data), "--labeled-slices", "2", "--views", "1", "--augmented-views", "0",
                                      "--steps", "4", "--val-every", "2", "--batch-size", "2", "--no-test-mirroring",
                                      "--no-sam-refinement", "--cache", str(cache), "--out", str(root / "teacher"),
                                      *COMMON])
    assert result.exit_code == 0, result.output
    return data, cache, root / "teacher"


def test_distill_fits_deterministically_on_the_teachers_labels_and_predicts_from_pixels(teacher, tmp_path):
    data, cache, run = teacher
    fit = ["fit", "distill", "--data", str(data), "--labeled-slices", "2", "--teacher", str(run), "--steps", "4",
           "--val-every", "2", "--batch-size", "2", "--unlabeled-batch", "2", "--image-size", "32",
           "--no-teacher-blend", "--cache", str(cache), *COMMON]
    run_a, _ = fit_twice_identically(fit, tmp_path)
    stored = torch.load(run_a / distill.PSEUDO_FILE, weights_only=True)
    # the pool: every training slice but the two labelled ones (3 cases x 2 slices)
    assert len(stored["refs"]) == 4 and stored["labels"].shape == (4, 32, 32)
    assert set(stored["labels"].unique().tolist()) <= {0, 1, 2, 3} and stored["labels"].any()

    # the stored labels are the teacher's own predictions on those slices, resized to the student frame
    pred = tmp_path / "teacher_pred"
    result = CliRunner().invoke(app, ["predict", str(run), "--data", str(data), "--split", "train", "--out",
                                      str(pred), "--cache", str(cache), *COMMON])
    assert result.exit_code == 0, result.output
    from fewsam.data import open_dataset, read_prediction
    from fewsam.methods.student import student_label

    dataset = open_dataset(data)
    for name, label in zip(stored["refs"], stored["labels"]):
        case_id, z = name.rsplit(":", 1)
        indices = read_prediction(dataset.load(case_id), pred)  # class indices already
        assert torch.equal(student_label(indices[int(z)], 32, np.arange(256)), label)

    # prediction needs no SAM and no cache: the student reads pixels
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(run_a), "--data", str(data), "--split", "val", "--out", str(out),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / "phantom_003.nii.gz").exists()


def test_a_resumed_fit_reuses_the_stored_pseudo_labels(teacher, tmp_path, monkeypatch):
    data, cache, run = teacher
    fit = ["fit", "distill", "--data", str(data), "--labeled-slices", "2", "--teacher", str(run), "--steps", "2",
           "--val-every", "1", "--batch-size", "2", "--unlabeled-batch", "2", "--image-size", "32",
           "--cache", str(cache), "--out", str(tmp_path / "run"), *COMMON]
    assert CliRunner().invoke(app, fit).exit_code == 0

    def refuse(*args, **kwargs):
        raise AssertionError("the pool was labelled again")

    monkeypatch.setattr(distill, "teacher_labels", refuse)
    for name in ("manifest.json", "checkpoint_last.pt", "checkpoint_best.pt"):  # as if stopped before step 1
        (tmp_path / "run" / name).unlink()
    result = CliRunner().invoke(app, fit)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoint_best.pt").exists()


def test_a_fit_resumed_with_its_teacher_spelled_relative_is_no_change(teacher, tmp_path, monkeypatch):
    """`--teacher /work/fs3` then `--teacher fs3` from /work name one teacher: the fit resumes."""
    data, cache, run = teacher
    fit = ["fit", "distill", "--data", str(data), "--labeled-slices", "2", "--steps", "2", "--val-every", "1",
           "--batch-size", "2", "--unlabeled-batch", "2", "--image-size", "32", "--no-teacher-blend",
           "--cache", str(cache), "--out", str(tmp_path / "run"), *COMMON]
    assert CliRunner().invoke(app, [*fit, "--teacher", str(run)]).exit_code == 0
    (tmp_path / "run" / "manifest.json").unlink()  # as if stopped after its last checkpoint
    monkeypatch.chdir(run.parent)
    result = CliRunner().invoke(app, [*fit, "--teacher", run.name])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "manifest.json").exists()
    monkeypatch.chdir(tmp_path)  # the same spelling from elsewhere names another folder: a change, refused
    (tmp_path / "run" / "manifest.json").unlink()
    (tmp_path / run.name).mkdir()
    result = CliRunner().invoke(app, [*fit, "--teacher", run.name])
    assert result.exit_code != 0 and "different configuration" in str(result.exception or result.output)


def make_the_blend_win(monkeypatch) -> None:
    """The blend's validation score made to win (the phantom is too small to make it win by itself)."""
    real_choice = distill.postprocessing_choice

    def winning(*args, **kwargs):
        record = real_choice(*args, **kwargs)
        return {**record, "val_dice_raw": record["val_dice_raw"] + 1, "val_dice_largest_component":
                record["val_dice_largest_component"] + 1}

    monkeypatch.setattr(distill, "postprocessing_choice", winning)


def test_a_second_round_taught_by_a_blended_distill_run_predicts_through_both_teachers(teacher, tmp_path,
                                                                                        monkeypatch):
    """Distill taught by a distill run that kept its blend: the copied teacher carries its own
    copied teacher, so the second round's prediction can run (it needs both)."""
    data, cache, run = teacher
    make_the_blend_win(monkeypatch)
    first, second = tmp_path / "round1", tmp_path / "round2"
    assert _short_fit(data, cache, run, first)["teacher_blend"]
    assert _short_fit(data, cache, first, second)["teacher_blend"]
    assert sorted(p.name for p in (second / "teacher" / "teacher").iterdir()) == [
        "checkpoint_best.pt", "config.json", "postprocess.json", "prompt_bank.pt"]
    listed = json.loads((second / "manifest.json").read_text())["files"]
    assert "teacher/teacher/prompt_bank.pt" in listed
    result = CliRunner().invoke(app, ["predict", str(second), "--data", str(data), "--split", "val", "--out",
                                      str(tmp_path / "pred"), "--cache", str(cache), *COMMON])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "phantom_003.nii.gz").exists()


def test_without_a_teacher_the_fit_makes_its_own_few_shot_teacher_first(teacher, tmp_path, monkeypatch):
    """One command from labelled slices to the student: the few-shot teacher fitted into
    RUN/teacher_fit gives the same teacher, pseudo-labels and student as the two commands."""
    from fewsam.methods.fewshot import FewShotConfig

    data, cache, two_commands_teacher = teacher  # the first of the two commands
    recipe = FewShotConfig(augmented_views=0, steps=4, val_every=2, batch_size=2, views=1, test_mirroring=False, sam_refinement=False)
    monkeypatch.setattr(distill, "own_teacher_config", lambda: recipe)
    student = ["--data", str(data), "--labeled-slices", "2", "--steps", "2", "--val-every", "2", "--batch-size", "2",
               "--unlabeled-batch", "2", "--image-size", "32", "--no-teacher-blend", "--cache", str(cache), *COMMON]
    one = tmp_path / "one"
    result = CliRunner().invoke(app, ["fit", "distill", *student, "--out", str(one)])
    assert result.exit_code == 0, result.output
    assert json.loads((one / "config.json").read_text())["distill"]["teacher"] is None
    assert (one / "teacher_fit" / "manifest.json").exists()
    assert json.loads((one / "teacher_fit" / "config.json").read_text())["method"] == "fewshot"
    log = (one / "fit.log").read_text()
    assert "no --teacher given: few-shot SAM" in log
    assert log.index("fewshot finished: best validation") < log.index("distill finished: best validation")

    # the two commands: the same few-shot fit (the module's teacher), then distill taught by it
    two = tmp_path / "two"
    result = CliRunner().invoke(app, ["fit", "distill", *student, "--teacher", str(two_commands_teacher), "--out",
                                      str(two)])
    assert result.exit_code == 0, result.output
    for name in ("checkpoint_best.pt",):
        a = torch.load(one / "teacher_fit" / name, weights_only=False)["module"]
        b = torch.load(two_commands_teacher / name, weights_only=False)["module"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.load(one / distill.PSEUDO_FILE)["labels"], torch.load(two / distill.PSEUDO_FILE)["labels"])
    a = torch.load(one / "checkpoint_best.pt", weights_only=False)["module"]
    b = torch.load(two / "checkpoint_best.pt", weights_only=False)["module"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    result = CliRunner().invoke(app, ["fit", "distill", *student, "--out", str(one)])  # asked again: left as it is
    assert result.exit_code == 0 and "finished already" in result.output, result.output


def test_a_teacher_of_another_budget_is_refused(teacher, tmp_path):
    data, cache, run = teacher
    result = run_fewsam("fit", "distill", "--data", str(data), "--labeled-slices", "3", "--teacher", str(run),
                        "--steps", "2", "--image-size", "32", "--cache", str(cache), "--out", str(tmp_path / "run"),
                        *COMMON, cwd=tmp_path)
    assert_one_line_error(result, "other labelled slices")
    assert not (tmp_path / "run" / distill.PSEUDO_FILE).exists()


def _short_fit(data, cache, teacher_run, out) -> dict:
    """A 2-step distill fit on the phantom (defaults otherwise); its postprocess.json."""
    result = CliRunner().invoke(app, ["fit", "distill", "--data", str(data), "--labeled-slices", "2", "--teacher",
                                      str(teacher_run), "--steps", "2", "--val-every", "2", "--batch-size", "2",
                                      "--image-size", "32", "--cache", str(cache), "--out", str(out), *COMMON])
    assert result.exit_code == 0, result.output
    assert "kept for prediction, chosen on validation: " in result.output  # beside the loop's best score
    return json.loads((out / "postprocess.json").read_text())


class _Logits(torch.nn.Module):
    """Logits favouring class 1 everywhere, with a learnable margin."""

    def __init__(self) -> None:
        super().__init__()
        self.margin = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[2:])
        logits[:, 1] = self.margin
        return logits


def _set(n: int, label: int) -> SliceSet:
    return SliceSet([object()] * n, torch.rand(n, 1, 16, 16), torch.full((n, 16, 16), label, dtype=torch.uint8))


def test_the_pseudo_labelled_loss_is_weighted_by_pseudo_weight():
    """Labelled slices say class 1, pseudo-labels say class 2: the total is loss_x + w * loss_u."""
    from fewsam.losses import DiceCELoss

    totals = {}
    for weight in (0.0, 2.0):
        cfg = DistillConfig(pseudo_weight=weight, batch_size=2, unlabeled_batch=2, image_size=16)
        task = DistillTask(_Logits(), _set(3, 1), _set(4, 2), cfg, DiceCELoss(None), [], [0, 1, 2])
        totals[weight] = task.training_loss(np.random.default_rng(0), 1)
    (loss0, s0), (loss2, s2) = totals[0.0], totals[2.0]
    assert s0["loss_x"] == pytest.approx(s2["loss_x"]) and s2["loss_u"] > s2["loss_x"]  # the pool disagrees
    assert loss0.item() == pytest.approx(s0["loss_x"])
    assert loss2.item() == pytest.approx(s2["loss_x"] + 2.0 * s2["loss_u"], rel=1e-6)


class _LeftHalf(torch.nn.Module):
    """A 'U-Net' that calls the left half of every image class 1 and the right half class 2."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[2:])
        half = x.shape[-1] // 2
        logits[:, 1, :, :half] = 5.0
        logits[:, 2, :, half:] = 5.0
        return logits


def test_student_mirroring_averages_the_four_mirror_images_back_in_place():
    """Left-right mirrors swap the halves, so the mirror average is undecided between 1 and 2 on every
    pixel (the probabilities of 1 and 2 are equal), while the single view keeps its halves."""
    from fewsam.methods.student import StudentConfig, mirrored_probabilities, predict_images

    cfg = StudentConfig(image_size=16)
    image = np.random.default_rng(0).random((12, 20)).astype(np.float32)
    single = predict_images(_LeftHalf(), [image], cfg)[0].numpy()
    mirrored = mirrored_probabilities(_LeftHalf(), [image], cfg)[0]
    assert mirrored.shape == single.shape == (3, 12, 20)
    assert single[1, :, :8].min() > 0.9 and single[2, :, 12:].min() > 0.9
    np.testing.assert_allclose(mirrored[1], mirrored[2], atol=1e-6)
    np.testing.assert_allclose(mirrored.sum(axis=0), 1.0, atol=1e-5)


def test_a_distilled_run_predicts_with_its_postprocessing_choice(teacher, tmp_path):
    """The fit writes postprocess.json (mirroring scored on validation); the predictor follows it."""
    from fewsam.data import open_dataset
    from fewsam.inference import postprocess_volume
    from fewsam.methods.student import StudentPredictor, predict_case_labels

    data, cache, run = teacher
    out = tmp_path / "run"
    choice = _short_fit(data, cache, run, out)
    assert {"val_dice_single_view", "val_dice_mirrored", "mirror", "largest_component"} <= set(choice)
    assert choice["mirror"] == (choice["val_dice_mirrored"] > choice["val_dice_single_view"])
    # the teacher blend (on by default) is scored on validation too, and kept only if it wins there
    assert choice["teacher_blend"] == (choice["val_dice_teacher_blend"] > choice["val_dice_student"])
    assert (out / "teacher").exists() == choice["teacher_blend"]
    predictor = StudentPredictor(out)
    case = open_dataset(data).load("phantom_003")
    for mirror in (False, True):
        predictor.mirror = mirror
        expected = postprocess_volume(predict_case_labels(predictor.module, case, predictor.cfg, predictor.values,
                                                          mirror=mirror),
                                      None, predictor.largest_component, predictor.values)
        assert np.array_equal(predictor.predict_case(case), expected)


def _layout(left: int, right: int, confidence: float = 0.9) -> np.ndarray:
    """(3, 4, 6) probabilities: class ``left`` on the left half, ``right`` on the right half."""
    probs = np.full((3, 4, 6), (1 - confidence) / 2, dtype=np.float32)
    probs[left, :, :3] = confidence
    probs[right, :, 3:] = confidence
    return probs


def test_the_blend_averages_where_the_layouts_agree_and_keeps_the_student_where_they_swap():
    from fewsam.methods.distill import blended_probabilities, class_agreement

    student, agreeing, swapped = _layout(1, 2, 0.6), _layout(1, 2, 0.9), _layout(2, 1, 0.9)
    assert class_agreement(student.argmax(0), agreeing.argmax(0), 3) == 1.0
    assert class_agreement(student.argmax(0), swapped.argmax(0), 3) == 0.0
    assert class_agreement(np.zeros((4, 6)), np.zeros((4, 6)), 3) == 1.0  # neither shows a class
    blended = blended_probabilities([student, student], [agreeing, swapped])
    np.testing.assert_allclose(blended[0], (student + agreeing) / 2)
    np.testing.assert_array_equal(blended[1], student)


def test_a_kept_teacher_blend_copies_the_teacher_and_predicts_the_blend(teacher, tmp_path, monkeypatch):
    """The blend's validation score is made to win (the phantom is too small to make it win by itself):
    the run then carries the teacher's predictor files and predicts the slice-wise blend through SAM."""
    from fewsam.data import open_dataset, read_prediction
    from fewsam.embedded import CaseSlices
    from fewsam.methods.fewshot import FewShotPredictor
    from fewsam.methods.student import StudentPredictor
    from fewsam.models.registry import load_model
    from fewsam.cache import EmbeddingCache
    from fewsam.models.precision import resolve_precision

    data, cache, run = teacher
    make_the_blend_win(monkeypatch)
    out = tmp_path / "run"
    choice = _short_fit(data, cache, run, out)
    assert choice["teacher_blend"] and choice["val_dice_teacher_blend"] > choice["val_dice_student"]
    kept = (out / "fit.log").read_text().splitlines()[-1]  # the kept score, not the loop's best, ends the log
    assert kept.endswith(f"the teacher blend, largest components; validation Dice {choice['val_dice_teacher_blend']:.4f}"
                         if choice["largest_component"] else
                         f"the teacher blend; validation Dice {choice['val_dice_teacher_blend']:.4f}"), kept
    assert sorted(p.name for p in (out / "teacher").iterdir()) == [
        "checkpoint_best.pt", "config.json", "postprocess.json", "prompt_bank.pt"]
    assert distill.get_method("distill").predicts_from_pixels(out) is False

    pred = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(out), "--data", str(data), "--split", "val", "--out", str(pred),
                                      "--cache", str(cache), *COMMON])
    assert result.exit_code == 0, result.output
    dataset = open_dataset(data)
    case = dataset.load("phantom_003")
    model = load_model("litemedsam")
    slices = CaseSlices(case, EmbeddingCache(cache, model, resolve_precision("fp32", "cpu")), "cpu")
    student = StudentPredictor(out)
    teacher_probs = FewShotPredictor(out / "teacher", model).probabilities(slices)
    expected = []
    for s, t in zip(student.probabilities(case), teacher_probs):
        t = np.asarray(t)
        a, b = s.argmax(0), t.argmax(0)
        dice = [2 * ((a == c) & (b == c)).sum() / ((a == c).sum() + (b == c).sum())
                for c in (1, 2, 3) if (a == c).any() or (b == c).any()]
        expected.append(np.asarray(student.values)[((s + t) / 2 if not dice or np.mean(dice) >= 0.5 else s)
                                                   .argmax(0)])
    expected = student.postprocess(np.stack(expected).astype(np.uint8))
    np.testing.assert_array_equal(read_prediction(case, pred), expected)


def test_distill_with_no_pseudo_label_loss_says_which_options_it_leaves_unused(teacher, tmp_path):
    """`--pseudo-weight 0 --unlabeled-batch 4 --no-noisy` tunes a loss that weighs nothing: the fit ran
    with no word said about the options it ignored."""
    data, cache, run = teacher
    fit = ["fit", "distill", "--data", str(data), "--labeled-slices", "2", "--teacher", str(run), "--steps", "2",
           "--val-every", "2", "--batch-size", "2", "--image-size", "32", "--no-teacher-blend", "--cache", str(cache),
           "--out", str(tmp_path / "run"), *COMMON]
    told = ("--unlabeled-batch and --no-noisy are not used: --pseudo-weight 0 turns the loss on the teacher's "
            "pseudo-labels off, so the student learns from the labelled slices alone")
    result = CliRunner().invoke(app, [*fit, "--pseudo-weight", "0", "--unlabeled-batch", "4", "--no-noisy"])
    assert result.exit_code == 0, result.output
    assert told in (tmp_path / "run" / "fit.log").read_text(encoding="utf-8")
    result = CliRunner().invoke(app, [*fit[:-len(COMMON) - 2], "--out", str(tmp_path / "weighted"), *COMMON,
                                      "--unlabeled-batch", "4"])
    assert result.exit_code == 0, result.output
    assert "are not used" not in (tmp_path / "weighted" / "fit.log").read_text(encoding="utf-8")
