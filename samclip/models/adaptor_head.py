"""RADIO's per-teacher adaptor head (AM-RADIO, Ranzinger et al. 2024): backbone tokens -> one teacher's space."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class AdaptorOutput(NamedTuple):
    summary: torch.Tensor  # [B, D]: matched to the teacher's summary (CLS) token
    features: torch.Tensor  # [B, D, h, w]: matched to the teacher's patch features, channels first


class AdaptorMlp(nn.Sequential):
    """LayerNorm -> Linear -> GELU -> Linear: RADIO's 2-layer adaptor MLP."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )


class AdaptorHead(nn.Module):
    """RADIO's per-teacher adaptor: a 2-layer MLP per token (LayerNorm -> Linear -> GELU -> Linear) for the
    dense features, and one on the pooled tokens for the summary."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = in_dim if hidden_dim is None else hidden_dim
        self.summary_mlp = AdaptorMlp(in_dim, hidden_dim, out_dim)
        self.feature_mlp = AdaptorMlp(in_dim, hidden_dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> AdaptorOutput:
        """``tokens`` [B, h, w, C]: the SAM backbone's output, channels last."""
        if tokens.ndim != 4:
            raise ValueError(f"tokens must be [B, h, w, C], got shape {tuple(tokens.shape)}")
        # The SAM backbone has no CLS token. RADIO's summary is a CLS token trained to match the teacher's
        # CLS; the mean is the neutral pooled stand-in (every token counts alike), and the CLIP head already
        # takes the max-pool, so this head does not duplicate it.
        summary = self.summary_mlp(tokens.mean(dim=(1, 2)))
        features = self.feature_mlp(tokens).permute(0, 3, 1, 2)
        return AdaptorOutput(summary=summary, features=features)
