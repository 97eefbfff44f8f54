"""The CLIP head of SAM-CLIP (paper, appendix A): transformer blocks, max-pool, LayerNorm, 2-hidden-layer MLP."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from timm.models import checkpoint_seq
from torch import nn


class ClipHeadOutput(NamedTuple):
    image_embeds: torch.Tensor  # [B, D] in the CLIP teacher's embedding space (not normalised)
    patch_embeds: torch.Tensor | None  # [B, H, W, D] per-token embeddings through the same LayerNorm + MLP


class ProjectionMlp(nn.Sequential):
    """Linear-GELU-Linear-GELU-Linear: an MLP with two hidden layers (Rosenfeld et al., as in the paper)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )


class ClipHead(nn.Module):
    """Maps backbone tokens [B, H, W, C] to a CLIP image embedding and per-patch CLIP embeddings."""

    def __init__(self, blocks: list[nn.Module], width: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(width)
        self.proj = ProjectionMlp(width, hidden_dim, out_dim)
        self.grad_checkpointing = False

    @classmethod
    def from_backbone_block(
        cls, last_block: nn.Module, depth: int, width: int, hidden_dim: int, out_dim: int
    ) -> ClipHead:
        """Each of the ``depth`` blocks starts as a copy of the backbone's last block (the paper's init)."""
        return cls([copy.deepcopy(last_block) for _ in range(depth)], width, hidden_dim, out_dim)

    def forward(self, tokens: torch.Tensor, dense: bool = True) -> ClipHeadOutput:
        """``dense=False`` skips the per-patch embeddings (training needs only the pooled one)."""
        if self.grad_checkpointing and self.training:
            x = checkpoint_seq(self.blocks, tokens, use_reentrant=False)
        else:
            x = self.blocks(tokens)
        # Max-pool over tokens: the paper found it better than average pooling for dense features.
        pooled = x.flatten(1, 2).amax(dim=1)
        image_embeds = self.proj(self.norm(pooled))
        patch_embeds = self.proj(self.norm(x)) if dense else None
        return ClipHeadOutput(image_embeds=image_embeds, patch_embeds=patch_embeds)
