"""One optimizer step's forward/backward: every CLIP and SAM micro-batch, gradients accumulated.

Each loss is a mean over units (images for L_clip, masks for L_sam). A micro-batch's loss is
scaled by its share of the step's *global* units, and by the world size because DDP averages
gradients over ranks; the accumulated gradient then equals the single-process full-batch gradient,
whatever the micro-batch sizes and the number of ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from samclip.models import SamPrompts
from samclip.train.distributed import DistEnv, all_reduce_sum, maybe_no_sync
from samclip.train.tasks.sam_clip import SamClipTask


@dataclass(frozen=True)
class StepLosses:
    """Global (all-ranks) means for the step; ``total`` is what was differentiated."""

    total: float
    clip: float | None
    sam: float | None
    sam_focal: float | None
    sam_dice: float | None
    num_clip_images: int
    num_sam_images: int
    num_masks: int


def split_clip(images: torch.Tensor, micro_batch_size: int) -> list[torch.Tensor]:
    return list(images.split(micro_batch_size)) if images.shape[0] else []


def split_sam(
    images: torch.Tensor, prompts: Sequence[SamPrompts], micro_batch_size: int
) -> list[tuple[torch.Tensor, list[SamPrompts]]]:
    """Micro-batches of ``micro_batch_size`` images, each with its images' prompt groups re-indexed."""
    micro = []
    for start in range(0, images.shape[0], micro_batch_size):
        stop = min(start + micro_batch_size, images.shape[0])
        groups = [
            replace(group, image_index=group.image_index - start)
            for group in prompts
            if start <= group.image_index < stop
        ]
        if groups:
            micro.append((images[start:stop], groups))
    return micro


def forward_backward(
    task: SamClipTask,
    student: nn.Module,
    clip_batch: Any | None,
    sam_batch: Any | None,
    *,
    clip_micro_batch_size: int,
    sam_micro_batch_size: int,
    env: DistEnv,
    autocast_dtype: torch.dtype | None = None,
) -> StepLosses:
    """Backward of the whole step's loss into ``.grad`` (one gradient all-reduce, on the last micro-batch).

    ``student`` is the (possibly DDP-wrapped) student; ``clip_batch`` has ``images``, ``sam_batch``
    has ``images`` and ``prompts`` (each rank holds its share of the global batch).
    """
    clip_micro = split_clip(clip_batch.images, clip_micro_batch_size) if clip_batch is not None else []
    sam_micro = (
        split_sam(sam_batch.images, sam_batch.prompts, sam_micro_batch_size) if sam_batch is not None else []
    )
    local_counts = [
        sum(m.shape[0] for m in clip_micro),
        sum(m[0].shape[0] for m in sam_micro),
        sum(g.num_prompts for _, groups in sam_micro for g in groups),
    ]
    counts = all_reduce_sum(torch.tensor(local_counts, dtype=torch.float64, device=env.device), env)
    num_clip, num_sam_images, num_masks = (int(c) for c in counts.tolist())

    # [clip, sam, sam_focal, sam_dice]: micro-batch means weighted by their share of the global units.
    sums = torch.zeros(4, dtype=torch.float64, device=env.device)
    calls = [("clip", m) for m in clip_micro] + [("sam", m) for m in sam_micro]
    for index, (kind, micro) in enumerate(calls):
        with maybe_no_sync(student, skip_sync=index < len(calls) - 1):
            with _autocast(env.device, autocast_dtype):
                if kind == "clip":
                    loss = task.clip_loss(student, micro)
                    share = micro.shape[0] / num_clip
                    sums[0] += loss.detach().double() * share
                else:
                    images, groups = micro
                    mask_loss = task.sam_loss(student, images, groups)
                    loss = mask_loss.total
                    share = sum(g.num_prompts for g in groups) / num_masks
                    sums[1:] += (
                        torch.stack([mask_loss.total, mask_loss.focal, mask_loss.dice]).detach().double()
                        * share
                    )
            (loss * (task.weights[kind] * share * env.world_size)).backward()

    sums = all_reduce_sum(sums, env).tolist()
    clip = sums[0] if num_clip else None
    sam = sums[1] if num_masks else None
    total = task.weights["clip"] * (clip or 0.0) + task.weights["sam"] * (sam or 0.0)
    return StepLosses(
        total=total,
        clip=clip,
        sam=sam,
        sam_focal=sums[2] if num_masks else None,
        sam_dice=sums[3] if num_masks else None,
        num_clip_images=num_clip,
        num_sam_images=num_sam_images,
        num_masks=num_masks,
    )


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
