"""Image conventions: SAM's (pixel statistics, resize-longest-side, padding to a square frame) and the
resize-and-normalise every image teacher applies to its input (``resize_and_normalize``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# SAM's pixel statistics, on the 0..255 scale (segment_anything.modeling.Sam defaults).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

# Images travel as float in [0, 1]. Padding a SAM-frame image with the pixel mean (on that scale)
# makes the padded area normalise to exactly zero, which is what SAM's own preprocess produces
# (it pads after normalising). Student and teacher therefore see SAM's input.
SAM_PAD_VALUE = tuple(m / 255.0 for m in SAM_PIXEL_MEAN)


def resized_longest_side_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Shape after scaling so the longest side is ``long_side`` (segment_anything's rounding)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def normalize_sam(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] float images in [0, 1] -> SAM-normalised images."""
    mean = images.new_tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1) / 255.0
    std = images.new_tensor(SAM_PIXEL_STD).view(1, 3, 1, 1) / 255.0
    return (images - mean) / std


def resize_and_normalize(
    images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """A teacher's input: [B, 3, H, W] float images in [0, 1] -> [B, 3, size, size], ``(x - mean) / std``.

    Images not already ``size`` x ``size`` are resized with antialiased bicubic interpolation
    (``align_corners=False``) and clamped back to [0, 1] (bicubic overshoots); images at that size are
    normalised as they are. ``mean`` and ``std`` broadcast against the images ([1, 3, 1, 1]); the result's
    dtype is what type promotion gives the three. The input is never modified.
    """
    if images.shape[-2:] != (size, size):
        images = F.interpolate(
            images, size=(size, size), mode="bicubic", align_corners=False, antialias=True
        ).clamp_(0.0, 1.0)
    return (images - mean) / std


def pad_to_square(
    images: torch.Tensor, size: int, value: tuple[float, float, float] = SAM_PAD_VALUE
) -> torch.Tensor:
    """Pad [B, 3, h, w] at the bottom/right to [B, 3, size, size], channel by channel."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"image of size {h}x{w} does not fit a {size}x{size} frame")
    out = images.new_empty((*images.shape[:-2], size, size))
    out[..., :, :] = images.new_tensor(value).view(3, 1, 1)
    out[..., :h, :w] = images
    return out


def upscale_mask_logits(
    low_res_logits: torch.Tensor, frame_size: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """SAM's postprocess: low-res logits -> frame -> crop the padding -> the original image size."""
    logits = F.interpolate(low_res_logits, (frame_size, frame_size), mode="bilinear", align_corners=False)
    logits = logits[..., : input_size[0], : input_size[1]]
    return F.interpolate(logits, original_size, mode="bilinear", align_corners=False)
