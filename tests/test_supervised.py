"""The student U-Net (shared by `fit supervised` and `fit samatch`): frames, augmentation, learning."""

import numpy as np
import pytest
import torch

from fewsam.cache import EmbeddingCache
from fewsam.data import open_dataset, select_labelled
from fewsam.data.phantom import write_phantom_dataset
from fewsam.evaluate import evaluate
from fewsam.fitting import FitContext
from fewsam.labels import value_lut
from fewsam.methods import supervised
from fewsam.methods.student import (StudentConfig, build_unet, random_affine, student_image, student_label,
                                    validate_student, warp, warp_labels)
from fewsam.models.acceleration import resolve_acceleration
from fewsam.models.precision import resolve_precision
from fewsam.models.registry import _assemble
from fewsam.models.sam import Preprocessing
from fewsam.predict import predict
from fewsam.runs import prepare_run_dir, write_manifest

TINY_STUDENT = {"image_size": 64, "channels": (8, 16, 32, 64), "num_res_units": 1, "batch_size": 4}
TINY = StudentConfig(image_size=64, channels=(8, 16, 32, 64), num_res_units=1)


def tiny_sam():
    """A SamModel with a cheap stand-in encoder (real prompt encoder / decoder): fast to 'encode'."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Conv2d(3, 256, 1))
    return _assemble("tinysam", encoder, Preprocessing(256, "unit"))


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions on a busy 2-core machine: 2 OpenMP threads spin against other jobs
    (measured 1.85 s vs 0.03 s per tiny U-Net step), so these tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), n_train=4, n_val=2, slices=6, seed=1)


def context(data, tmp_path, n_cases=None, n_slices=None, precision="fp32"):
    """A fit's context on ``data`` with the tiny SAM; the labelled budget when one is given.
    ``precision`` as --precision names it: fp32, the reference, converts no encoder per test."""
    dataset = open_dataset(data)
    model = tiny_sam()
    labelled = select_labelled(dataset, n_cases=n_cases, n_slices=n_slices) if n_cases or n_slices else []
    cache = EmbeddingCache(tmp_path / "cache", model, resolve_precision(precision))
    return FitContext(dataset, model, cache, "cpu", show_progress=False, labelled=labelled,
                      val_ids=dataset.split("val"), acceleration=resolve_acceleration(precision))


def test_student_frame_roundtrip():
    image = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    x = student_image(image, 64)
    assert x.shape == (1, 64, 64) and float(x.min()) >= 0 and float(x.max()) <= 1
    rgb = np.repeat(image[..., None], 3, axis=2)
    assert torch.allclose(student_image(rgb, 64), x)
    label = np.zeros((20, 40), np.uint8)
    label[5:15, 10:30] = 3  # 10 x 20 block -> rows 10:30, cols 10:30 of the 40 x 40 frame
    lab = student_label(label, 40, value_lut([0, 1, 2, 3]))
    assert torch.equal(lab[10:30, 10:30], torch.full((20, 20), 1, dtype=torch.uint8) * 3)
    assert lab.sum().item() == 3 * 20 * 20


def test_identity_warp_keeps_images_and_labels():
    x = torch.rand(2, 1, 16, 16)
    y = torch.randint(0, 4, (2, 16, 16))
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).repeat(2, 1, 1)
    assert torch.allclose(warp(x, eye), x, atol=1e-5)
    assert torch.equal(warp_labels(y, eye), y)


def test_augmentation_moves_image_and_label_together():
    rng = np.random.default_rng(0)
    cfg = StudentConfig(image_size=32)
    labels = torch.zeros(4, 32, 32, dtype=torch.long)
    labels[:, 8:20, 10:16] = 2
    images = (labels == 2).float()[:, None]
    theta = random_affine(4, rng, cfg)
    wi, wl = warp(images, theta, nearest=True), warp_labels(labels, theta)
    assert torch.equal((wi[:, 0] > 0.5), wl == 2)
    padded = warp_labels(labels, torch.tensor([[[0.5, 0, 0], [0, 0.5, 0]]]).repeat(4, 1, 1) * 4, fill=255)
    assert (padded == 255).any()  # zooming out leaves the outside marked as fill


def test_supervised_learns_on_phantom_and_predicts(phantom, tmp_path, monkeypatch):
    ctx = context(phantom, tmp_path, n_cases=2)
    val_ids = ctx.val_ids
    cfg = supervised.SupervisedConfig(steps=60, lr=0.1, val_every=30, optimizer="sgd", **TINY_STUDENT)
    run_dir, _ = prepare_run_dir(tmp_path / "run", {"method": "supervised", "model": "tinysam",
                                                    "class_map": ctx.class_map.to_json(), "values": ctx.values,
                                                    **cfg.derived_record(0)})
    torch.manual_seed(0)
    untrained = validate_student(build_unet(TINY, 4), [ctx.dataset.load(c) for c in val_ids], TINY, ctx.values)
    result = supervised.fit(ctx, cfg, run_dir)
    write_manifest(run_dir)  # what api.fit does when a fit ends
    assert result.best_score > untrained["score"] + 0.2  # measured: ~0.05 -> ~0.33 after 60 steps
    def no_encoder(*args, **kwargs):
        raise AssertionError("a run that predicts from pixels resolved an encoder precision")

    monkeypatch.setattr("fewsam.predict.resolve_precision", no_encoder)
    written = predict(run_dir, phantom, tmp_path / "pred", show_progress=False)
    assert len(written) == len(val_ids)
    scores = evaluate(tmp_path / "pred", phantom, None, None, 1.0, False)
    assert scores["mean"]["dice"] == pytest.approx(result.best_score, abs=1e-6)


def test_validation_score_is_volume_dice(phantom, tmp_path):
    ctx = context(phantom, tmp_path)
    cases = [ctx.dataset.load(c) for c in ctx.dataset.split("val")]

    class Oracle(torch.nn.Module):  # predicts background everywhere
        def forward(self, x):
            out = torch.zeros(x.shape[0], 4, *x.shape[2:])
            out[:, 0] = 10
            return out

    assert validate_student(Oracle(), cases, TINY, ctx.values)["score"] == 0.0


@pytest.mark.parametrize("method", ["supervised", "fixmatch"])
def test_student_baselines_never_load_sam_weights(phantom, tmp_path, monkeypatch, method):
    """The U-Net baselines train where no SAM weights are installed (the config records none)."""
    from fewsam import api

    def no_weights(*args, **kwargs):
        raise AssertionError("a SAM model was loaded")

    from fewsam.methods.samatch import SamMatchConfig
    from fewsam.models import registry

    monkeypatch.setattr(registry, "load_model", no_weights)
    opts = api.FitOptions(data=phantom, run=tmp_path / "run", labeled_cases=1, cache=str(tmp_path / "c"),
                          show_progress=False)
    student = {"image_size": 64, "channels": (8, 16, 32, 64), "batch_size": 4, "steps": 2, "val_every": 2}
    if method == "supervised":
        api.fit("supervised", opts, supervised.SupervisedConfig(**student))
    else:
        api.fit("samatch", opts, SamMatchConfig(use_sam=False, unlabeled_batch=2, unlabeled_limit=4, **student))
    config = (tmp_path / "run" / "config.json").read_text()
    assert '"weights_sha256": null' in config and '"model": null' in config
    assert len(predict(tmp_path / "run", phantom, tmp_path / "pred", show_progress=False)) == 2


def test_student_optimiser_options():
    from fewsam.config import ConfigError
    from fewsam.train import make_optimizer

    fast = supervised.SupervisedConfig(steps=10).train_config(0)  # the default: AdamW 1e-3 + weight average 0.99
    assert (fast.optimizer, fast.lr, fast.ema, fast.schedule) == ("adamw", 1e-3, 0.99, "poly")
    assert isinstance(make_optimizer([torch.nn.Parameter(torch.zeros(1))], fast), torch.optim.AdamW)
    sgd = supervised.SupervisedConfig(optimizer="sgd").train_config(0)  # the paper's recipe, whole
    assert (sgd.optimizer, sgd.lr, sgd.ema, sgd.momentum) == ("sgd", 0.01, 0.0, 0.9)
    mixed = supervised.SupervisedConfig(lr=0.05, optimizer="sgd", ema=0.9).train_config(0)  # given values win
    assert (mixed.lr, mixed.ema) == (0.05, 0.9)
    with pytest.raises(ConfigError, match="--optimizer must be adamw or sgd, not 'lion'"):
        supervised.SupervisedConfig(optimizer="lion")
