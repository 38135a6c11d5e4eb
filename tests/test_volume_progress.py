"""One long volume (a CT of hundreds of slices) is followed slice by slice: ``fewsam predict`` and ``fewsam embed``
write progress lines within the case, to the terminal and to predict.log / embed.log, and a one-view
prediction (as SAM refinement) holds a batch of the volume's embeddings, not all of them, predicting the same.
``fewsam evaluate`` follows a case class by class (its distances take the time)."""

import io
import json
import re
import weakref

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fewsam.embedded as embedded
import fewsam.progress as progress
from fewsam.cache import EmbeddingCache
from fewsam.cli import app
from fewsam.data import open_dataset
from fewsam.data.phantom import write_phantom_dataset
from fewsam.embedded import CaseSlices
from fewsam.evaluate import evaluate
from fewsam.methods.fewshot import predict_slices, sam_refined_volume
from fewsam.models.precision import FP32
from fewsam.predict import predict_case_file
from test_supervised import tiny_sam

DEPTH = 20  # slices of the long volume: three decoder batches (8, 8, 4)
BATCH = 8  # the decoder's batch in ``predict_slices``
PREDICTED_DEPTH = BATCH + 1  # the volume ``fewsam predict`` follows: two batches (SAM's decoder is slow on a CPU)


def read(path):
    return path.read_text(encoding="utf-8")


def slice_lines(log: str, command: str) -> list[tuple[int, int]]:
    """(slices reached, slices in the case) of each "COMMAND CASE slice N/D (P%)" line."""
    return [(int(n), int(d)) for n, d in re.findall(rf" {command} phantom_\d+ slice (\d+)/(\d+) \(", log)]


def volume_dataset(root, depth: int):
    """A dataset of the phantom's classes whose validation case is one volume of ``depth`` slices."""
    return write_phantom_dataset(root, n_train=1, n_val=1, slices=depth, seed=2)


@pytest.fixture
def long_volume(tmp_path):
    return volume_dataset(tmp_path / "long", DEPTH)


@pytest.fixture
def every_line(monkeypatch):
    """Lines within a case at every 5% step (their few seconds' spacing would leave none in a fast test)."""
    monkeypatch.setattr(progress, "PART_LINE_GAP_SECONDS", 0.0)


class Tracked:
    """Counts the embedded slices ``embed_case`` made that are still alive when ``count`` is called."""

    def __init__(self, monkeypatch) -> None:
        self.refs: list[weakref.ref] = []
        self.most = 0
        embed = embedded.embed_case

        def counted(*args, **kwargs):
            items = embed(*args, **kwargs)
            self.refs += [weakref.ref(item) for item in items]
            return items

        monkeypatch.setattr(embedded, "embed_case", counted)

    def count(self) -> None:
        self.most = max(self.most, sum(ref() is not None for ref in self.refs))


def test_predict_log_follows_one_long_volume_slice_by_slice(tiny_sam_phantom, tmp_path, every_line):
    """Through a prompted run (nothing to train: the test stays fast); every predictor reads its slices the same
    way, through the case's streamed ``CaseSlices``."""
    run, pred = tmp_path / "run", tmp_path / "pred"
    volume = volume_dataset(tmp_path / "volume", PREDICTED_DEPTH)
    result = CliRunner().invoke(app, ["fit", "prompted", "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["predict", str(run), "--data", str(volume), "--cache", str(tmp_path / "cache"),
                                      "--precision", "fp32", "--split", "val", "--out", str(pred)])
    assert result.exit_code == 0, result.output
    log = read(pred / "predict.log")
    assert slice_lines(log, "predict") == [(BATCH, PREDICTED_DEPTH), (PREDICTED_DEPTH, PREDICTED_DEPTH)]
    assert "predict 1/1 (100%)" in log.split(f"slice {PREDICTED_DEPTH}/")[1]  # the case's own line after its slices


def test_embed_log_counts_the_slices_of_each_case(tiny_sam_phantom, long_volume, tmp_path, every_line):
    result = CliRunner().invoke(app, ["embed", "--data", str(long_volume), "--cache", str(tmp_path / "cache"),
                                      "--precision", "fp32", "--split", "val"])
    assert result.exit_code == 0, result.output
    [log] = (tmp_path / "cache").glob("*/embed.log")
    reached = slice_lines(read(log), "embed")
    assert len(reached) >= 3 and reached[-1] == (DEPTH, DEPTH)
    assert [n for n, _ in reached] == sorted({n for n, _ in reached})  # one slice at a time, each line further


class ChannelDecoder(torch.nn.Module):
    """Class logits = the first embedding channels, upsampled; counts the embeddings alive at each batch."""

    def __init__(self, tracked: Tracked) -> None:
        super().__init__()
        self.tracked = tracked

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        self.tracked.count()
        return torch.nn.functional.interpolate(embeddings[:, : tokens.shape[0]] * 50.0, size=(256, 256),
                                               mode="bilinear")


class OneView:
    """A predictor of one view, reading its slices as ``FewShotPredictor`` does without mirroring."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.decoder = decoder

    def predict_case(self, case, slices) -> np.ndarray:
        return np.stack(predict_slices(self.decoder, torch.zeros(3, 1, 256), slices, [0, 1, 2])).astype(np.uint8)


def test_a_one_view_prediction_holds_a_batch_of_embeddings_not_the_volume(long_volume, tmp_path, monkeypatch):
    dataset, cache = open_dataset(long_volume), EmbeddingCache(tmp_path / "cache", tiny_sam(), FP32)
    [case_id] = dataset.split("val")
    tracked = Tracked(monkeypatch)
    predictor = OneView(ChannelDecoder(tracked))
    rel = predict_case_file(dataset, case_id, predictor, cache, "cpu", tmp_path / "staging")
    assert 0 < tracked.most <= 2 * BATCH < DEPTH  # a batch decoded while the one before is let go
    case = dataset.load(case_id, with_label=False)
    written = np.asarray(nib.load(tmp_path / "staging" / rel).dataobj).transpose(2, 1, 0)
    assert np.array_equal(written, predictor.predict_case(case, CaseSlices(case, cache)))


def test_sam_refinement_of_a_long_volume_holds_the_slices_one_batch_of_prompts_reads(long_volume, tmp_path,
                                                                                     monkeypatch):
    dataset, sam = open_dataset(long_volume), tiny_sam()
    cache = EmbeddingCache(tmp_path / "cache", sam, FP32)
    case = dataset.load(dataset.split("val")[0], with_label=False)
    probabilities = np.zeros((DEPTH, 2, *case.image.shape[1:]), np.float32)
    probabilities[:, 0] = 1.0
    prompted_slices = [0, DEPTH - 1]  # one prompt each (SAM's decoder is slow on one thread)
    probabilities[prompted_slices, 0, 10:30, 20:40], probabilities[prompted_slices, 1, 10:30, 20:40] = 0.0, 1.0
    tracked = Tracked(monkeypatch)
    prompted = sam.predict_prompted

    def counted(*args, **kwargs):
        tracked.count()
        return prompted(*args, **kwargs)

    monkeypatch.setattr(sam, "predict_prompted", counted)
    streamed = sam_refined_volume(sam, CaseSlices(case, cache, streamed=True), list(probabilities), [0, 1])
    assert 0 < tracked.most <= len(prompted_slices)  # the slices of one batch of prompts (up to 16)
    assert np.array_equal(streamed, sam_refined_volume(sam, CaseSlices(case, cache), list(probabilities), [0, 1]))


def test_lines_within_an_item_come_at_most_every_few_seconds_and_end_with_it():
    """A long case: a line at a 5% step, at most every ``PART_LINE_GAP_SECONDS``; a removed task (the case
    done) prints no more; a case of ten slices predicted in a second adds no lines of its own."""
    now = [0.0]
    stream = io.StringIO()
    bar = progress.PlainProgress(stream, clock=lambda: now[0])
    job = bar.add_task("predict ct slice", total=100, line_gap=progress.PART_LINE_GAP_SECONDS)
    for _ in range(40):
        now[0] += 0.5  # a 5% step every 2.5 s
        bar.update(job, advance=1)
    assert [line.split(",")[0] for line in stream.getvalue().splitlines()] == [
        "predict ct slice 10/100 (10%)", "predict ct slice 20/100 (20%)", "predict ct slice 30/100 (30%)",
        "predict ct slice 40/100 (40%)"]
    bar.remove_task(job)
    now[0] += 60.0
    bar.update(job, advance=60)
    assert len(stream.getvalue().splitlines()) == 4

    stream = io.StringIO()
    bar = progress.PlainProgress(stream, clock=lambda: now[0])
    job = bar.add_task("predict short slice", total=10, line_gap=progress.PART_LINE_GAP_SECONDS)
    for _ in range(10):
        now[0] += 0.1
        bar.update(job, advance=1)
    assert stream.getvalue() == ""


def test_the_parts_of_an_item_reach_a_redirected_stderr_and_leave_the_items_lines_as_they_were(capsys, every_line):
    for _, parts in progress.tracked_with_parts(["ct"], "predict", "slice"):
        count = parts.counter(40)
        for _ in range(40):
            count(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("predict ct slice 2/40 (5%)") and lines[19].startswith("predict ct slice 40/40 (100%)")
    assert lines[20:] and all(line.startswith("predict 1/1 (100%)") for line in lines[20:])


def class_lines(stderr: str) -> list[tuple[str, int, int]]:
    """(case, classes scored, classes) of each "evaluate CASE class N/C (P%)" line."""
    return [(case, int(n), int(c)) for case, n, c in re.findall(r"^evaluate (\S+) class (\d+)/(\d+) \(", stderr, re.M)]


def test_evaluate_counts_the_classes_of_each_case_and_scores_as_without_progress(tmp_path, every_line, capsys):
    """A large volume's HD95 and ASD take minutes a class: the progress moves class by class within the case."""
    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=2, slices=4, seed=2)
    dataset = open_dataset(data)
    cases, classes = dataset.split("val"), len(dataset.class_map.names)
    pred = tmp_path / "pred"
    pred.mkdir()
    for case_id in cases:  # each label shifted by two voxels: distances that are not all 0
        label = nib.load(data / "labelsTr" / f"{case_id}.nii.gz")
        shifted = np.roll(np.asarray(label.dataobj), 2, axis=0)
        nib.save(nib.Nifti1Image(shifted, label.affine), pred / f"{case_id}.nii.gz")
    unseen = evaluate(pred, data, split="val", show_progress=False)
    capsys.readouterr()
    followed = evaluate(pred, data, split="val")
    stderr = capsys.readouterr().err
    assert class_lines(stderr) == [(case_id, n, classes) for case_id in cases for n in range(1, classes + 1)]
    assert stderr.index(f"evaluate {cases[0]} class {classes}/") < stderr.index(f"evaluate 1/{len(cases)} (")
    assert json.dumps(followed, sort_keys=True) == json.dumps(unseen, sort_keys=True)
    assert unseen["mean"]["hd95"] > 0
