"""The teachers' shared input step: antialiased bicubic to the teacher's size, clamped, then normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from samclip.models.preprocess import resize_and_normalize

MEAN = torch.tensor([0.48, 0.46, 0.41]).view(1, 3, 1, 1)
STD = torch.tensor([0.27, 0.26, 0.28]).view(1, 3, 1, 1)


def test_other_sizes_are_resized_clamped_and_normalised_without_touching_the_input() -> None:
    images = torch.rand(2, 3, 10, 10)
    images[:, :, :5] = 1.0  # a sharp edge makes upsampling bicubic overshoot [0, 1], so the clamp matters
    images[:, :, 5:] = 0.0
    before = images.clone()
    resized = F.interpolate(images, size=(24, 24), mode="bicubic", align_corners=False, antialias=True)
    assert resized.min() < 0 or resized.max() > 1
    out = resize_and_normalize(images, 24, MEAN, STD)
    assert torch.equal(out, (resized.clamp(0.0, 1.0) - MEAN) / STD)
    assert torch.equal(images, before)


def test_images_at_the_size_are_only_normalised() -> None:
    images = torch.rand(2, 3, 24, 24)
    assert torch.equal(resize_and_normalize(images, 24, MEAN, STD), (images - MEAN) / STD)
