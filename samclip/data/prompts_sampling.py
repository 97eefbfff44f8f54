"""Geometric prompts sampled from SA-1B masks, as in SAM's training: a noisy box or 1..K points per mask."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from samclip.models.prompts import SamPrompts


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes of non-empty [N, H, W] masks, inclusive pixel indices (segment_anything's convention)."""
    rows = masks.any(axis=2)  # [N, H]
    cols = masks.any(axis=1)  # [N, W]
    height, width = masks.shape[1:]
    y0 = rows.argmax(axis=1)
    y1 = height - 1 - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = width - 1 - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def noisy_boxes(
    boxes: np.ndarray, rng: np.random.Generator, noise_std: float, noise_max: float, height: int, width: int
) -> np.ndarray:
    """SAM's box noise: each edge moves by N(0, (noise_std * side)^2) clipped to +-noise_max pixels.

    Edges stay inside the image; an axis whose noisy edges would cross keeps its tight edges.
    """
    sides = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], axis=1)  # [N, 2] (w, h)
    std = noise_std * np.concatenate([sides, sides], axis=1)
    noise = np.clip(rng.normal(size=boxes.shape) * std, -noise_max, noise_max)
    out = boxes + noise.astype(np.float32)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height - 1)
    crossed_x = out[:, 0] > out[:, 2]
    crossed_y = out[:, 1] > out[:, 3]
    out[np.ix_(crossed_x, [0, 2])] = boxes[np.ix_(crossed_x, [0, 2])]
    out[np.ix_(crossed_y, [1, 3])] = boxes[np.ix_(crossed_y, [1, 3])]
    return out


def points_in_mask(
    mask: np.ndarray, box: np.ndarray, num_points: int, rng: np.random.Generator
) -> np.ndarray:
    """``num_points`` (x, y) pixels of ``mask`` drawn uniformly (distinct when the mask is large enough)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    ys, xs = np.nonzero(mask[y0 : y1 + 1, x0 : x1 + 1])  # the box crop keeps this cheap for small masks
    picks = rng.choice(len(xs), size=num_points, replace=len(xs) < num_points)
    return np.stack([xs[picks] + x0, ys[picks] + y0], axis=1).astype(np.float32)


def sample_prompts(
    masks: np.ndarray,
    image_index: int,
    rng: np.random.Generator,
    box_prompt_fraction: float,
    max_points: int,
    box_noise_std: float,
    box_noise_max: float,
) -> tuple[list[SamPrompts], np.ndarray]:
    """Prompt groups for the non-empty [N, H, W] masks of one image, and the mask order they follow.

    See :func:`sample_prompts_from_boxes`, which this calls with the masks' tight boxes and pixels.
    """
    tight = mask_boxes(masks)
    return sample_prompts_from_boxes(
        tight,
        lambda i, count: points_in_mask(masks[i], tight[i], count, rng),
        masks.shape[1:],
        image_index,
        rng,
        box_prompt_fraction,
        max_points,
        box_noise_std,
        box_noise_max,
    )


def sample_prompts_from_boxes(
    tight: np.ndarray,
    draw_points: Callable[[int, int], np.ndarray],
    frame: tuple[int, int],
    image_index: int,
    rng: np.random.Generator,
    box_prompt_fraction: float,
    max_points: int,
    box_noise_std: float,
    box_noise_max: float,
) -> tuple[list[SamPrompts], np.ndarray]:
    """Prompt groups for N masks given by their tight boxes [N, 4] and ``draw_points(i, count)``.

    Each mask gets a box with probability ``box_prompt_fraction``, else 1..``max_points`` foreground
    points (label 1) from ``draw_points``, which must draw from ``rng``. Groups: all boxes, then one group
    per point count (SAM embeds a group as one sequence, so a group shares its prompt kind).
    ``order[k]`` is the mask behind the k-th prompt. ``frame``: (height, width) the boxes stay inside.
    """
    num_masks = len(tight)
    height, width = frame
    is_box = rng.random(num_masks) < box_prompt_fraction
    num_points = rng.integers(1, max_points + 1, size=num_masks)
    groups: list[SamPrompts] = []
    order: list[np.ndarray] = []
    box_ids = np.flatnonzero(is_box)
    if box_ids.size:
        boxes = noisy_boxes(tight[box_ids], rng, box_noise_std, box_noise_max, height, width)
        groups.append(SamPrompts(image_index=image_index, boxes=torch.from_numpy(boxes)))
        order.append(box_ids)
    for count in range(1, max_points + 1):
        ids = np.flatnonzero(~is_box & (num_points == count))
        if ids.size == 0:
            continue
        coords = np.stack([draw_points(int(i), count) for i in ids])
        groups.append(
            SamPrompts(
                image_index=image_index,
                point_coords=torch.from_numpy(coords),
                point_labels=torch.ones(ids.size, count, dtype=torch.int64),
            )
        )
        order.append(ids)
    return groups, np.concatenate(order)
