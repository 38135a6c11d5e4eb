"""FewMatch: the consistency rules on embeddings (dropout, CutMix, confidence, padding) and a phantom fit."""

import json

import numpy as np
import pytest
import torch
from types import SimpleNamespace

from fewsam.losses import consistency_ce
from tests.conftest import fit_twice_identically
from fewsam.methods.fewmatch import (FewMatchConfig, FewMatchTask, channel_dropout, cutmix_boxes, padding_mask,
                                     paste_boxes)


def test_channel_dropout_zeroes_whole_channels_and_keeps_the_mean():
    emb = torch.ones(3, 256, 8, 8)
    out = channel_dropout(emb, 0.5, np.random.default_rng(0))
    per_channel = out.flatten(2)
    assert torch.all(per_channel.amax(dim=2) == per_channel.amin(dim=2))  # a channel is dropped whole or kept
    kept = per_channel[:, :, 0] > 0
    assert torch.allclose(out[kept.nonzero(as_tuple=True)], torch.full((), 2.0))
    assert 0.35 < kept.float().mean() < 0.65
    assert channel_dropout(emb, 0.0, np.random.default_rng(0)) is emb


@pytest.mark.parametrize("grid", [16, 64])
def test_cutmix_boxes_lie_inside_the_grid_and_cover_a_quarter_to_a_half(grid):
    boxes = cutmix_boxes(200, grid, 1.0, np.random.default_rng(1))
    for y, x, h, w in boxes:
        assert 0 <= y and y + h <= grid and 0 <= x and x + w <= grid
        assert 0.15 <= h * w / grid ** 2 <= 0.6
    assert cutmix_boxes(50, grid, 0.0, np.random.default_rng(1)) == [None] * 50


def test_paste_boxes_moves_pixels_and_their_targets_together():
    emb = torch.stack([torch.full((2, 4, 4), 1.0), torch.full((2, 4, 4), 2.0)])
    labels = torch.stack([torch.full((16, 16), 1), torch.full((16, 16), 2)])
    conf = torch.stack([torch.full((16, 16), 0.1), torch.full((16, 16), 0.9)])
    e, l, c = paste_boxes(emb, labels, conf, [(1, 2, 2, 1), None], np.array([1, 0]))
    assert torch.equal(e[0, :, 1:3, 2:3], torch.full((2, 2, 1), 2.0)) and float(e[0].sum()) == 2 * (14 + 2 * 2)
    assert torch.equal(l[0, 4:12, 8:12], torch.full((8, 4), 2)) and int((l[0] == 2).sum()) == 32
    assert torch.equal(c[0, 4:12, 8:12], torch.full((8, 4), 0.9))
    assert torch.equal(e[1], emb[1]) and torch.equal(l[1], labels[1])  # no box: untouched
    assert torch.equal(emb[0], torch.full((2, 4, 4), 1.0))  # inputs are not modified in place


def test_padding_never_supervises():
    slices = [SimpleNamespace(info=SimpleNamespace(resized_hw=(10, 16))),
              SimpleNamespace(info=SimpleNamespace(resized_hw=(16, 6)))]
    mask = padding_mask(slices, 16)
    assert mask[0, :10].all() and not mask[0, 10:].any()
    assert mask[1, :, :6].all() and not mask[1, :, 6:].any()


class _Constant(torch.nn.Module):
    """A 'decoder' whose logits favour class 1 with a set margin everywhere."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = torch.nn.Parameter(torch.tensor(margin))

    def forward(self, emb, tokens):
        b, s = emb.shape[0], emb.shape[-1] * 4
        logits = torch.zeros(b, 3, s, s)
        logits[:, 1] = self.margin
        return logits


def _task(margin: float, threshold: float) -> FewMatchTask:
    cfg = FewMatchConfig(threshold=threshold, unlabeled_batch=2, cutmix=0.0, feature_dropout=0.0)
    slices = [SimpleNamespace(embedding=np.ones((4, 8, 8), np.float16), info=SimpleNamespace(resized_hw=(32, 32)),
                              embedding_tensor=lambda: torch.ones(4, 8, 8)) for _ in range(3)]
    shots = [np.ones((1, 4), np.float32)] * 3
    return FewMatchTask(_Constant(margin), [], shots, cfg, None, torch.zeros(3, 2, 4), [], [0, 1, 2],
                        unlabelled=slices)


def test_only_confident_pixels_teach():
    """The weak view's argmax (class 1) supervises the strong view only where its confidence passes."""
    loss, confident = _task(margin=4.0, threshold=0.9).consistency_loss(np.random.default_rng(0))
    logits = torch.zeros(2, 3, 32, 32)
    logits[:, 1] = 4.0
    expected = consistency_ce(logits, torch.ones(2, 32, 32, dtype=torch.long), torch.ones(2, 32, 32, dtype=torch.bool))
    assert confident == 1.0 and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss, confident = _task(margin=1.0, threshold=0.9).consistency_loss(np.random.default_rng(0))
    assert confident == 0.0 and loss.item() == 0.0  # softmax max ~0.58 < 0.9: nothing teaches


def test_fewmatch_on_a_phantom_is_deterministic_and_uses_the_pool(tiny_sam_phantom, tmp_path):
    """fit -> predict through the CLI; two fits with one seed give the same weights; the log shows
    the consistency loss after the warm-up. The tiny SAM stands in for LiteMedSAM (the real encoder's
    FewMatch is tested on real ACDC slices)."""
    from typer.testing import CliRunner

    from fewsam.cli import app

    data = tiny_sam_phantom
    runner = CliRunner()
    fit = ["fit", "fewmatch", "--data", str(data), "--labeled-slices", "2", "--views", "2", "--steps", "4",
           "--val-every", "2", "--batch-size", "2", "--unlabeled-batch", "2", "--warmup-steps", "2",
           "--ramp-steps", "2", "--threshold", "0", "--cache", str(tmp_path / "cache"), "--quiet",
           "--precision", "fp32"]  # the reference: no encoder conversion for a four-step fit
    fit_twice_identically(fit, tmp_path)
    log = [json.loads(line) for line in (tmp_path / "run_a" / "fit_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss_u" in r]
    assert steps and min(r["step"] for r in steps) == 3 and all(r["confident"] == 1.0 for r in steps)
    config = json.loads((tmp_path / "run_a" / "config.json").read_text())
    assert config["method"] == "fewmatch" and config["fewmatch"]["unlabeled_batch"] == 2

    pred = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(tmp_path / "run_a"), "--data", str(data), "--split", "val",
                                 "--out", str(pred), "--cache", str(tmp_path / "cache"), "--quiet",
                                 "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert (pred / "phantom_002.nii.gz").exists()
