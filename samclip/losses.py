"""Distillation losses: cosine for the CLIP head (L_clip), SAM's focal + dice for the SAM head (L_sam).

Every loss is a mean over its units (images for L_clip, masks for L_sam). A batch split into
micro-batches therefore gives the full-batch loss as the sum of micro-batch losses each weighted
by its share of the units (``micro_units / total_units``); the trainer relies on this.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss


def cosine_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``1 - cos(student_i, teacher_i)`` (SAM-CLIP eq. 1)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student embeddings {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ"
        )
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def _per_mask(logits: torch.Tensor) -> torch.Tensor:
    """[M, h, w] or [M, K, h, w] -> [M*K, h*w]: each output mask is one unit."""
    return logits.float().flatten(0, logits.ndim - 3).flatten(1)


def focal_loss_per_mask(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.) averaged over each mask's pixels; targets may be soft."""
    return sigmoid_focal_loss(
        _per_mask(logits), _per_mask(targets), alpha=alpha, gamma=gamma, reduction="none"
    ).mean(1)


def dice_loss_per_mask(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2|P∩T| + s) / (|P| + |T| + s)`` per mask with P = sigmoid(logits) (as in SAM / DETR)."""
    probs, targets = _per_mask(logits).sigmoid(), _per_mask(targets)
    return 1.0 - (2.0 * (probs * targets).sum(1) + smooth) / (probs.sum(1) + targets.sum(1) + smooth)


class MaskLoss(NamedTuple):
    total: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor | None = None  # MSE of the IoU predictions, when they are distilled


def iou_distillation_loss(student_iou: torch.Tensor, teacher_iou: torch.Tensor) -> torch.Tensor:
    """Mean over masks of the squared error between predicted IoUs (EdgeSAM's score distillation)."""
    if student_iou.shape != teacher_iou.shape:
        raise ValueError(
            f"student IoU predictions {tuple(student_iou.shape)} and teacher {tuple(teacher_iou.shape)} differ"
        )
    return F.mse_loss(student_iou.float(), teacher_iou.detach().float())


def mask_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    soft_targets: bool = False,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    student_iou: torch.Tensor | None = None,
    teacher_iou: torch.Tensor | None = None,
    iou_weight: float = 1.0,
) -> MaskLoss:
    """L_sam (SAM-CLIP eq. 2): SAM's focal + dice at 20:1, against the frozen SAM teacher's masks.

    Hard targets are the teacher's binary masks (logit > 0); soft targets its probabilities. Logits may
    be [M, h, w] or [M, K, h, w] (every output a unit). With IoU predictions given, ``iou_weight`` x their
    MSE against the teacher's is added.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student mask logits {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ"
        )
    teacher_logits = teacher_logits.detach().float()
    targets = teacher_logits.sigmoid() if soft_targets else (teacher_logits > 0).float()
    focal = focal_loss_per_mask(student_logits, targets, focal_alpha, focal_gamma).mean()
    dice = dice_loss_per_mask(student_logits, targets).mean()
    total = focal_weight * focal + dice_weight * dice
    iou = None
    if student_iou is not None or teacher_iou is not None:
        if student_iou is None or teacher_iou is None:
            raise ValueError("IoU distillation needs both the student's and the teacher's IoU predictions")
        iou = iou_distillation_loss(student_iou, teacher_iou)
        total = total + iou_weight * iou
    return MaskLoss(total=total, focal=focal, dice=dice, iou=iou)


class CosineDistillationLoss(nn.Module):
    """L_clip as a module, for configs."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return cosine_distillation_loss(student, teacher)


class MaskDistillationLoss(nn.Module):
    """L_sam as a module, for configs (weights, hard/soft targets, focal parameters, IoU-score weight)."""

    def __init__(
        self,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        soft_targets: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        iou_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.iou_weight = iou_weight
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.soft_targets = soft_targets
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        student_iou: torch.Tensor | None = None,
        teacher_iou: torch.Tensor | None = None,
    ) -> MaskLoss:
        return mask_distillation_loss(
            student_logits,
            teacher_logits,
            student_iou=student_iou,
            teacher_iou=teacher_iou,
            iou_weight=self.iou_weight,
            focal_weight=self.focal_weight,
            dice_weight=self.dice_weight,
            soft_targets=self.soft_targets,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
        )
