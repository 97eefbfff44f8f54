"""RADIO's dense-feature distillation loss (AM-RADIO; PHI-S, Ranzinger et al. 2024).

Like ``samclip.losses``, each part is a mean over its units (images for the summary, tokens and elements for
the dense features), so micro-batch losses weighted by their share of the units sum to the full-batch loss.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from samclip.models.adaptor_head import AdaptorOutput


class DenseLoss(NamedTuple):
    total: torch.Tensor  # summary_weight·summary + features_weight·features
    summary: torch.Tensor  # mean over images
    features: torch.Tensor  # mean over tokens (cosine) and their elements (smooth-L1)


def resample_to_grid(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Teacher features [B, D, h, w] -> [B, D, *size] on the student's patch grid (bilinear, pixel centres)."""
    if features.ndim != 4:
        raise ValueError(f"features must be [B, D, h, w], got shape {tuple(features.shape)}")
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"grid size must be positive, got {size}")
    if tuple(features.shape[-2:]) == size:
        return features
    # Plain bilinear reads only the 4 teacher tokens nearest each student token, so shrinking by more than 2x
    # skips tokens and aliases; antialias widens the filter to every token the student's cell covers (as PIL
    # does). On an upsampled axis it changes nothing.
    downsampling = size[0] < features.shape[-2] or size[1] < features.shape[-1]
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False, antialias=downsampling)


class DenseFeatureLoss(nn.Module):
    """RADIO's feature loss: cosine + smooth-L1 on (standardized) teacher features, for the summary and for the
    dense features."""

    def __init__(
        self,
        cosine_weight: float = 1.0,
        smooth_l1_weight: float = 1.0,
        summary_weight: float = 1.0,
        features_weight: float = 1.0,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        self.cosine_weight = cosine_weight
        self.smooth_l1_weight = smooth_l1_weight
        self.summary_weight = summary_weight
        self.features_weight = features_weight
        self.beta = beta

    def _part(self, student: torch.Tensor, teacher: torch.Tensor, name: str) -> torch.Tensor:
        """Cosine over dim 1 (the channels, for [B, D] and [B, D, h, w] alike) + smooth-L1 over elements."""
        if student.shape != teacher.shape:
            raise ValueError(
                f"student {name} {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ"
                + (" (resample the teacher with resample_to_grid)" if name == "features" else "")
            )
        student, teacher = student.float(), teacher.detach().float()
        cosine = (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()
        smooth_l1 = F.smooth_l1_loss(student, teacher, beta=self.beta)
        return self.cosine_weight * cosine + self.smooth_l1_weight * smooth_l1

    def forward(
        self, student: AdaptorOutput, teacher_summary: torch.Tensor, teacher_features: torch.Tensor
    ) -> DenseLoss:
        summary = self._part(student.summary, teacher_summary, "summary")
        features = self._part(student.features, teacher_features, "features")
        total = self.summary_weight * summary + self.features_weight * features
        return DenseLoss(total=total, summary=summary, features=features)
