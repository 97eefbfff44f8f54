from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from samclip.data.clip_stream import clip_eval_transform, clip_train_transform, random_resized_crop_box


@pytest.mark.parametrize("size", [(100, 157), (157, 100), (64, 64), (300, 97)])
def test_eval_transform_matches_torchvision(size: tuple[int, int]) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8))
    reference = T.Compose(
        [T.Resize(48, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(48), T.ToTensor()]
    )
    assert torch.equal(clip_eval_transform(image, 48), reference(image))


def test_train_crop_follows_random_resized_crop_bounds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(20, 400, 2))
        left, top, w, h = random_resized_crop_box(width, height, (0.3, 1.0), rng)
        assert left >= 0 and top >= 0 and left + w <= width and top + h <= height and w > 0 and h > 0


def test_train_transform_is_torchvisions_resized_crop_flipped_half_the_time() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    flips = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        left, top, w, h = random_resized_crop_box(70, 50, (0.5, 1.0), rng)
        flip = rng.random() < 0.5
        expected = TF.resized_crop(
            image, top, left, h, w, [32, 32], interpolation=T.InterpolationMode.BICUBIC
        )
        expected = TF.to_tensor(TF.hflip(expected) if flip else expected)
        assert torch.equal(
            clip_train_transform(image, 32, np.random.default_rng(seed), crop_scale=(0.5, 1.0)), expected
        )
        flips += flip
    assert 0 < flips < 20
