"""SAM2CLIP: fuse the frozen CLIP pyramid (bilinear resampling + addition) and adapt it to SAM's embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn


class Sam2ClipAdapter(nn.Module):
    """Multi-scale CLIP features -> ``[B, out_dim, grid, grid]`` (SAM's image embedding: 256x64x64 at 1024).

    Each level is projected (1x1 conv) to ``dim`` and bilinearly resampled to the embedding grid, the
    levels are added (the paper's Fusion), then ``depth`` transformer layers and a SAM-style neck
    (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) give SAM's embedding.
    """

    def __init__(
        self, in_channels: Sequence[int], grid_size: int, dim: int, depth: int, num_heads: int, out_dim: int
    ) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size * grid_size, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            num_heads,
            dim_feedforward=4 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out_dim, kernel_size=1, bias=False),
            LayerNorm2d(out_dim),
            nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_dim),
        )

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = (self.grid_size, self.grid_size)
        fused = None
        for lateral, feature in zip(self.lateral, features, strict=True):
            level = F.interpolate(lateral(feature), size=size, mode="bilinear", align_corners=False)
            fused = level if fused is None else fused + level
        return fused

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.fuse(features)
        b, c, h, w = x.shape
        tokens = self.blocks(x.flatten(2).transpose(1, 2) + self.pos_embed)
        return self.neck(tokens.transpose(1, 2).reshape(b, c, h, w))
