"""``SamModel``: one SAM-family model (encoder, prompt encoder, mask decoder) and its preprocessing.

The split mirrors segment-anything's predictor: ``encode`` is the expensive, frozen step run
once per image (and cached by fewsam); ``decode`` is cheap, trainable and takes precomputed
embeddings. The backbone interface is small: any image encoder mapping the preprocessed
(B, 3, S, S) tensor to a (B, 256, 64, 64) embedding, plus the ``Preprocessing`` it was trained
with (the preprocessing travels with the weights, as in timm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewsam.data.intensity import CLIP_PERCENTILES, clip_to_percentiles, scale_to_unit
from fewsam.errors import DataError
from fewsam.models.mask_decoder import MaskDecoder
from fewsam.models.prompt_encoder import PromptEncoder

EMBED_DIM = 256
EMBED_GRID = 64
# Official SAM pixel statistics, on the 0-255 RGB scale.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class PreprocessInfo:
    """What ``postprocess_logits`` needs to map model-frame outputs back to the original image."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    image_size: int


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone expects its input.

    ``pixel_norm``: "unit" feeds the [0, 1] image as is (LiteMedSAM, MedSAM); "sam" maps it to
    0-255 and applies SAM's RGB mean/std (official SAM checkpoints). ``clip_percentiles``: the
    intensity percentiles the image is clipped to before scaling (None: plain min-max).
    """

    image_size: int
    pixel_norm: Literal["unit", "sam"]
    clip_percentiles: tuple[float, float] | None = CLIP_PERCENTILES

    def signature(self) -> str:
        clip = "" if self.clip_percentiles is None else "clip={:g}-{:g};".format(*self.clip_percentiles)
        return f"v1;{clip}resize-longest={self.image_size},bilinear-aa;minmax01;norm={self.pixel_norm};pad=br0"


def resized_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """Shape after resizing the longest side to ``size`` (rounding as segment-anything does), at
    least one pixel per side: a strip more than 2 * ``size`` times longer than it is wide would
    otherwise round to zero rows, which no resize can produce."""
    scale = size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def _as_hwc(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise DataError(f"expected an image of shape (H, W) or (H, W, 3), got {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError("image contains NaN or infinite values")
    return arr


class SamModel(nn.Module):
    """A SAM-family model with fewsam's encode-once / decode-often interface.

    ``image_encoder`` is frozen by design (full fine-tuning of the encoder is infeasible on a CPU):
    ``encode`` runs without gradients and ``train()`` keeps the encoder in eval mode, so its
    BatchNorm statistics never change. ``decode`` is fully differentiable.
    """

    def __init__(
        self,
        name: str,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        preprocessing: Preprocessing,
        weights_sha256: str = "random",
    ) -> None:
        super().__init__()
        self.name = name
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.preprocessing = preprocessing
        self.image_size = preprocessing.image_size
        self.weights_sha256 = weights_sha256

    @property
    def device(self) -> torch.device:
        return self.mask_decoder.iou_token.weight.device

    def train(self, mode: bool = True) -> SamModel:
        super().train(mode)
        self.image_encoder.eval()
        return self

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, PreprocessInfo]:
        """(H, W) or (H, W, 3) image, any dtype -> the encoder's (3, S, S) float32 input (on CPU).

        Steps, matching the official LiteMedSAM/MedSAM pipelines (clip, resize, then min-max):
        greyscale is repeated to 3 channels; intensities are clipped to the image's
        ``clip_percentiles`` (MedSAM's 0.5th-99.5th by default); the longest side is resized to S keeping the
        aspect ratio (bilinear with antialiasing, close to the official INTER_AREA/anti-aliased
        resize); intensities are min-max scaled to [0, 1] over the whole image (a constant image
        becomes zeros); "sam" models then get (255 * x - mean) / std with SAM's RGB statistics
        (LiteMedSAM and MedSAM use [0, 1] directly: MedSAM's own inference feeds the [0, 1] image
        to the encoder); finally zero padding to S x S at the bottom/right.
        Note: MedSAM's own scripts stretch non-square images to 1024x1024; fewsam keeps the
        aspect ratio for every model, which is identical for square images.
        """
        arr = clip_to_percentiles(_as_hwc(image), self.preprocessing.clip_percentiles)
        h, w = arr.shape[:2]
        size = self.image_size
        rh, rw = resized_hw(h, w, size)
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
        if (rh, rw) != (h, w):
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = scale_to_unit(x)
        if self.preprocessing.pixel_norm == "sam":
            mean = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
            x = (x * 255.0 - mean) / std
        x = F.pad(x, (0, size - rw, 0, size - rh))
        return x[0].contiguous(), PreprocessInfo((h, w), (rh, rw), size)

    def preprocess_signature(self) -> str:
        """Short stable description of ``preprocess`` for embedding-cache keys."""
        return self.preprocessing.signature()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, 256, 64, 64) embeddings, without gradients."""
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"{self.name} expects (B, 3, {size}, {size}), got {tuple(images.shape)}")
        with torch.no_grad():
            return self.image_encoder(images.to(self.device, torch.float32))

    def decode(
        self,
        embeddings: torch.Tensor,
        sparse_tokens: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trainable decoder call on precomputed embeddings.

        embeddings (B, 256, 64, 64); sparse_tokens (B, N, 256) prompt tokens, N may be 0
        (None means no tokens); dense (B, 256, 64, 64), None means the prompt encoder's
        ``no_mask_embed``. A batch of 1 in any input broadcasts (e.g. one embedding, K class
        queries). Returns low_res_logits (B, M, 256, 256) (4x the 64 grid, in the S-pixel padded
        frame), iou_pred (B, M), and mask_tokens (B, M, 256): the transformer's output states of
        the mask tokens, i.e. the inputs of the hypernetwork MLPs. M = 3 if
        ``multimask_output`` else 1.
        """
        batch = embeddings.shape[0]
        if sparse_tokens is None:
            sparse_tokens = embeddings.new_zeros(batch, 0, EMBED_DIM)
        if dense is None:
            dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        batches = {embeddings.shape[0], sparse_tokens.shape[0], dense.shape[0]} - {1}
        if len(batches) > 1:
            raise ValueError(f"decode: batch sizes {sorted(batches)} do not match (only 1 broadcasts)")
        return self.mask_decoder(
            embeddings, self.prompt_encoder.get_dense_pe(), sparse_tokens, dense, multimask_output
        )

    def prompt_tokens(
        self,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (B, 4) xyxy and/or points (B, N, 2) xy, in the S-pixel preprocessed frame ->
        (sparse (B, N', 256), dense (B, 256, 64, 64)). ``point_labels`` (B, N): 1 positive,
        0 negative; defaults to all positive. Points without a box get SAM's padding token."""
        if boxes is None and points is None:
            raise ValueError("prompt_tokens needs boxes or points")
        point_pair = None
        if points is not None:
            points = points.to(self.device, torch.float32)
            labels = point_labels if point_labels is not None else torch.ones(points.shape[:2])
            point_pair = (points, labels.to(self.device))
        if boxes is not None:
            boxes = boxes.to(self.device, torch.float32).reshape(-1, 4)
        return self.prompt_encoder(point_pair, boxes, None)

    def predict_prompted(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prompted single-mask prediction: (B, 1, 256, 256) low-res logits."""
        sparse, dense = self.prompt_tokens(boxes, points, point_labels)
        logits, _, _ = self.decode(embeddings, sparse, dense, multimask_output=False)
        return logits


def postprocess_logits(logits: torch.Tensor, info: PreprocessInfo) -> torch.Tensor:
    """(B, C, h, w) low-res logits -> (B, C, H, W) logits at the original image size.

    Upsamples to the S x S model frame, crops the padding, then resizes to the original shape
    (all bilinear), as segment-anything's ``postprocess_masks``.
    """
    size = info.image_size
    x = logits
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x[..., : info.resized_hw[0], : info.resized_hw[1]]
    if tuple(x.shape[-2:]) != info.original_hw:
        x = F.interpolate(x, size=info.original_hw, mode="bilinear", align_corners=False)
    return x
