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


def drawing_scale(width: int, height: int) -> float:
    """Text and line sizes grow with the picture (1 up to 512 px on the short side), so a 4000x3000 photo's
    legend and prompts stay as legible as a thumbnail's."""
    return max(1.0, min(width, height) / 512)


def font_for(image: Image.Image, base_size: float = 11) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=round(base_size * drawing_scale(*image.size)))


def draw_legend(image: Image.Image, names: Sequence[str], colors: Sequence[Sequence[int]]) -> Image.Image:
    """Draw a legend box (colour swatch + name per entry) in the top-left corner; the size is unchanged."""
    image = image.copy()
    draw = ImageDraw.Draw(image, "RGBA")
    font = font_for(image)
    scale = drawing_scale(*image.size)
    pad = round(4 * scale)
    line = max(12, int(font.getbbox("Ag")[3]) + pad)
    width = max((int(draw.textlength(name, font=font)) for name in names), default=0) + line + 3 * pad
    draw.rectangle((2, 2, 2 + width, 2 + line * len(names) + 2 * pad), fill=(0, 0, 0, 150))
    for row, (name, color) in enumerate(zip(names, colors, strict=True)):
        top = pad + 2 + row * line
        left = pad + 2
        draw.rectangle((left, top, left + line - pad, top + line - pad), fill=tuple(int(c) for c in color))
        draw.text((left + line + 2, top - 1), name, fill=(255, 255, 255), font=font)
    return image


def draw_prompts(
    image: Image.Image,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    box_names: Sequence[str] | None = None,
) -> Image.Image:
    """Mark SAM prompts: foreground points green, background red (white rims), boxes as outlines with names."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    scale = drawing_scale(*image.size)
    radius, width = round(4 * scale), max(1, round(2 * scale))
    if points is not None:
        labels = np.ones(len(points), dtype=int) if point_labels is None else np.asarray(point_labels)
        for (x, y), label in zip(
            np.asarray(points, dtype=float).reshape(-1, 2), labels.reshape(-1), strict=True
        ):
            fill = (40, 220, 60) if label == 1 else (230, 40, 40)
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius),
                fill=fill,
                outline=(255, 255, 255),
                width=width,
            )
    if boxes is not None:
        font = font_for(image)
        for index, box in enumerate(np.asarray(boxes, dtype=float).reshape(-1, 4)):
            draw.rectangle(tuple(box), outline=(255, 255, 0), width=width)
            if box_names is not None:
                draw.text((box[0] + width, box[1] + width), box_names[index], fill=(255, 255, 0), font=font)
    return image


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    """A panel with its title in a white band above it."""
    image = Image.fromarray(panel)
    font = font_for(image, 12)
    band = int(font.getbbox("Ag")[3]) + round(8 * drawing_scale(*image.size))
    canvas = Image.new("RGB", (image.width, image.height + band), (255, 255, 255))
    canvas.paste(image, (0, band))
    ImageDraw.Draw(canvas).text((4, band // 4), title, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_segmentation_panel(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    target: np.ndarray | None,
    palette: np.ndarray,
    classnames: Sequence[str] | None = None,
) -> None:
    """Input | prediction | ground truth side by side, titled; with ``classnames`` the prediction panel carries
    a legend of the classes present in either map."""
    predicted = Image.fromarray(overlay(image, colorize(prediction, palette)))
    if classnames is not None:
        present = np.unique(np.concatenate([prediction.ravel(), [] if target is None else target.ravel()]))
        present = [int(c) for c in present if c != IGNORE_INDEX and 0 <= c < len(classnames)]
        predicted = draw_legend(
            predicted, [classnames[c] for c in present], [palette[c % len(palette)] for c in present]
        )
    panels = [titled(image, "input"), titled(np.asarray(predicted), "prediction")]
    if target is not None:
        panels.append(titled(overlay(image, colorize(target, palette)), "ground truth"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
