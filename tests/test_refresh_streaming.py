"""SAM-Match's pseudo-label refresh in bounded memory: the student's probabilities on the unlabelled
pool (ACDC's 1,244 slices are 1.1 GB of float32, a CT pool's tens of GB) are made a batch at a time and
let go slice by slice, through SAM's training on the student's labels and SAM's prompts alike, and the
pseudo-labels, the slices SAM trains on and RUN/pseudo_label_quality.json are byte for byte those made
from the whole pool's at once."""

import gc
import json

import numpy as np
import torch

from fewsam.data.types import SliceRef
from fewsam.embedded import EmbeddedSlice
from fewsam.labels import IGNORE
from fewsam.methods.samatch import QUALITY, SamMatchConfig
from fewsam.methods.samatch.pseudo_labels import PseudoLabeller, pooled_dice, student_probs, student_samples
from fewsam.methods.samatch.refresh import PSEUDO_DIR, PseudoLabelRefresh
from fewsam.methods.student import SliceSet, student_label
from fewsam.models.sam import PreprocessInfo
from fewsam.self_prompting import SAM_BATCH

BATCH = 16  # the student's batch in ``student_probs``
POOL = 2 * BATCH + 8  # three batches of probabilities; SAM's batches of prompts straddle them
VALUES = [0, 10, 20, 30]
SHAPE = (37, 45)  # each slice's original size: only the probabilities are (4, 37, 45) tensors
SIZE = 64  # the student's frame
INFO = PreprocessInfo(SHAPE, (210, 256), 256)
BLANK = (3, 17, 18, 30)  # nothing confident: no prompt, IGNORE everywhere
STEP = 8


class Alive:
    """The most probability tensors alive whenever the student predicts a batch, SAM answers a batch of
    prompts or SAM starts training on the student's labels (counted among all live tensors, so that no
    wrapper holds one)."""

    def __init__(self) -> None:
        self.most = 0
        self.looks = 0

    def look(self) -> None:
        shape = (len(VALUES), *SHAPE)
        alive = sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and tuple(o.shape) == shape)
        self.most, self.looks = max(self.most, alive), self.looks + 1


class IntensityBands(torch.nn.Module):
    """A stand-in student: each class the argmax in a band of intensity, some confident, some not."""

    def __init__(self, alive: Alive | None = None) -> None:
        super().__init__()
        self.alive = alive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alive is not None:
            self.alive.look()
        centres = torch.linspace(0.0, 1.0, len(VALUES)).view(1, -1, 1, 1)
        return -((x - centres) ** 2) * 40.0


class LearningSam:
    """A stand-in for SAM's prompted decoder whose masks follow each prompt's box and click, the slice's
    embedding and the other prompts of its batch, and what training on the student's labels taught it
    (``learnt``): the labels are those of the whole pool only if SAM answers after that, in the same batches."""

    def __init__(self, alive: Alive | None = None) -> None:
        self.alive, self.learnt = alive, 0.0

    def predict_prompted(self, embeddings: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor,
                         point_labels: torch.Tensor) -> torch.Tensor:
        if self.alive is not None:
            self.alive.look()
        grid = torch.arange(64, dtype=torch.float32) * 4 + 2  # cell centres in the 256-pixel frame
        x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
        inside = ((grid.view(1, 1, -1) >= x0) & (grid.view(1, 1, -1) <= x1)
                  & (grid.view(1, -1, 1) >= y0) & (grid.view(1, -1, 1) <= y1)).float()
        clicks = (points * point_labels[..., None]).sum(dim=(1, 2)).view(-1, 1, 1) / 256
        texture = (embeddings[:, 0] - embeddings[:, 0].mean()) * 10
        return (inside - 0.5 + texture + texture.mean(dim=0) + 0.01 * clicks - self.learnt)[:, None]


class SamLearning:
    """A stand-in for SAM's training on the student's labels: keeps the student's slices it was given
    and moves SAM's masks."""

    def __init__(self, sam: LearningSam, alive: Alive | None = None) -> None:
        self.sam, self.alive, self.samples = sam, alive, []

    def run(self, step: int, samples: list[EmbeddedSlice]) -> None:
        if self.alive is not None:
            self.alive.look()
        self.samples = samples
        self.sam.learnt = 0.2


def pool() -> tuple[SliceSet, list[EmbeddedSlice]]:
    """``POOL`` slices of intensity ramps, each shifted, and their ground truth and embeddings."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    images, originals, slices = [], [], []
    for i in range(POOL):
        image = np.zeros((SIZE, SIZE)) if i in BLANK else np.clip(0.6 * xx + 0.5 * yy - 0.1 + 0.02 * (i % 7), 0, 1)
        images.append(torch.from_numpy(image).float()[None])
        originals.append(rng.integers(0, len(VALUES), SHAPE).astype(np.uint8))
        embedding = (0.05 * rng.standard_normal((2, 64, 64))).astype(np.float16)  # texture about +-0.5
        slices.append(EmbeddedSlice(SliceRef("c", i), embedding, INFO, None, None))
    refs = [s.ref for s in slices]
    return SliceSet(refs, torch.stack(images), None, [SHAPE] * POOL, originals), slices


def whole_pool_refresh(cfg: SamMatchConfig, data: SliceSet, slices: list[EmbeddedSlice]
                       ) -> tuple[torch.Tensor, list[EmbeddedSlice], dict]:
    """The refresh computed from the whole pool's probabilities at once: (labels, the slices SAM trained
    on, the quality record), what the refresh must reproduce, bit for bit."""
    probs = student_probs(IntensityBands(), data, "cpu")
    sam = LearningSam()
    samples = student_samples(probs, slices, VALUES, cfg.threshold)
    sam.learnt = 0.2  # what training on the student's labels taught SAM
    refined, prompts = PseudoLabeller(sam, slices, cfg, len(VALUES)).refine(probs)
    identity = np.arange(256, dtype=np.int64)
    labels = torch.stack([torch.full((SIZE, SIZE), IGNORE, dtype=torch.uint8) if lab is None
                          else student_label(lab, SIZE, identity) for lab in refined])
    student = [p.argmax(dim=0).numpy().astype(np.uint8) for p in probs]
    kept = [i for i, lab in enumerate(refined) if lab is not None]
    gts = data.originals
    quality = {"step": STEP, "slices": POOL, "refined_slices": len(kept), "prompts": sum(prompts),
               "student_all": pooled_dice(student, gts, len(VALUES)),
               "student_refined": pooled_dice([student[i] for i in kept], [gts[i] for i in kept], len(VALUES)),
               "sam_refined": pooled_dice([refined[i] for i in kept], [gts[i] for i in kept], len(VALUES))}
    return labels, samples, quality


def test_a_refresh_holds_a_batch_of_the_pools_probabilities_and_labels_as_the_whole_pool_does(tmp_path):
    cfg = SamMatchConfig(threshold=0.9, image_size=SIZE, sam_round_steps=2)
    data, slices = pool()
    expected_labels, expected_samples, expected_quality = whole_pool_refresh(cfg, data, slices)
    alive = Alive()
    sam = LearningSam(alive)
    learning = SamLearning(sam, alive)
    refresh = PseudoLabelRefresh(IntensityBands(alive), data, PseudoLabeller(sam, slices, cfg, len(VALUES)), learning,
                                 cfg, VALUES, tmp_path, "cpu")
    labels = refresh.refresh(STEP, tmp_path / PSEUDO_DIR / f"step_{STEP:07d}.pt")

    assert labels.dtype == torch.uint8 and torch.equal(labels, expected_labels)
    assert bool((labels == IGNORE).all(dim=(1, 2))[list(BLANK)].all())  # the test has slices SAM left alone...
    assert 0 < expected_quality["refined_slices"] < POOL and expected_quality["prompts"] > SAM_BATCH  # ...and others
    assert len(learning.samples) == len(expected_samples) > 0
    for got, want in zip(learning.samples, expected_samples):
        assert got.ref == want.ref and np.array_equal(got.label, want.label)
        assert np.array_equal(got.label_frame, want.label_frame)
    written = json.loads((tmp_path / QUALITY).read_text(encoding="utf-8"))
    assert written == [expected_quality]
    saved = torch.load(tmp_path / PSEUDO_DIR / f"step_{STEP:07d}.pt", weights_only=True)
    assert saved["step"] == STEP and torch.equal(saved["labels"], expected_labels)
    assert alive.looks > 2 * 3  # two passes of three batches, SAM's training, SAM's batches
    assert alive.most <= BATCH  # the whole pool's: POOL
