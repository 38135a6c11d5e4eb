"""SAM's mask decoder: output tokens + prompt tokens query the image embedding.

One IoU token and four mask tokens are prepended to the prompt tokens. After the two-way
transformer, each mask token passes through its own hypernetwork MLP to give the weights of a
dot product with the 4x-upscaled image features (one mask per token); the IoU token predicts
each mask's quality. Mask token 0 is the single-mask output, tokens 1-3 the multimask outputs.
Parameter names match the official checkpoints.

Unlike segment-anything, nothing here runs under ``torch.no_grad``: the decoder is what
fewsam trains, and the decoder also returns the mask-token states so that few-shot methods can
use them.
"""

from __future__ import annotations

import torch
from torch import nn

from fewsam.models.common import MLP, LayerNorm2d
from fewsam.models.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts masks and IoU scores from an image embedding and prompt embeddings."""

    def __init__(
        self,
        transformer_dim: int = 256,
        transformer: TwoWayTransformer | None = None,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer or TwoWayTransformer(2, transformer_dim, 8, 2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image_embeddings (B|1, C, h, w), image_pe (1, C, h, w), sparse (B|1, N, C),
        dense (B|1, C, h, w); a batch of 1 broadcasts against the others.

        Returns masks (B, M, 4h, 4w) logits, iou_pred (B, M) and mask_tokens_out (B, M, C):
        the transformer's output states of the selected mask tokens (the hypernetwork inputs).
        M is 3 with ``multimask_output`` (tokens 1-3), else 1 (token 0).
        """
        masks, iou_pred, tokens_out = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou_pred[:, sel], tokens_out[:, sel]

    def transform(self, src: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer on image (B, C, h, w) + tokens (B, N, C), then the upscaling:
        returns the tokens' output states (B, N, C) and the upscaled image (B, C/8, 4h, 4w) that
        every output token's hypernetwork reads. Decoders with their own tokens reuse this."""
        b, c, h, w = src.shape
        hs, src_out = self.transformer(src, pos, tokens)
        return hs, self.output_upscaling(src_out.transpose(1, 2).reshape(b, c, h, w))

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All four masks, IoU scores and mask-token states; see ``forward``."""
        src = image_embeddings + dense_prompt_embeddings
        batch = max(src.shape[0], sparse_prompt_embeddings.shape[0])
        src = src.expand(batch, -1, -1, -1)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [
                output_tokens.unsqueeze(0).expand(batch, -1, -1),
                sparse_prompt_embeddings.expand(batch, -1, -1).to(output_tokens.dtype),
            ],
            dim=1,
        )
        hs, upscaled = self.transform(src, image_pe.expand(batch, -1, -1, -1), tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c_up, h_up, w_up = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c_up, h_up * w_up)).reshape(b, -1, h_up, w_up)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred, mask_tokens_out
