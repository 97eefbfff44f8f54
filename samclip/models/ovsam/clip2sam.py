"""CLIP2SAM's recognition head and the class scores (paper eq. 1 and the geometric-mean fusion)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, roi_align


class Clip2SamHead(nn.Module):
    """Label token + light FPN on the CLIP pyramid + RoIAlign on the prompt's box + conv + MLP -> embedding.

    RoIAlign pools the box from every FPN level and the levels are summed (small objects get the fine
    levels' detail, the paper's point of the FPN); our choice, the paper does not say how levels combine.

    The region embedding (RoI branch) and the label token's embedding (after the decoder) are added
    (our choice; the paper trains both jointly) and scored against class text embeddings by eq. 1.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        token_dim: int,
        fpn_dim: int,
        roi_size: int,
        hidden_dim: int,
        embed_dim: int,
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        self.strides = list(strides)
        self.roi_size = roi_size
        self.label_token = nn.Embedding(1, token_dim)
        self.fpn = FeaturePyramidNetwork(list(in_channels), fpn_dim)
        self.roi_conv = nn.Sequential(nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1), nn.ReLU(inplace=True))
        self.roi_mlp = nn.Sequential(
            nn.Linear(fpn_dim * roi_size * roi_size, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, embed_dim),
        )
        self.label_mlp = nn.Sequential(
            nn.Linear(token_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim)
        )
        # eq. 1's learnable temperature, as log(1 / tau).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def pyramid(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The light FPN's levels (strides ``strides``), fine to coarse."""
        return list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())

    def region_features(self, levels: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """RoIAlign of ``boxes`` ``[K, 5]`` (batch index, xyxy in frame pixels) on every FPN level, summed."""
        return sum(
            roi_align(level, boxes, self.roi_size, spatial_scale=1.0 / stride, aligned=True)
            for level, stride in zip(levels, self.strides, strict=True)
        )

    def embed(
        self, levels: Sequence[torch.Tensor], boxes: torch.Tensor, label_tokens: torch.Tensor
    ) -> torch.Tensor:
        regions = self.roi_conv(self.region_features(levels, boxes)).flatten(1)
        return self.roi_mlp(regions) + self.label_mlp(label_tokens)

    def class_logits(self, embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        return class_logits(embeddings, text_embeddings, self.logit_scale.exp())


def class_logits(
    embeddings: torch.Tensor, text_embeddings: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Eq. 1 before the softmax: ``cos(r, t_c) / tau`` for every class c (``scale`` = 1 / tau)."""
    return scale * F.normalize(embeddings, dim=-1) @ F.normalize(text_embeddings, dim=-1).t()


def fuse_class_probabilities(
    learned_logits: torch.Tensor, clip_logits: torch.Tensor, clip_weight: float
) -> torch.Tensor:
    """Geometric mean ``p_learned^(1-a) * p_clip^a`` of the two softmaxes, renormalised over classes."""
    log_p = (1.0 - clip_weight) * learned_logits.log_softmax(-1) + clip_weight * clip_logits.log_softmax(-1)
    return log_p.softmax(-1)
