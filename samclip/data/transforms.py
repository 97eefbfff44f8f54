"""Image preprocessing for evaluation: CLIP-style resize + center crop, square resize, uint8 conversion."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from samclip.data.clip_stream import clip_eval_transform

ImageLike = Image.Image | np.ndarray | torch.Tensor | str | Path


def classification_transform(resolution: int) -> Callable[[Image.Image], torch.Tensor]:
    """CLIP's evaluation transform of an RGB image (``ClipStream``'s with ``train=False``) to float [0, 1]."""
    return functools.partial(clip_eval_transform, resolution=resolution)


def to_uint8_array(image: ImageLike) -> np.ndarray:
    """Any common image form (PIL, path, HxWx3 uint8 array, [3,H,W] float tensor in [0, 1]) as HxWx3 uint8."""
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        image = Image.open(path)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.dtype.is_floating_point:
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"a float image tensor must be [3, H, W], got {tuple(image.shape)}")
            return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        image = image.cpu().numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {array.shape} dtype {array.dtype}")
    return array


def to_float_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H, W] float in [0, 1]."""
    return torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0


def resize_square(pixels: torch.Tensor, resolution: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, R, R] (aspect ratio not kept: the zero-shot segmentation protocol's 448x448)."""
    return F.interpolate(
        pixels, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
    ).clamp_(0.0, 1.0)
