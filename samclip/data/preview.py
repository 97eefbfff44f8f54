"""Pictures of what the streams feed the trainer: SA-1B images with their sampled masks and prompts,
and D_CLIP crops at the step's resolution. Checking a data pipeline by eye beats reading tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from samclip.data.batches import ClipBatch, SamBatch

MASK_ALPHA = 0.45
POINT_RADIUS = 4


def _colour(index: int) -> tuple[int, int, int]:
    """Distinct, reproducible colours: golden-angle hues."""
    hue = (index * 0.618033988749895) % 1.0
    rgb = Image.new("HSV", (1, 1), (int(hue * 255), 200, 255)).convert("RGB").getpixel((0, 0))
    return rgb  # type: ignore[return-value]


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array)


def draw_sam_image(batch: SamBatch, index: int) -> Image.Image:
    """Image ``index`` of the batch (without padding), its masks tinted, boxes outlined, points dotted."""
    batch = batch.to("cpu")  # uint8 from the stream -> float in [0, 1], as the trainer sees it
    height, width = (int(v) for v in batch.input_sizes[index])
    pixels = batch.images[index, :, :height, :width].float().permute(1, 2, 0).cpu().numpy()
    masks = batch.gt_masks[index][:, :height, :width].cpu().numpy() if batch.gt_masks is not None else []
    for k, mask in enumerate(masks):
        colour = np.asarray(_colour(k), dtype=np.float32) / 255.0
        pixels[mask] = (1 - MASK_ALPHA) * pixels[mask] + MASK_ALPHA * colour
    picture = _to_pil(torch.from_numpy(pixels).permute(2, 0, 1))
    draw = ImageDraw.Draw(picture)
    # Sizes follow the frame, so points stay visible once a 1024 frame is scaled into a preview cell.
    scale = max(1.0, max(width, height) / 256)
    radius, line = round(POINT_RADIUS * scale), max(2, round(scale))
    k = 0
    for group in (g for g in batch.prompts if g.image_index == index):
        for n in range(group.num_prompts):
            colour = _colour(k)
            if group.boxes is not None:
                draw.rectangle([float(v) for v in group.boxes[n]], outline=colour, width=line)
            if group.point_coords is not None:
                for (x, y), label in zip(
                    group.point_coords[n].tolist(), group.point_labels[n].tolist(), strict=True
                ):
                    box = (x - radius, y - radius, x + radius, y + radius)
                    fill = colour if label == 1 else (0, 0, 0)
                    draw.ellipse(box, fill=fill, outline=(255, 255, 255), width=max(1, line // 2))
            k += 1
    return picture


def grid(pictures: list[Image.Image], columns: int, cell: int) -> Image.Image:
    """Pictures scaled to fill ``cell`` x ``cell`` squares (aspect kept), ``columns`` per row, on black."""
    rows = max(1, -(-len(pictures) // columns))
    sheet = Image.new("RGB", (columns * cell, rows * cell))
    for i, picture in enumerate(pictures):
        scale = cell / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        scaled = picture.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR)
        sheet.paste(scaled, ((i % columns) * cell, (i // columns) * cell))
    return sheet


def save_sam_preview(batch: SamBatch, path: str | Path, cell: int = 512, columns: int = 2) -> Path:
    pictures = [draw_sam_image(batch, i) for i in range(batch.images.shape[0])]
    return _save(grid(pictures, columns=min(columns, len(pictures)), cell=cell), path)


def save_clip_preview(batch: ClipBatch, path: str | Path, columns: int = 8) -> Path:
    pictures = [_to_pil(image) for image in batch.to("cpu").images]
    return _save(grid(pictures, columns=min(columns, len(pictures)), cell=batch.resolution), path)


def _save(picture: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
