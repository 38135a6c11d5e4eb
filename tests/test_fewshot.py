"""Few-shot SAM: the prototype decoder, the prompt bank, views, post-processing, and a real end-to-end run."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from fewsam.embedded import dihedral
from fewsam.errors import DataError
from fewsam.inference import choose_postprocessing, keep_largest_components
from fewsam.methods.fewshot import PrototypeDecoder, _kmeans, bank_tokens, shot_prototypes
from fewsam.models.registry import load_model
from tests.conftest import fit_twice_identically


@pytest.fixture(scope="module")
def lite():
    return load_model("litemedsam")


def test_dihedral_views_are_the_eight_symmetries():
    a = np.arange(12).reshape(1, 3, 4)
    views = [dihedral(a, k) for k in range(8)]
    assert np.array_equal(views[0], a)
    assert len({v.tobytes() + bytes(v.shape) for v in views}) == 8
    assert views[1].shape == (1, 4, 3) and views[4].shape == (1, 4, 3)
    rgb = np.zeros((1, 3, 4, 3))
    assert dihedral(rgb, 4).shape == (1, 4, 3, 3) and dihedral(rgb, 5).shape == (1, 3, 4, 3)


def test_prototype_decoder_shapes_and_gradients(lite):
    decoder = PrototypeDecoder(lite, num_queries=3)
    emb = torch.randn(2, 256, 64, 64)
    tokens = torch.randn(3, 2, 256)
    logits = decoder(emb, tokens)
    assert logits.shape == (2, 3, 256, 256)
    logits[:, 1].mean().backward()
    assert decoder.query_embed.grad is not None and decoder.query_embed.grad.abs().sum() > 0
    assert all(p.grad is not None for p in decoder.mask_decoder.output_upscaling.parameters())


def _slice(embedding, label):
    from types import SimpleNamespace

    return SimpleNamespace(embedding=embedding, label_frame=label)


def test_shot_prototypes_pool_each_region():
    emb = np.zeros((2, 64, 64), np.float32)
    emb[0, :32] = 1.0  # channel 0 is 1 on the top half
    emb[1] = 5.0
    label = np.zeros((256, 256), np.uint8)
    label[:128] = 1  # class 1 = top half (64x64 grid: rows 0-31)
    shots = shot_prototypes([_slice(emb, label)], [0, 1])
    np.testing.assert_allclose(shots[1][0], [1.0, 5.0])
    np.testing.assert_allclose(shots[0][0], [0.0, 5.0])
    with pytest.raises(DataError, match="no pixel of class"):
        shot_prototypes([_slice(emb, label)], [0, 1, 2])


def test_a_class_the_labelled_slices_lack_is_named_not_given_by_its_index():
    """With classes 1, 2 and 5 (nnU-Net labels need not be consecutive), missing LV was reported as
    class 3, a class the dataset does not have."""
    emb = np.ones((2, 64, 64), np.float32)
    label = np.zeros((256, 256), np.uint8)
    label[:64], label[64:128] = 1, 2  # indices of RV and Myo; LV (index 3, value 5) never drawn
    with pytest.raises(DataError, match=r"no pixel of class\(es\) LV \(5\);"):
        shot_prototypes([_slice(emb, label)], [0, 1, 2, 3], names=["background", "RV (1)", "Myo (2)", "LV (5)"])


def test_bank_tokens_mean_and_kmeans():
    shots = [np.array([[0.0, 0.0], [2.0, 2.0]], np.float32)]
    np.testing.assert_allclose(bank_tokens(shots, 1)[0, 0], [1.0, 1.0])
    clusters = np.array([[0, 0], [0.1, 0], [10, 10], [10.1, 10]], np.float32)
    centres = sorted(_kmeans(clusters, 2, seed=0).tolist())
    np.testing.assert_allclose(centres, [[0.05, 0], [10.05, 10]], atol=1e-6)


def test_keep_largest_component_removes_islands():
    vol = np.zeros((2, 10, 10), np.uint8)
    vol[:, 2:6, 2:6] = 1
    vol[0, 8, 8] = 1  # island
    vol[1, 0, 9] = 2  # only component of class 2: kept
    out = keep_largest_components(vol, [1, 2])
    assert out[0, 8, 8] == 0 and out[1, 0, 9] == 2 and (out == 1).sum() == 32


def test_postprocessing_is_chosen_on_validation():
    label = np.zeros((1, 10, 10), np.uint8)
    label[0, 2:6, 2:6] = 1
    noisy = label.copy()
    noisy[0, 8, 8] = 1
    assert choose_postprocessing([noisy], [label], [1])["largest_component"] is True
    assert choose_postprocessing([label], [label], [1])["largest_component"] is False


def test_fewshot_end_to_end_on_a_phantom(tmp_path):
    """fit -> predict (NIfTI, input geometry) -> evaluate (JSON contract), deterministic for a seed."""
    from typer.testing import CliRunner

    from fewsam.cli import app
    from fewsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    runner = CliRunner()
    fp32 = ["--precision", "fp32"]  # the reference: no encoder conversion for a four-step fit
    fit = ["fit", "fewshot", "--data", str(data), "--labeled-slices", "2", "--views", "2", "--augmented-views", "1", "--steps", "4",
           "--val-every", "2", "--batch-size", "2", "--cache", str(tmp_path / "cache"), "--quiet", *fp32,
           "--cavity-rule", "Myo:LV:RV"]
    fit_twice_identically(fit, tmp_path)
    config = json.loads((tmp_path / "run_a" / "config.json").read_text())
    post = json.loads((tmp_path / "run_a" / "postprocess.json").read_text())
    assert post["cavity_rule"] == [2, 3, 1]
    assert post["mirror"] == (post["val_dice_mirrored"] > post["val_dice_single_view"])  # chosen on validation
    assert post["sam_refine"] == (post["val_dice_sam_refined"] > post["val_dice_unrefined"])
    assert post["val_dice_unrefined"] == max(post["val_dice_mirrored"], post["val_dice_single_view"])
    assert config["class_map"] == {"1": "RV", "2": "Myo", "3": "LV"} and len(config["labelled"]["refs"]) == 2

    pred = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(tmp_path / "run_a"), "--data", str(data), "--split", "val",
                                 "--out", str(pred), "--cache", str(tmp_path / "cache"), "--quiet", *fp32])
    assert result.exit_code == 0, result.output
    written = nib.load(pred / "phantom_002.nii.gz")
    source = nib.load(data / "labelsTr" / "phantom_002.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 3}

    out_json = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--data", str(data), "--split", "val",
                                 "--json", str(out_json), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert set(report["mean"]) >= {"dice", "iou", "hd95", "asd"}
    assert set(report["per_class"]) == {"RV", "Myo", "LV"}
    assert report["cases"][0]["case"] == "phantom_002" and report["distance_unit"] == "mm"
    assert 0.0 <= report["mean"]["dice"] <= 1.0


class _RecordingHead(torch.nn.Module):
    """Stands in for the decoder: records the embeddings it is given, returns 1x1-conv logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        self.seen.append(emb.detach().clone())
        return self.conv(emb)


def _labelled_slices(n: int = 4):
    from fewsam.data.types import SliceRef
    from fewsam.embedded import EmbeddedSlice
    from fewsam.models.sam import PreprocessInfo

    rng = np.random.default_rng(3)
    return [EmbeddedSlice(SliceRef(f"c{i}", 0), (rng.normal(size=(4, 8, 8)) + 2).astype(np.float16),
                          PreprocessInfo((8, 8), (8, 8), 8), rng.integers(0, 3, (8, 8)).astype(np.uint8), None)
            for i in range(n)]


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_embedding_dropout_zeroes_whole_channels_of_the_labelled_batch(fraction):
    from fewsam.losses import DiceCELoss
    from fewsam.methods.fewshot import FewShotConfig, FewShotTask

    samples = _labelled_slices()
    shots = [np.ones((2, 4), np.float32)] * 3
    head = _RecordingHead()
    cfg = FewShotConfig(batch_size=4, embedding_dropout=fraction)
    task = FewShotTask(head, samples, shots, cfg, DiceCELoss(255), None, [], [0, 1, 2])
    task.training_loss(np.random.default_rng(0), 0)
    seen = head.seen[0]
    clean = torch.stack([s.embedding_tensor() for s in samples])
    zeroed = seen.abs().sum(dim=(2, 3)) == 0  # (B, C): channels dropped whole
    if fraction == 0:
        assert not zeroed.any()
        assert torch.equal(torch.sort(seen.flatten(1), 0)[0], torch.sort(clean.flatten(1), 0)[0])
    else:
        assert zeroed.any() and not zeroed.all()
        for row, dropped in zip(seen, zeroed):  # each row: one drawn slice, its kept channels scaled by 2
            kept = ~dropped
            assert any(torch.allclose(row[kept], 2 * c[kept]) for c in clean)
