"""``fewsam predict --save-probabilities``: for every method that has class probabilities, each case's
``<name>.probabilities.npz`` beside its prediction is what the label map was made from (argmax through
``values``, then the run's recorded post-processing, gives the written prediction), in the run's class
order, float16 summing to 1; the prediction itself is the same as without the option; nothing is
written when a case fails; ``fewsam evaluate`` still finds only the predictions; the prompted
baselines, which have no probabilities, are refused in one line. Tiny runs of each method on the
tiny-SAM phantom (``tests/test_resume_every_method.py``'s recipes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fewsam.cli import app
from fewsam.errors import RunError
from fewsam.inference import POSTPROCESS, CavityRule, postprocess_volume
from fewsam.predict import PREDICT_LOG
from fewsam.probabilities import (PROBABILITIES_ENDING, ProbabilityFile, check_not_a_prediction_name,
                                  probabilities_path)
from conftest import write_lv_png_folder
from tests.test_resume_every_method import fit_command, invoke

# post-processing the probabilities cannot show (mirroring, SAM refinement) switched off where a method has it
PLAIN = {"fewshot": ["--no-test-mirroring", "--no-sam-refinement"],
         "fewmatch": ["--no-test-mirroring", "--no-sam-refinement"],
         "distill": ["--no-test-mirroring", "--no-teacher-blend"]}
METHODS = ["fewshot", "fewmatch", "samatch", "supervised", "distill"]
ONE_STEP = ("--steps", "--val-every", "--warmup-steps", "--refresh-every")  # every stage kept, each one step long


@pytest.fixture(scope="module")
def phantom_runs(tmp_path_factory) -> Iterator[tuple[Path, dict[str, Path]]]:
    """conftest's ``tiny_sam_phantom``, held for the module, and a tiny run of each method on it, fitted once."""
    from test_supervised import tiny_sam

    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.models import registry

    folder = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for target in (registry, "fewsam.api", "fewsam.predict"):
            if isinstance(target, str):
                patch.setattr(f"{target}.load_model", lambda *args, **kwargs: tiny_sam())
            else:
                patch.setattr(target, "load_model", lambda *args, **kwargs: tiny_sam())
        torch.set_num_threads(1)
        data = write_phantom_dataset(folder / "data", n_train=2, n_val=1, slices=2, seed=1)
        yield data, {method: fitted(method, data, folder) for method in METHODS}
    torch.set_num_threads(threads)


def fitted(method: str, data: Path, folder: Path) -> Path:
    """``fewsam fit METHOD`` with test_resume_every_method's tiny recipe, one step per stage, plain."""
    command = fit_command(method, data, folder)
    command = ["1" if before in ONE_STEP else word for before, word in zip(["", *command], command)]
    run = folder / f"run_{method}"
    invoke([*command, *PLAIN.get(method, []), "--out", str(run)])
    return run


def predicted(run: Path, data: Path, out: Path, *options: str) -> str:
    return invoke(["predict", str(run), "--data", str(data), "--out", str(out), "--cache", str(run.parent / "cache"),
                   "--quiet", "--precision", "fp32", *options])


def read_label(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)  # (x, y, z) on disk, (z, y, x) here


def tied(probabilities: np.ndarray) -> np.ndarray:
    """(D, H, W): where the two most probable classes are equal, so that the argmax is a coin toss."""
    top = np.sort(probabilities, axis=0)
    return top[-1] == top[-2]


def expected_labels(run: Path, probabilities: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The label map the run makes from ``probabilities``: argmax, then its recorded post-processing."""
    labels = values[probabilities.argmax(axis=0)].astype(np.uint8)
    choice = json.loads((run / POSTPROCESS).read_text()) if (run / POSTPROCESS).exists() else {}
    rule = choice.get("cavity_rule")
    return postprocess_volume(labels, None if rule is None else CavityRule(*rule),
                              bool(choice.get("largest_component")), [int(v) for v in values])


@pytest.fixture
def streamed(monkeypatch) -> dict[str, list[np.ndarray]]:
    """Each probabilities file's slices as the predictor handed them over (float32), by file name."""
    seen: dict[str, list[np.ndarray]] = {}
    recorded = ProbabilityFile.recorded

    def kept(self: ProbabilityFile, probabilities):
        for p in recorded(self, probabilities):
            seen.setdefault(self.path.name, []).append(np.array(p, dtype=np.float32))
            yield p

    monkeypatch.setattr(ProbabilityFile, "recorded", kept)
    return seen


@pytest.mark.parametrize("method", METHODS)
def test_saved_probabilities_are_what_each_method_predicted_from(method, phantom_runs, tmp_path, streamed):
    data, run = phantom_runs[0], phantom_runs[1][method]
    predicted(run, data, tmp_path / "plain")
    predicted(run, data, tmp_path / "pred", "--save-probabilities")
    predictions = sorted((tmp_path / "pred").glob("*.nii.gz"))
    assert predictions and sorted(p.name for p in (tmp_path / "plain").glob("*.nii.gz")) == \
        [p.name for p in predictions]
    for prediction in predictions:
        label = read_label(prediction)
        saved = probabilities_path(prediction)
        assert saved.name == prediction.name[: -len(".nii.gz")] + PROBABILITIES_ENDING
        with np.load(saved) as npz:
            probabilities, values, names = npz["probabilities"], npz["values"], npz["names"]
        assert probabilities.dtype == np.float16 and probabilities.shape == (4, *label.shape)
        assert values.tolist() == [0, 1, 2, 3] and names.tolist() == ["background", "RV", "Myo", "LV"]
        assert np.allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=4e-3)
        handed = np.stack(streamed[saved.name], axis=1)  # (C, D, H, W) float32, as the labels were made from them
        assert np.array_equal(probabilities, handed.astype(np.float16))
        decided = ~tied(handed)  # where float32 tells the two best classes apart
        assert np.array_equal(expected_labels(run, handed, values)[decided], label[decided])
        # the option changes no answer, not even at a tie
        assert np.array_equal(label, read_label(tmp_path / "plain" / prediction.name))
    assert "class probabilities" in (tmp_path / "pred" / PREDICT_LOG).read_text(encoding="utf-8")
    assert not [p for p in (tmp_path / "pred").iterdir() if p.name.startswith(".")]  # no temporary left
    report = invoke(["evaluate", "--pred", str(tmp_path / "pred"), "--data", str(data), "--quiet"])
    assert report.startswith(f"{len(predictions)} cases")  # the probabilities files are not taken for predictions


def test_refined_labels_keep_the_answer_and_the_stage_before_is_said(phantom_runs, tmp_path):
    """SAM-Match refined by SAM: the label map is the refined one, the probabilities the student's, and
    the user is told so once."""
    data, run = phantom_runs[0], phantom_runs[1]["samatch"]
    predicted(run, data, tmp_path / "refined", "--refine-with-sam")
    said = predicted(run, data, tmp_path / "pred", "--refine-with-sam", "--save-probabilities")
    log = (tmp_path / "pred" / PREDICT_LOG).read_text(encoding="utf-8")
    assert "SAM refinement" in log and "the label maps stay the method's answer" in log, said
    for prediction in (tmp_path / "refined").glob("*.nii.gz"):
        assert np.array_equal(read_label(tmp_path / "pred" / prediction.name), read_label(prediction))
        assert probabilities_path(tmp_path / "pred" / prediction.name).is_file()


def test_a_failing_case_leaves_no_prediction_folder_and_overwrite_drops_stale_probabilities(
        phantom_runs, tmp_path, monkeypatch):
    data, run = phantom_runs[0], phantom_runs[1]["supervised"]
    written = ProbabilityFile.written
    calls = []

    def fail_on_the_second(self: ProbabilityFile) -> Path:
        calls.append(self.path)
        if len(calls) == 2:
            raise OSError("disk full")
        return written(self)

    monkeypatch.setattr(ProbabilityFile, "written", fail_on_the_second)
    result = CliRunner().invoke(app, ["predict", str(run), "--data", str(data), "--split", "train", "--quiet",
                                      "--out", str(tmp_path / "pred"), "--save-probabilities"])
    assert result.exit_code != 0 and len(calls) == 2
    # no prediction folder: the first case kept to resume from, and the log where predict said it was, saying why
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pred.predict-partial", ".pred.predict.log"]
    assert len(list((tmp_path / ".pred.predict-partial").rglob(f"*{PROBABILITIES_ENDING}"))) == 1
    assert (tmp_path / ".pred.predict.log").read_text(encoding="utf-8").rstrip().endswith("stopped: OSError: disk full")
    monkeypatch.setattr(ProbabilityFile, "written", written)
    predicted(run, data, tmp_path / "pred", "--save-probabilities")
    assert len(list((tmp_path / "pred").glob(f"*{PROBABILITIES_ENDING}"))) == 1
    predicted(run, data, tmp_path / "pred", "--overwrite")  # new label maps: the old probabilities no longer match
    assert not list((tmp_path / "pred").glob(f"*{PROBABILITIES_ENDING}"))


def test_prompted_runs_have_no_probabilities_and_are_refused_in_one_line(phantom_runs, tmp_path):
    data = phantom_runs[0]
    invoke(["fit", "prompted", "--out", str(tmp_path / "run")])
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), "--data", str(data), "--quiet",
                                      "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "pred"),
                                      "--save-probabilities"])
    assert isinstance(result.exception, RunError) and "\n" not in str(result.exception)
    assert "prompted runs have no class probabilities" in str(result.exception)
    assert not (tmp_path / "pred").exists()


def test_a_2d_folder_keeps_one_slice_of_probabilities_beside_each_png(tmp_path):
    """0/255 PNG masks: the probabilities are (C, 1, H, W) in class order (``values``: the classes, 0 and 1,
    as the run numbers them; the mask coding writes class 1 as 255), and evaluate scores only the PNGs."""
    data = write_lv_png_folder(tmp_path / "data", 6, 255)
    run = tmp_path / "run"
    invoke(["fit", "supervised", "--data", str(data), "--labeled-slices", "2", "--steps", "1", "--val-every", "1",
            "--batch-size", "2", "--image-size", "32", "--quiet", "--out", str(run)])
    invoke(["predict", str(run), "--data", str(data), "--out", str(tmp_path / "pred"), "--quiet",
            "--save-probabilities"])
    pngs = sorted((tmp_path / "pred").rglob("*.png"))
    assert pngs and sorted((tmp_path / "pred").rglob(f"*{PROBABILITIES_ENDING}")) == \
        [p.with_name(p.name[: -len(".png")] + PROBABILITIES_ENDING) for p in pngs]
    with np.load(probabilities_path(pngs[0])) as npz:
        assert npz["probabilities"].shape == (2, 1, 40, 48) and npz["values"].tolist() == [0, 1]
        assert npz["names"][0] == "background"
    assert invoke(["evaluate", "--pred", str(tmp_path / "pred"), "--data", str(data), "--quiet"]).startswith(
        f"{len(pngs)} case")


@pytest.mark.parametrize("prediction, saved", [
    ("case.nii.gz", "case.probabilities.npz"), ("case.NII.GZ", "case.probabilities.npz"),
    ("1.2.840.113619.nii.gz", "1.2.840.113619.probabilities.npz"), ("x.png", "x.probabilities.npz"),
    ("patient001_frame01.h5", "patient001_frame01.probabilities.npz"), ("slice.npz", "slice.probabilities.npz"),
    ("ct.mha", "ct.probabilities.npz")])
def test_probabilities_are_named_as_the_prediction_without_its_ending(prediction, saved):
    assert probabilities_path(Path("pred") / "sub" / prediction) == Path("pred") / "sub" / saved


def test_an_npz_case_named_as_another_cases_probabilities_is_refused():
    """An npz case ``x.probabilities`` would be predicted into the file that holds case ``x``'s probabilities."""
    check_not_a_prediction_name("x", Path("x.npz"))
    with pytest.raises(RunError, match="would be named as another case's probabilities"):
        check_not_a_prediction_name("x.probabilities", Path("x.probabilities.npz"))
