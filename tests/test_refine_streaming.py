"""Long volumes' probabilities in bounded memory: SAM-Match's test-time refinement (``predict
--refine-with-sam`` / ``--refine-if-better``), few-shot SAM's refinement, a U-Net student's predictions
and a distill run's teacher blend make and use them a batch of slices at a time (a volume's, 300 CT slices of 512 x 512 and 4 classes, are
1.2 GB of float32), and their labels are those computed from the whole volume's at once."""

import weakref
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
import torch

import fewsam.embedded as embedded
import fewsam.methods.fewshot as fewshot
import fewsam.methods.samatch.refine as refine
import fewsam.methods.student as student
from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset
from fewsam.data.phantom import PHANTOM_CLASSES, write_phantom_dataset
from fewsam.data.types import Case
from fewsam.embedded import CaseSlices, embed_case
from fewsam.inference import stack_volume
from fewsam.labels import index_lut
from fewsam.methods.samatch import SamMatchConfig
from fewsam.methods.samatch.refine import SamRefinedPredictor, choose_refinement
from fewsam.methods.student import PREDICT_BATCH, StudentConfig, StudentPredictor, predict_images
from fewsam.models.precision import FP32
from fewsam.models.sam import postprocess_logits
from fewsam.prompts import box_from_mask, click_prompts, stack_clicks
from fewsam.runs import write_json
from fewsam.self_prompting import (SAM_BATCH, SelfPromptRules, compose_pseudo_label, ignore_unprompted, merge_refined,
                                   prompt_regions)
from test_supervised import one_thread, tiny_sam  # noqa: F401 - autouse fixture: small steps on a busy machine

DEPTH = PREDICT_BATCH + 6  # two batches of probabilities (16, 6); SAM's batches of prompts straddle them
VALUES = [0, *PHANTOM_CLASSES]
FEWSHOT_BATCH = 8  # the few-shot decoder's batch in ``slice_probabilities``


class IntensityBands(torch.nn.Module):
    """A stand-in student: each class the argmax in a band of intensity, so every slice has several
    classes, some confident and some not, in regions that differ from slice to slice."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.linspace(0.0, 1.0, len(VALUES)).view(1, -1, 1, 1) + self.shift
        return -((x - centres) ** 2) * 40.0


class BatchMixingSam:
    """A stand-in for SAM's prompted decoder, cheap, whose masks follow each prompt's box, click and
    slice and also the other prompts of its batch (their mean embedding): refined labels then equal
    those of the whole volume only if SAM is asked in the same batches. Logits (B, 1, 64, 64)."""

    def predict_prompted(self, embeddings: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor,
                         point_labels: torch.Tensor) -> torch.Tensor:
        grid = torch.arange(64, dtype=torch.float32) * 4 + 2  # cell centres in the 256-pixel frame
        x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
        inside = ((grid.view(1, 1, -1) >= x0) & (grid.view(1, 1, -1) <= x1)
                  & (grid.view(1, -1, 1) >= y0) & (grid.view(1, -1, 1) <= y1)).float()
        clicks = (points * point_labels[..., None]).sum(dim=(1, 2)).view(-1, 1, 1) / 256
        texture = (embeddings[:, 0] - embeddings[:, 0].mean()) * 10  # about +-0.5: flips pixels of the box
        return (inside - 0.5 + texture + texture.mean(dim=0) + 0.01 * clicks)[:, None]


def _predictor(threshold: float = 0.4) -> SamRefinedPredictor:
    """A SAM-Match run's refined predictor without a fit: the stand-in student and SAM."""
    unet = StudentPredictor.__new__(StudentPredictor)
    unet.cfg, unet.values, unet.device = StudentConfig(image_size=64), VALUES, "cpu"
    unet.module = IntensityBands()
    predictor = SamRefinedPredictor.__new__(SamRefinedPredictor)
    predictor.student, predictor.sam, predictor.device = unet, BatchMixingSam(), "cpu"
    predictor.cfg = SamMatchConfig(threshold=threshold)
    return predictor


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("long"), n_train=1, n_val=1, slices=DEPTH, seed=3)


def _whole_volume_labels(sam, cfg, probs: list[torch.Tensor], slices) -> tuple[np.ndarray, np.ndarray]:
    """(model alone, refined by ``sam``) label volumes computed with every slice's probabilities at
    once, SAM's prompts ``SAM_BATCH`` at a time in slice order: what streaming must reproduce, bit for bit."""
    regions = [prompt_regions(p, cfg.threshold, cfg.prompt_region) for p in probs]
    jobs = [(i, k, mask) for i, found in enumerate(regions) for k, mask in found]
    logits: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
    with torch.no_grad():
        for start in range(0, len(jobs), SAM_BATCH):
            part = jobs[start:start + SAM_BATCH]
            emb = torch.stack([slices[i].embedding_tensor() for i, _, _ in part])
            boxes = np.stack([box_from_mask(m, slices[i].info, cfg.box_margin) for i, _, m in part])
            points, labels = stack_clicks([click_prompts(m, [o for j, o in regions[i] if j != k], slices[i].info,
                                                         cfg.prompt_clicks) for i, k, m in part])
            out = sam.predict_prompted(emb, boxes=torch.from_numpy(boxes), points=points, point_labels=labels)
            for (i, k, _), lg in zip(part, out):
                logits[i][k] = postprocess_logits(lg[None].float(), slices[i].info)[0, 0]
    lut, alone, refined = index_lut(VALUES), [], []
    for i, p in enumerate(probs):
        argmax, prompted = p.argmax(dim=0).numpy(), [k for k, _ in regions[i]]
        label = ignore_unprompted(compose_pseudo_label(logits[i], len(VALUES), cfg.background, cfg.overlap),
                                  argmax, prompted) if prompted else None
        alone.append(lut[argmax])
        refined.append(lut[merge_refined(argmax, label)])
    return stack_volume(alone), stack_volume(refined)


BLANK = (3, 4, 5, 20)  # slices with nothing to prompt SAM with, as outside the body: answered at once


def _with_blank_slices(case: Case, blank: tuple[int, ...]) -> Case:
    image = case.image.copy()
    image[list(blank)] = 0
    return replace(case, image=image)


def test_streamed_refinement_equals_the_whole_volume_refinement(data, tmp_path):
    dataset = open_dataset(data)
    case = _with_blank_slices(dataset.load(dataset.split("val")[0]), BLANK)
    predictor = _predictor(threshold=0.9)  # two or three classes confident, by slice: SAM's batches straddle slices
    cache = EmbeddingCache(tmp_path / "cache", tiny_sam(), FP32)
    probs = predict_images(predictor.student.module, [case.slice_image(z) for z in range(case.num_slices)],
                           predictor.student.cfg)
    expected_student, expected_refined = _whole_volume_labels(predictor.sam, predictor.cfg, probs,
                                                              embed_case(case, cache))
    student, refined = predictor.predict_both(case, CaseSlices(case, cache, streamed=True))
    assert np.array_equal(student, expected_student) and student.dtype == expected_student.dtype
    assert np.array_equal(refined, expected_refined) and refined.dtype == expected_refined.dtype
    assert not np.array_equal(refined, student)  # SAM changed labels: the comparison has something to compare
    assert np.array_equal(refined[list(BLANK)], student[list(BLANK)])


class Alive:
    """Counts the student's (and a teacher's) probabilities and the slices' embeddings still alive whenever
    SAM answers a batch of prompts or a model predicts: the most of each held at once."""

    def __init__(self) -> None:
        self.probabilities: list[weakref.ref] = []
        self.embeddings: list[weakref.ref] = []
        self.teacher: list[weakref.ref] = []
        self.most = {"probabilities": 0, "embeddings": 0, "teacher": 0}

    def look(self) -> None:
        for name, refs in (("probabilities", self.probabilities), ("embeddings", self.embeddings),
                           ("teacher", self.teacher)):
            self.most[name] = max(self.most[name], sum(ref() is not None for ref in refs))

    def after(self, fn, refs: list[weakref.ref], look_after: bool = False):
        """``fn`` counting what was alive when it was called (and, ``look_after``, with what it made)."""
        def counted(*args, **kwargs):
            self.look()
            made = fn(*args, **kwargs)
            refs.extend(weakref.ref(item) for item in made)
            if look_after:
                self.look()
            return made
        return counted


def test_refining_a_long_volume_holds_a_batch_of_probabilities_and_embeddings(data, tmp_path, monkeypatch):
    """``--refine-if-better`` decides on the run's validation volumes, refining each as ``predict`` does."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json(run_dir / "config.json", {"method": "samatch", "data": str(data), "val_split": "val"})
    predictor = _predictor()
    alive = Alive()
    counted = alive.after(student.predict_images, alive.probabilities)
    monkeypatch.setattr(student, "predict_images", counted)
    monkeypatch.setattr(refine, "predict_images", counted, raising=False)  # where refine.py took it by name
    monkeypatch.setattr(embedded, "embed_case", alive.after(embedded.embed_case, alive.embeddings))
    monkeypatch.setattr(refine, "embed_case", embedded.embed_case, raising=False)
    sam = predictor.sam
    monkeypatch.setattr(sam, "predict_prompted", alive.after(sam.predict_prompted, []))
    choice = choose_refinement(run_dir, predictor, EmbeddingCache(tmp_path / "cache", tiny_sam(), FP32),
                               show_progress=False)
    assert choice["cases"] == 1 and len(alive.probabilities) == DEPTH
    assert alive.most["probabilities"] <= PREDICT_BATCH  # the volume's: DEPTH
    assert alive.most["embeddings"] <= SAM_BATCH  # the volume's: DEPTH


class ChannelDecoder(torch.nn.Module):
    """A stand-in few-shot decoder: class logits = the first embedding channels, upsampled."""

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        channels = embeddings[:, : tokens.shape[0]]
        return torch.nn.functional.interpolate((channels - channels.mean()) * 200.0, size=(256, 256),
                                               mode="bilinear")


def test_few_shot_sam_refinement_refines_the_decoders_probabilities_as_they_come(data, tmp_path, monkeypatch):
    """Few-shot SAM's test-time refinement (a run whose validation chose it): the decoder's probabilities
    of a long volume, ``FEWSHOT_BATCH`` slices at a time, are refined as they come, as a whole volume's were."""
    dataset = open_dataset(data)
    case = _with_blank_slices(dataset.load(dataset.split("val")[0]), BLANK)
    cache, sam = EmbeddingCache(tmp_path / "cache", tiny_sam(), FP32), BatchMixingSam()
    decoder, tokens = ChannelDecoder(), torch.zeros(len(VALUES), 1, 256)
    held = embed_case(case, cache)
    probs = [torch.from_numpy(p) for p in fewshot.slice_probabilities(decoder, tokens, held)]
    expected = _whole_volume_labels(sam, SelfPromptRules(), probs, held)
    alive = Alive()
    monkeypatch.setattr(fewshot, "_batch_probabilities", alive.after(fewshot._batch_probabilities, alive.probabilities))
    monkeypatch.setattr(sam, "predict_prompted", alive.after(sam.predict_prompted, []))
    slices = CaseSlices(case, cache, streamed=True)
    refined = fewshot.sam_refined_volume(sam, slices, fewshot.slice_probabilities(decoder, tokens, slices), VALUES)
    assert np.array_equal(refined, expected[1]) and not np.array_equal(refined, expected[0])
    assert len(alive.probabilities) == DEPTH and alive.most["probabilities"] <= FEWSHOT_BATCH  # the volume's: DEPTH


@pytest.mark.parametrize("mirror", [False, True])
def test_a_student_predicts_a_long_volume_from_a_batch_of_probabilities_at_a_time(data, monkeypatch, mirror):
    """``fewsam predict`` of a supervised, SAM-Match or distill run, and its validation during the fit."""
    dataset = open_dataset(data)
    case = dataset.load(dataset.split("val")[0])
    module, cfg = IntensityBands(), StudentConfig(image_size=64)
    images = [case.slice_image(z) for z in range(case.num_slices)]
    whole = student.mirrored_probabilities(module, images, cfg) if mirror else \
        [p.numpy() for p in predict_images(module, images, cfg)]
    expected = stack_volume([index_lut(VALUES)[p.argmax(axis=0)] for p in whole])
    del whole
    alive = Alive()
    maker = "mirrored_probabilities" if mirror else "predict_images"  # what a volume's probabilities came from
    monkeypatch.setattr(student, maker, alive.after(getattr(student, maker), alive.probabilities, look_after=True))
    labels = student.predict_case_labels(module, case, cfg, VALUES, mirror=mirror)
    assert np.array_equal(labels, expected) and labels.dtype == expected.dtype
    assert len(alive.probabilities) == DEPTH and alive.most["probabilities"] <= PREDICT_BATCH  # the volume's: DEPTH


class SwappingTeacher:
    """A stand-in distill teacher whose probabilities are made as they are read (as few-shot SAM's
    are): bands beside the student's on even slices (the blend averages them, moving boundaries), the
    classes swapped on odd ones (the blend keeps the student's); ``alive`` counts them."""

    def __init__(self, case: Case, alive: Alive) -> None:
        self.case, self.alive = case, alive

    def probabilities(self, slices):
        cfg = StudentConfig(image_size=64)
        for z in range(self.case.num_slices):
            probs = predict_images(IntensityBands(shift=0.03), [self.case.slice_image(z)], cfg)[0].numpy()
            probs = probs if z % 2 == 0 else probs[[0, 2, 1, 3]]
            self.alive.teacher.append(weakref.ref(probs))
            self.alive.look()
            yield probs


def test_a_distill_run_blends_a_long_volume_as_its_probabilities_come(data, monkeypatch):
    """``fewsam predict`` of a distill run that kept the teacher blend (its choice on validation blends alike)."""
    from fewsam.methods.distill import BlendedPredictor, blended_volume

    dataset = open_dataset(data)
    case = dataset.load(dataset.split("val")[0])
    predictor = BlendedPredictor.__new__(BlendedPredictor)
    predictor.student = StudentPredictor.__new__(StudentPredictor)
    predictor.student.module, predictor.student.cfg = IntensityBands(), StudentConfig(image_size=64)
    predictor.student.values, predictor.student.device, predictor.student.mirror = VALUES, "cpu", False
    predictor.student.largest_component, predictor.student.cavity_rule = False, None
    predictor.teacher = SwappingTeacher(case, Alive())
    expected = blended_volume(list(predictor.student.probabilities(case)),
                              list(predictor.teacher.probabilities([])), VALUES)
    alone = stack_volume([index_lut(VALUES)[p.argmax(axis=0)] for p in predictor.student.probabilities(case)])
    alive = predictor.teacher.alive = Alive()
    monkeypatch.setattr(student, "predict_images",
                        alive.after(student.predict_images, alive.probabilities, look_after=True))
    labels = predictor.predict_case(case, [])
    assert np.array_equal(labels, expected)
    assert not np.array_equal(labels[::2], alone[::2]) and np.array_equal(labels[1::2], alone[1::2])
    assert len(alive.probabilities) == len(alive.teacher) == DEPTH
    assert alive.most["probabilities"] <= PREDICT_BATCH + 1  # a batch, and the slice being blended; the volume's: DEPTH
    assert alive.most["teacher"] <= 2  # the volume's: DEPTH
