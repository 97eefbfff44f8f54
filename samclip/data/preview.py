"""Pictures of what the streams feed the trainer: SA-1B images with their sampled masks and prompts,
and D_CLIP crops at the step's resolution with their captions. Checking a data pipeline by eye beats
reading tensors."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from samclip.data.batches import ClipBatch, SamBatch
from samclip.data.shards import expand_urls, iter_shard

MASK_ALPHA = 0.45
POINT_RADIUS = 4
CAPTION_TILE = 192  # a captioned crop is drawn at least this wide, so a line holds a few words
CAPTION_LINES = 3
CAPTION_EXTENSIONS = ("txt", "text", "caption")


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


def save_clip_preview(
    batch: ClipBatch, path: str | Path, columns: int = 8, captions: Sequence[str] | None = None
) -> Path:
    """The batch's crops in a grid; with ``captions`` (one per image) each crop has its caption below."""
    pictures = [_to_pil(image) for image in batch.to("cpu").images]
    if captions is None:
        return _save(grid(pictures, columns=min(columns, len(pictures)), cell=batch.resolution), path)
    if len(captions) != len(pictures):
        raise ValueError(f"{len(captions)} captions for {len(pictures)} images")
    tiles = [with_caption(picture, caption) for picture, caption in zip(pictures, captions, strict=True)]
    columns = min(columns, len(tiles))
    width, height = tiles[0].size
    sheet = Image.new("RGB", (columns * width, -(-len(tiles) // columns) * height), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    return _save(sheet, path)


def with_caption(picture: Image.Image, caption: str, side: int | None = None) -> Image.Image:
    """The crop scaled to ``side`` (at least ``CAPTION_TILE``) over a white band holding its caption."""
    side = side or max(CAPTION_TILE, picture.width)
    font = ImageFont.load_default(size=max(10, side // 16))
    line_height = int(font.getbbox("Ag")[3]) + 2
    chars = max(8, int(side / (0.55 * font.size)))
    lines = textwrap.wrap(caption.strip() or "(empty caption)", width=chars)
    if len(lines) > CAPTION_LINES:
        lines = [*lines[: CAPTION_LINES - 1], textwrap.shorten(" ".join(lines[CAPTION_LINES - 1 :]), chars)]
    tile = Image.new("RGB", (side, side + CAPTION_LINES * line_height + 4), (255, 255, 255))
    tile.paste(picture.resize((side, side), Image.Resampling.BILINEAR), (0, 0))
    draw = ImageDraw.Draw(tile)
    for n, line in enumerate(lines):
        draw.text((3, side + 2 + n * line_height), line, fill=(0, 0, 0), font=font)
    return tile


def read_captions(urls: str | Sequence[str], keys: Sequence[str]) -> list[str]:
    """The caption (``.txt``) of each sample key in D_CLIP shards, read for the preview only: the training
    batch carries no text. Shards are scanned in order until every key is found."""
    wanted, found = set(keys), {}
    for url in expand_urls(urls):
        for _, sample in iter_shard(url, 0, 1, 0):
            key = sample.get("__key__")
            if key in wanted and key not in found:
                text = next((sample[ext] for ext in CAPTION_EXTENSIONS if ext in sample), b"")
                found[key] = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
        if len(found) == len(wanted):
            break
    return [found.get(key, "(no caption)") for key in keys]


def _save(picture: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
