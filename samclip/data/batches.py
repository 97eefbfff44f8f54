"""The batches the trainer consumes: one CLIP batch and one SAM batch per optimizer step."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from samclip.models.prompts import SamPrompts


@dataclass
class ClipBatch:
    """Images of D_CLIP for one rank and one step, all at the step's resolution."""

    images: torch.Tensor  # [B, 3, R, R] float in [0, 1]
    resolution: int
    keys: list[str] = field(default_factory=list)  # sample keys, for debugging and resume checks
    teacher_embeds: torch.Tensor | None = None  # [B, D] the CLIP teacher's cached embeddings of these views

    def to(self, device: torch.device | str) -> ClipBatch:
        embeds = self.teacher_embeds
        return replace(
            self,
            images=self.images.to(device, non_blocking=True),
            teacher_embeds=None if embeds is None else embeds.to(device, non_blocking=True),
        )


@dataclass
class SamBatch:
    """SA-1B images in SAM's input frame with the geometric prompts sampled from their masks.

    ``prompts[k].image_index`` indexes into the batch; the student and the SAM teacher receive the same
    prompts. ``gt_masks[i]`` (when requested) holds image i's masks in the order of its prompt groups.
    """

    images: torch.Tensor  # [B, 3, S, S] float in [0, 1], padded bottom/right with SAM_PAD_VALUE
    input_sizes: torch.Tensor  # [B, 2] (h, w) of the resized image before padding
    original_sizes: torch.Tensor  # [B, 2] (h, w) of the image as stored
    prompts: list[SamPrompts]
    gt_masks: list[torch.Tensor] | None = None  # per image [N_i, S, S] bool
    keys: list[str] = field(default_factory=list)
    teacher_embeds: torch.Tensor | None = None  # [B, 256, h, w] the SAM teacher's cached image embeddings

    def to(self, device: torch.device | str) -> SamBatch:
        embeds = self.teacher_embeds
        return replace(
            self,
            teacher_embeds=None if embeds is None else embeds.to(device, non_blocking=True),
            images=self.images.to(device, non_blocking=True),
            input_sizes=self.input_sizes.to(device, non_blocking=True),
            original_sizes=self.original_sizes.to(device, non_blocking=True),
            prompts=[p.to(device) for p in self.prompts],
            gt_masks=None
            if self.gt_masks is None
            else [m.to(device, non_blocking=True) for m in self.gt_masks],
        )
