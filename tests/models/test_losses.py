"""Losses against hand computations, and the micro-batch reduction contract."""

from __future__ import annotations

import math

import pytest
import torch

from samclip.losses import (
    cosine_distillation_loss,
    dice_loss_per_mask,
    focal_loss_per_mask,
    mask_distillation_loss,
)


def test_cosine_distillation_by_hand():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    teacher = torch.tensor([[0.0, 3.0], [1.0, 0.0], [5.0, 0.0]])
    # 1 - cos: orthogonal -> 1, 45 degrees -> 1 - 1/sqrt(2), parallel (any scale) -> 0.
    expected = (1.0 + (1.0 - 1.0 / math.sqrt(2.0)) + 0.0) / 3.0
    assert cosine_distillation_loss(student, teacher).item() == pytest.approx(expected, abs=1e-6)


def test_focal_and_dice_by_hand():
    logits = torch.tensor([[[0.0, 2.0]]])  # one 1x2 mask
    targets = torch.tensor([[[1.0, 0.0]]])
    p = torch.sigmoid(torch.tensor([0.0, 2.0]))
    alpha, gamma = 0.25, 2.0
    pixel0 = -alpha * (1 - p[0]) ** gamma * math.log(p[0])  # positive pixel
    pixel1 = -(1 - alpha) * p[1] ** gamma * math.log(1 - p[1])  # negative pixel
    assert focal_loss_per_mask(logits, targets).item() == pytest.approx(
        ((pixel0 + pixel1) / 2).item(), rel=1e-5
    )
    dice = 1 - (2 * p[0] * 1 + 1) / (p.sum() + 1 + 1)
    assert dice_loss_per_mask(logits, targets).item() == pytest.approx(dice.item(), rel=1e-5)


def test_mask_loss_weights_and_targets():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8) * 3
    hard = mask_distillation_loss(student, teacher)
    hard_targets = (teacher > 0).float()
    assert hard.focal.item() == pytest.approx(focal_loss_per_mask(student, hard_targets).mean().item())
    assert hard.total.item() == pytest.approx(20 * hard.focal.item() + hard.dice.item(), rel=1e-6)
    soft = mask_distillation_loss(student, teacher, soft_targets=True)
    assert soft.dice.item() == pytest.approx(dice_loss_per_mask(student, teacher.sigmoid()).mean().item())
    assert soft.total.item() != pytest.approx(hard.total.item())
    # A student equal to a confident teacher has low loss; hard targets are what make it exact for dice.
    assert mask_distillation_loss(teacher * 100, teacher).dice.item() < 0.02


def test_micro_batch_losses_weighted_by_share_equal_full_batch():
    torch.manual_seed(0)
    student_masks, teacher_masks = torch.randn(10, 1, 6, 6), torch.randn(10, 1, 6, 6)
    student_embeds, teacher_embeds = torch.randn(10, 16), torch.randn(10, 16)
    full_mask = mask_distillation_loss(student_masks, teacher_masks).total
    full_clip = cosine_distillation_loss(student_embeds, teacher_embeds)
    mask_sum = clip_sum = torch.tensor(0.0)
    for chunk in (slice(0, 3), slice(3, 4), slice(4, 10)):
        share = (chunk.stop - chunk.start) / 10
        mask_sum = mask_sum + share * mask_distillation_loss(student_masks[chunk], teacher_masks[chunk]).total
        clip_sum = clip_sum + share * cosine_distillation_loss(student_embeds[chunk], teacher_embeds[chunk])
    torch.testing.assert_close(mask_sum, full_mask)
    torch.testing.assert_close(clip_sum, full_clip)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        cosine_distillation_loss(torch.randn(2, 8), torch.randn(2, 4))
    with pytest.raises(ValueError, match="differ"):
        mask_distillation_loss(torch.randn(2, 1, 4, 4), torch.randn(2, 3, 4, 4))


def test_iou_score_distillation_by_hand():
    """EdgeSAM-style (loss.sam_outputs=all): every output a unit, plus iou_weight x MSE of the scores."""
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    student_iou = torch.tensor([[0.5, 0.25, 1.0, 0.0]] * 3)
    teacher_iou = torch.tensor([[1.0, 0.25, 0.5, 0.0]] * 3)
    masks_only = mask_distillation_loss(student, teacher)
    # Each of the 12 outputs is one unit: the [3, 4] loss equals the [12, 1] loss.
    flat = mask_distillation_loss(student.reshape(12, 1, 8, 8), teacher.reshape(12, 1, 8, 8))
    assert masks_only.total.item() == pytest.approx(flat.total.item(), rel=1e-6)
    with_iou = mask_distillation_loss(
        student, teacher, student_iou=student_iou, teacher_iou=teacher_iou, iou_weight=2.0
    )
    mse = (0.25 + 0 + 0.25 + 0) / 4  # (0.5-1)^2, 0, (1-0.5)^2, 0 per row, the same three rows
    assert with_iou.iou.item() == pytest.approx(mse)
    assert with_iou.total.item() == pytest.approx(masks_only.total.item() + 2.0 * mse, rel=1e-6)
    assert masks_only.iou is None
    with pytest.raises(ValueError, match="both"):
        mask_distillation_loss(student, teacher, student_iou=student_iou)
