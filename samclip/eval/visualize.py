"""Qualitative pictures: class palettes, label-map overlays with a legend, side-by-side panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from samclip.eval.metrics import IGNORE_INDEX


def class_palette(num_classes: int) -> np.ndarray:
    """[N, 3] uint8 colours: Pascal VOC's bit-interleaved colour map (class 0 black), extended to N."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        value, r, g, b = index, 0, 0, 0
        for shift in range(8):
            r |= ((value >> 0) & 1) << (7 - shift)
            g |= ((value >> 1) & 1) << (7 - shift)
            b |= ((value >> 2) & 1) << (7 - shift)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def colorize(label_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """HxW class indices -> HxWx3 colours; the ignore index is drawn white."""
    out = np.full((*label_map.shape, 3), 255, dtype=np.uint8)
    valid = label_map != IGNORE_INDEX
    out[valid] = palette[label_map[valid] % len(palette)]
    return out


def overlay(
    image: np.ndarray, colors: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.55
) -> np.ndarray:
    """Blend ``colors`` over ``image`` (where ``mask`` is true, everywhere if None)."""
    blended = (
        (image.astype(np.float32) * (1 - alpha) + colors.astype(np.float32) * alpha).round().astype(np.uint8)
    )
    if mask is None:
        return blended
    return np.where(mask[..., None], blended, image)


def draw_legend(image: Image.Image, names: Sequence[str], colors: Sequence[Sequence[int]]) -> Image.Image:
    """Draw a legend box (colour swatch + name per entry) in the top-left corner; the size is unchanged."""
    image = image.copy()
    draw = ImageDraw.Draw(image, "RGBA")
    font = ImageFont.load_default()
    line = max(12, int(font.getbbox("Ag")[3]) + 4)
    width = max((int(draw.textlength(name, font=font)) for name in names), default=0) + line + 12
    draw.rectangle((2, 2, 2 + width, 2 + line * len(names) + 6), fill=(0, 0, 0, 150))
    for row, (name, color) in enumerate(zip(names, colors, strict=True)):
        top = 6 + row * line
        draw.rectangle((6, top, 6 + line - 4, top + line - 4), fill=tuple(int(c) for c in color))
        draw.text((6 + line + 2, top - 1), name, fill=(255, 255, 255), font=font)
    return image


def save_segmentation_panel(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    target: np.ndarray | None,
    palette: np.ndarray,
) -> None:
    """Input | prediction overlay | ground truth overlay, side by side."""
    panels = [image, overlay(image, colorize(prediction, palette))]
    if target is not None:
        panels.append(overlay(image, colorize(target, palette)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
