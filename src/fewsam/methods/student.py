"""The image-side student shared by ``supervised`` and ``samatch``: a small 2D U-Net (MONAI) on
slices resized to a fixed square, its augmentations, validation and predictor.

Unlike the SAM-side methods the student sees pixels, not cached embeddings, so it may augment
freely. Every random choice comes from the numpy generator the training loop passes in (or
torch's RNG, which the loop checkpoints), so runs resume exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewsam.config import MAX_LR, PATIENCE_HELP, Config, ConfigError, option
from fewsam.data import load_labelled_case
from fewsam.data.intensity import scale_to_unit
from fewsam.data.types import Case, Dataset, SliceRef
from fewsam.errors import DataError
from fewsam.fitting import FitContext, refuse_background_only_validation
from fewsam.embedded import MIRROR_VIEWS, dihedral, undo_dihedral
from fewsam.inference import (POSTPROCESS, CavityRule, mirroring_choice, postprocess_volume, postprocessing_choice,
                              stack_volume)
from fewsam.labels import index_lut, value_lut
from fewsam.metrics import selection_score, volume_score
from fewsam.probabilities import ProbabilityStage
from fewsam.progress import say_once, tracked
from fewsam.models.acceleration import acceleration_of_run, prepare_student
from fewsam.runs import read_config
from fewsam.train import TrainConfig, load_best, refuse_idle_patience

# The student's optimiser recipes. AdamW + a weight average is the default because it converges
# within the CPU-length schedules fewsam targets (docs/results.md, SAM-Match); SGD with momentum,
# lr 0.01 and no average is the recipe of UniMatch / SAM-Match's ~30k-step runs.
STUDENT_RECIPES: dict[str, dict[str, float]] = {"adamw": {"lr": 1e-3, "ema": 0.99}, "sgd": {"lr": 0.01, "ema": 0.0}}


@dataclass(frozen=True)
class StudentConfig(Config):
    """The U-Net and its input size; augmentation strengths (weak = geometric, strong adds colour).
    What ``predict`` needs to rebuild the student is recorded as RUN/config.json["student"]."""

    image_size: int = option(256, "Student U-Net input: slices resized to SxS.", min=16)
    channels: tuple[int, ...] = option((16, 32, 64, 128, 256), "U-Net channels per level.", min=1, cli=False)
    num_res_units: int = option(1, "Residual units per U-Net block.", min=0, cli=False)
    rotate_deg: float = option(20.0, "Largest rotation of the weak view, degrees.", min=0.0, cli=False)
    scale_range: tuple[float, float] = option((0.9, 1.1), "Isotropic scale range of the weak view.", above=0.0,
                                              cli=False)
    flip: bool = option(True, "Random flips in the weak view.", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_levels()
        self._check_image_size()

    def _check_levels(self) -> None:
        """A U-Net has at least two levels, and a scale range runs from its low end to its high end: the
        network's builder and the augmentation otherwise refuse them at the fit's first step."""
        if len(self.channels) < 2:
            raise ConfigError(f"channels must list at least two levels (the U-Net joins each level to the one "
                              f"below), not {tuple(self.channels)}; e.g. (16, 32, 64, 128, 256)")
        low, high = self.scale_range
        if low > high:
            raise ConfigError(f"scale_range must run from low to high, not {tuple(self.scale_range)}; "
                              f"e.g. ({high}, {low})")

    def _check_image_size(self) -> None:
        """The U-Net halves its input once per level below the top and joins each level to the one
        above: a size those halvings do not divide leaves halves of unequal size, which ended the fit
        at its first step in a tensor-size traceback."""
        halvings = len(self.channels) - 1
        step = 2 ** halvings
        if self.image_size % step:
            nearest = max(step, (self.image_size + step // 2) // step * step)
            raise ConfigError(f"--image-size must be a multiple of {step} (the U-Net halves it {halvings} times), "
                              f"not {self.image_size}; e.g. {nearest}")

    def student(self) -> "StudentConfig":
        """Just the student's own fields (a method config inherits them and adds its recipe)."""
        return StudentConfig(**{f.name: getattr(self, f.name) for f in fields(StudentConfig)})


@dataclass(frozen=True)
class StudentFitConfig(StudentConfig):
    """The recipe of a U-Net student fit (``fit supervised``, and SAM-Match's student)."""

    steps: int = option(2000, "Training steps (batches).", min=1)
    optimizer: str = option("adamw", "Student optimiser: adamw (lr 1e-3, weight average 0.99; converges in "
                            "CPU-length runs) or sgd (the paper's: lr 0.01, no average; ~30k-step runs).",
                            choices=tuple(STUDENT_RECIPES))
    lr: float | None = option(None, "Learning rate, poly decay (default: the optimiser's).", above=0.0,
                              max=MAX_LR)
    ema: float | None = option(None, "Decay of a moving average of the weights, validated and kept, 0: off "
                               "(default: the optimiser's).", min=0.0, max=0.9999)
    batch_size: int = option(8, "Labelled slices per step.", min=1)
    val_every: int = option(200, "Steps between validations (each writes a resumable checkpoint).", min=1)
    patience: int = option(0, PATIENCE_HELP, min=0)

    def check_together(self) -> None:
        super().check_together()
        refuse_idle_patience(self.train_config(seed=0))  # the seed changes no step

    def train_config(self, seed: int) -> TrainConfig:
        """The optimiser with poly(0.9) decay, weight decay 1e-4, no warm-up, no clipping; ``lr``
        and ``ema`` left unset take the optimiser's recipe (``STUDENT_RECIPES``)."""
        recipe = STUDENT_RECIPES[self.optimizer]
        return TrainConfig(steps=self.steps, lr=recipe["lr"] if self.lr is None else self.lr,
                           optimizer=self.optimizer, momentum=0.9, weight_decay=1e-4, schedule="poly",
                           warmup_steps=0, val_every=self.val_every, grad_clip=0.0, seed=seed,
                           ema=recipe["ema"] if self.ema is None else self.ema, patience=self.patience)

    def derived_record(self, seed: int) -> dict:
        return {"train": asdict(self.train_config(seed)), "student": asdict(self.student())}


def build_unet(cfg: StudentConfig, n_outputs: int) -> nn.Module:
    """MONAI's 2D U-Net: 1 greyscale channel in, background + classes out."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=n_outputs, channels=tuple(cfg.channels),
                strides=(2,) * (len(cfg.channels) - 1), num_res_units=cfg.num_res_units, norm="batch")


# --- slices in the student's frame ------------------------------------------------------------

def student_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) or (H, W, 3) slice -> (1, size, size) float32, greyscale, min-max scaled to [0, 1]."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    t = scale_to_unit(torch.from_numpy(np.ascontiguousarray(arr))[None, None])
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def student_label(label: np.ndarray, size: int, lut: np.ndarray) -> torch.Tensor:
    """(H, W) label values -> (size, size) uint8 class indices (nearest neighbour)."""
    index = torch.from_numpy(lut[np.asarray(label, dtype=np.int64)].astype(np.float32))[None, None]
    return F.interpolate(index, size=(size, size), mode="nearest-exact")[0, 0].to(torch.uint8)


@dataclass
class SliceSet:
    """Slices as student tensors: images (N, 1, S, S); labels (N, S, S) uint8 indices or None.

    ``originals`` keeps each slice's original-resolution label (for pseudo-label quality) when
    asked for; ``shapes`` the original (H, W) of each slice.
    """

    refs: list[SliceRef]
    images: torch.Tensor
    labels: torch.Tensor | None
    shapes: list[tuple[int, int]] = field(default_factory=list)
    originals: list[np.ndarray] | None = None


def load_slices(dataset: Dataset, refs: Sequence[SliceRef], size: int, values: list[int],
                keep_originals: bool = False, with_label: bool = True) -> SliceSet:
    """Read the slices (each case once) into the student frame (``with_label=False``: images
    only, for a pool whose labels must not be read). A label's unannotated pixels (``Case.ignore``) are
    IGNORE, which no loss learns from."""
    cases: dict[str, Case] = {}
    images, labels, shapes, originals = [], [], [], []
    for ref in refs:
        if ref.case_id not in cases:
            cases.clear()  # refs come grouped by case in budget order: keep one case in memory
            cases[ref.case_id] = dataset.load(ref.case_id, with_label=with_label)
        case = cases[ref.case_id]
        lut = value_lut(values, case.ignore)
        image, label = case.slice_image(ref.z), case.slice_label(ref.z)
        images.append(student_image(image, size))
        shapes.append(tuple(image.shape[:2]))
        labels.append(None if label is None else student_label(label, size, lut))
        if keep_originals:
            originals.append(None if label is None else original_label(label, lut))
    has_labels = all(lab is not None for lab in labels) and labels
    return SliceSet(list(refs), torch.stack(images) if images else torch.zeros(0, 1, size, size),
                    torch.stack(labels) if has_labels else None, shapes, originals if keep_originals else None)


def original_label(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """A slice's label values as uint8 class indices at the slice's own size (``lut``: ``value_lut``)."""
    return lut[np.asarray(label, dtype=np.int64)].astype(np.uint8)


class PoolTruth(Sequence["np.ndarray | None"]):
    """Slices' labels as ``load_slices(keep_originals=True)`` gives them, read from the dataset when a
    slice's is asked for instead of held: SAM-Match scores each refresh's pseudo-labels against an
    unlabelled pool's labels where they exist, a slice at a time. Slices are asked for nearly in order, so
    the label volumes of the last ``CASES_KEPT`` cases read are kept; None for a slice of a case without
    a readable label (the pool is then not scored). A label's unannotated pixels (``Case.ignore``) are
    IGNORE, as ``load_slices`` makes them, so that a score can leave them out."""

    CASES_KEPT = 2

    def __init__(self, dataset: Dataset, refs: Sequence[SliceRef], values: list[int]) -> None:
        self.dataset, self.refs, self.values = dataset, list(refs), values
        self._labels: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}  # case -> (label volume, its lut)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> np.ndarray | None:  # type: ignore[override]
        ref = self.refs[index]
        read = self._volume(ref.case_id)
        if read is None:
            return None
        volume, lut = read
        return original_label(volume[ref.z], lut)

    def _volume(self, case_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        if case_id not in self._labels:
            while len(self._labels) >= self.CASES_KEPT:
                del self._labels[next(iter(self._labels))]
            self._labels[case_id] = self._read(case_id)
        return self._labels[case_id]

    def _read(self, case_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            case = self.dataset.load(case_id)
        except DataError as err:  # a label damaged since the fit started: the report goes without a score
            say_once(f"the unlabelled pool's labels cannot be read ({err}): its pseudo-labels are not scored",
                     key="pool-truth-unreadable")
            return None
        return None if case.label is None else (case.label, value_lut(self.values, case.ignore))


# --- augmentation -----------------------------------------------------------------------------

def random_affine(n: int, rng: np.random.Generator, cfg: StudentConfig) -> torch.Tensor:
    """(n, 2, 3) affine matrices for ``F.affine_grid``: rotation, isotropic scale, flips."""
    angle = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, n))
    scale = rng.uniform(cfg.scale_range[0], cfg.scale_range[1], n)
    fx = np.where(rng.random(n) < 0.5, -1.0, 1.0) if cfg.flip else np.ones(n)
    fy = np.where(rng.random(n) < 0.5, -1.0, 1.0) if cfg.flip else np.ones(n)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fy
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx, cos * fy
    return torch.from_numpy(theta)


def warp(x: torch.Tensor, theta: torch.Tensor, nearest: bool = False, fill: float = 0.0) -> torch.Tensor:
    """Apply affine ``theta`` to (N, C, S, S) images (bilinear) or label maps (``nearest``)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = x.float()
    if fill:  # outside the image: shift so that zero padding becomes `fill`
        return F.grid_sample(x - fill, grid, mode="nearest" if nearest else "bilinear",
                             padding_mode="zeros", align_corners=False) + fill
    return F.grid_sample(x, grid, mode="nearest" if nearest else "bilinear", padding_mode="zeros",
                         align_corners=False)


def warp_labels(labels: torch.Tensor, theta: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """(N, S, S) integer maps -> warped (N, S, S) long (nearest); outside the image -> ``fill``."""
    return warp(labels[:, None].float(), theta, nearest=True, fill=float(fill))[:, 0].round().long()


def strong_photometric(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """FixMatch-style strong view of (N, 1, S, S) images in [0, 1]: brightness/contrast jitter,
    Gaussian blur and cutout, each sample with its own random parameters."""
    out = []
    for img in x:
        if rng.random() < 0.8:
            img = img + rng.uniform(-0.2, 0.2)
        if rng.random() < 0.8:
            mean = img.mean()
            img = (img - mean) * rng.uniform(0.7, 1.3) + mean
        if rng.random() < 0.5:
            img = gaussian_blur(img, rng.uniform(0.1, 1.5))
        if rng.random() < 0.5:
            img = cutout(img, rng)
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1, S, S) image blurred with a separable Gaussian of ``sigma`` pixels."""
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(img[None], (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))[0]


def cutout(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Zero a random rectangle covering 2-40% of the image."""
    s = img.shape[-1]
    area = rng.uniform(0.02, 0.4) * s * s
    ratio = rng.uniform(0.3, 1 / 0.3)
    h, w = min(s, int(math.sqrt(area * ratio))), min(s, int(math.sqrt(area / ratio)))
    y, x = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
    img = img.clone()
    img[..., y:y + h, x:x + w] = 0.0
    return img


def augment_labelled(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator,
                     cfg: StudentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The weak (geometric) view of a labelled batch: images (N,1,S,S), labels (N,S,S) long."""
    theta = random_affine(len(images), rng, cfg)
    return warp(images, theta), warp_labels(labels, theta)


def draw_batch(rng: np.random.Generator, data: SliceSet, size: int) -> np.ndarray:
    """Indices of a batch of ``size`` distinct slices of ``data`` (all of them if it holds fewer)."""
    n = len(data.refs)
    return rng.choice(n, min(size, n), replace=False)


def weak_view(data: SliceSet, idx: np.ndarray, rng: np.random.Generator,
              cfg: StudentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The weak view (``augment_labelled``) of the slices ``idx`` of a labelled (or pseudo-labelled) set."""
    return augment_labelled(data.images[idx], data.labels[idx], rng, cfg)


# --- prediction and validation ----------------------------------------------------------------

PREDICT_BATCH = 16
"""Slices the student predicts together. Work that streams a volume's probabilities asks for them in
these same batches, so that a batch's arithmetic, and with it every probability, is unchanged."""


def predict_images(module: nn.Module, images: np.ndarray | list[np.ndarray], cfg: StudentConfig,
                   device: str = "cpu", batch_size: int = PREDICT_BATCH) -> list[torch.Tensor]:
    """Softmax probabilities (Q, H, W) at each slice's original size, for a list of 2D slices."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = torch.stack([student_image(img, cfg.image_size) for img in chunk]).to(device)
        with torch.no_grad():
            logits = module(x).float()
        for img, lg in zip(chunk, logits):
            full = F.interpolate(lg[None], size=tuple(img.shape[:2]), mode="bilinear", align_corners=False)
            out.append(full[0].softmax(dim=0).cpu())
    return out


def mirrored_probabilities(module: nn.Module, images: list[np.ndarray], cfg: StudentConfig,
                           device: str = "cpu") -> list[np.ndarray]:
    """Each slice's (Q, H, W) probabilities averaged over its four mirror images (``MIRROR_VIEWS``),
    each mapped back to the slice's own orientation: test-time mirroring from pixels, as nnU-Net does."""
    total: list[np.ndarray] | None = None
    for view in MIRROR_VIEWS:
        flipped = [dihedral(np.asarray(img)[None], view)[0] for img in images]
        probs = [undo_dihedral(p.numpy(), view) for p in predict_images(module, flipped, cfg, device)]
        total = probs if total is None else [t + p for t, p in zip(total, probs)]
    return [t / len(MIRROR_VIEWS) for t in total or []]


def streamed_probabilities(module: nn.Module, case: Case, cfg: StudentConfig, device: str = "cpu",
                           mirror: bool = False) -> Iterator[np.ndarray]:
    """Each slice's (Q, H, W) probabilities of one case (``mirror``: averaged over its mirror images) in
    z order, ``PREDICT_BATCH`` slices computed at a time and each let go once handed over: a long
    volume's are never all held (300 CT slices of 512 x 512 and 4 classes: 1.2 GB in float32, twice
    that while mirror images are summed). The batches are those of one call over the volume, so every
    number is the same."""
    for start in range(0, case.num_slices, PREDICT_BATCH):
        images = [case.slice_image(z) for z in range(start, min(start + PREDICT_BATCH, case.num_slices))]
        batch = mirrored_probabilities(module, images, cfg, device) if mirror else \
            [p.numpy() for p in predict_images(module, images, cfg, device)]
        batch.reverse()
        while batch:
            yield batch.pop()


def predict_case_labels(module: nn.Module, case: Case, cfg: StudentConfig, values: list[int],
                        device: str = "cpu", mirror: bool = False) -> np.ndarray:
    """(D, H, W) uint8 label values of one case (``mirror``: averaged over its mirror images)."""
    lut = index_lut(values)
    # map, not a list comprehension, whose loop variable would hold a slice while the next batch is made
    return stack_volume(list(map(lambda p: lut[p.argmax(axis=0)],
                                 streamed_probabilities(module, case, cfg, device, mirror))))


def validate_student(module: nn.Module, val_cases: list[Case], cfg: StudentConfig, values: list[int],
                     device: str = "cpu") -> dict[str, float]:
    """The selection score (``metrics.selection_score``) of the student on the validation volumes."""
    was_training = module.training
    module.eval()
    scores = [volume_score(predict_case_labels(module, case, cfg, values, device), case.label, values[1:],
                           case.ignore) for case in val_cases]
    module.train(was_training)
    return selection_score(scores)


def load_labelled(ctx: FitContext, cfg: StudentConfig) -> SliceSet:
    """The fit's labelled slices in the student frame (refused when any lacks its label)."""
    data = load_slices(ctx.dataset, ctx.labelled, cfg.image_size, ctx.values)
    if data.labels is None or not len(data.refs):
        raise DataError("the labelled set is empty or has slices without labels; "
                        "give --labeled-cases N or --labeled-slices K with labelled training data")
    check_labelled_classes(data.labels, ctx.values)
    return data


def check_labelled_classes(labels: torch.Tensor, values: list[int]) -> None:
    """Refuse labelled slices without any foreground, and say which classes they never show.

    Checked in the student frame, where a structure too small to survive the resize is as absent
    as one never labelled. With no foreground pixel at all a fit could only learn to predict
    background everywhere; a class that is absent is learnt from no label (at best from
    pseudo-labels), which the user must know before reading its scores as the method's."""
    present = set(torch.unique(labels).tolist())
    missing = [value for index, value in enumerate(values) if index > 0 and index not in present]
    size = labels.shape[-1]
    where = f"the labelled slices (as the student's {size}x{size} input) contain no pixel of class(es) {missing}"
    way_out = "label more slices, use more labelled cases or a larger --image-size"
    if len(missing) == len(values) - 1:
        raise DataError(f"{where}; {way_out}")
    if missing:
        say_once(f"{where}: no labelled pixel teaches the model these classes; {way_out}")


def load_val_cases(ctx: FitContext) -> list[Case]:
    """The validation volumes, each with its label (model selection needs them)."""
    cases = [load_labelled_case(ctx.dataset, cid, "select the model on") for cid in ctx.val_ids]
    refuse_background_only_validation(cases)
    return cases


def student_postprocessing_choice(module: nn.Module, val_cases: list[Case], cfg: StudentConfig, values: list[int],
                                  rule: CavityRule | None, mirroring: bool, device: str = "cpu",
                                  show_progress: bool = False, subjects: Sequence[str] | None = None
                                  ) -> dict[str, Any]:
    """RUN/postprocess.json of a student run: the cavity rule, the largest-component choice and, with
    ``mirroring``, test-time mirroring unless validation vetoes it (``mirroring_choice``; ``subjects``
    names each validation case's subject, so that one subject's cases make one pair)."""
    module.eval()
    single = [(case, predict_case_labels(module, case, cfg, values, device)) for case in val_cases]
    choice = postprocessing_choice(single, values, rule)
    if mirroring:
        mirrored = [(case, predict_case_labels(module, case, cfg, values, device, mirror=True))
                    for case in tracked(val_cases, "mirror val", show_progress)]
        choice = mirroring_choice(choice, postprocessing_choice(mirrored, values, rule), subjects)
    return choice


class StudentPredictor:
    """Predicts with a fitted U-Net student run (supervised, SAM-Match, distill): the best-validated
    U-Net, from pixels only, with the run's post-processing choice when it made one."""

    def __init__(self, run_dir: Path, device: str = "cpu") -> None:
        config = read_config(run_dir)
        self.cfg = StudentConfig.from_json(config["student"])
        self.values = list(config["values"])
        self.device = device
        module = build_unet(self.cfg, len(self.values)).to(device)
        module.load_state_dict(load_best(Path(run_dir))[0])
        # the path the run trained and validated on: predictions reproduce its validation
        self.module = prepare_student(module.eval(), acceleration_of_run(config, device))
        post = Path(run_dir) / POSTPROCESS
        choice = json.loads(post.read_text()) if post.exists() else {}
        self.mirror = bool(choice.get("mirror", False))
        self.largest_component = bool(choice.get("largest_component", False))
        rule = choice.get("cavity_rule")
        self.cavity_rule = None if rule is None else CavityRule(*rule)

    def predict_case(self, case: Case, slices: object = None) -> np.ndarray:
        volume = predict_case_labels(self.module, case, self.cfg, self.values, self.device, self.mirror)
        return self.postprocess(volume)

    def probabilities(self, case: Case) -> Iterator[np.ndarray]:
        """Each slice's (Q, H, W) class probabilities, as ``predict_case`` bases its labels on them, made a
        batch at a time as they are read (``streamed_probabilities``)."""
        return streamed_probabilities(self.module, case, self.cfg, self.device, self.mirror)

    def case_probabilities(self, case: Case, slices: object = None) -> Iterator[np.ndarray]:
        """``probabilities``, as ``fewsam predict --save-probabilities`` asks every predictor for them."""
        return self.probabilities(case)

    def labels_from(self, case: Case, slices: object, probabilities: Iterable[np.ndarray]) -> np.ndarray:
        """``predict_case``'s answer made from ``probabilities`` (``case_probabilities``, as they stream)."""
        lut = index_lut(self.values)
        # map, not a list comprehension, whose loop variable would hold a slice while the next batch is made
        return self.postprocess(stack_volume(list(map(lambda p: lut[p.argmax(axis=0)], probabilities))))

    def probability_stage(self, made_from: str = "the U-Net's softmax") -> ProbabilityStage:
        """What ``case_probabilities`` are, and what comes after them on the way to the labels."""
        after = (("the cavity rule",) if self.cavity_rule is not None else ()) + \
            (("the largest-component filter",) if self.largest_component else ())
        return ProbabilityStage(made_from + (", mirror-averaged" if self.mirror else ""), after)

    def postprocess(self, volume: np.ndarray) -> np.ndarray:
        """The run's post-processing of a (D, H, W) label volume: cavity rule, then largest components."""
        return postprocess_volume(volume, self.cavity_rule, self.largest_component, self.values)
