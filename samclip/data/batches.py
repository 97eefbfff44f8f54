"""The batches the trainer consumes: one CLIP batch and one SAM batch per optimizer step.

Streams build images as uint8 (a quarter of float32's bytes through worker queues, pinned memory and
the host-to-device copy); ``.to(device)`` converts them to float in [0, 1] on the device, which is what
models and teachers receive. ``.to`` is idempotent: float images (tests, fakes) pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from samclip.data.images import uint8_to_unit
from samclip.data.teacher_cache import CachedOutputs, map_outputs
from samclip.models.preprocess import SAM_PAD_VALUE
from samclip.models.prompts import SamPrompts

# The SAM pad value is not a whole uint8 level (123.675 / 255, ...): uint8 batches carry it rounded, and
# ``.to`` writes the exact value back after the conversion so the padding still normalises to zero.
SAM_PAD_VALUE_UINT8 = tuple(round(v * 255) for v in SAM_PAD_VALUE)


def _device_pixels(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    moved = images.to(device, non_blocking=True)
    return uint8_to_unit(moved) if moved.dtype == torch.uint8 else moved


def restore_sam_padding(images: torch.Tensor, sizes: list[list[int]]) -> torch.Tensor:
    """Exact ``SAM_PAD_VALUE`` outside each image's (h, w) in a [B, 3, S, S] float batch, in place."""
    pad = images.new_tensor(SAM_PAD_VALUE).view(3, 1, 1)
    for image, (height, width) in zip(images, sizes, strict=True):
        image[:, height:, :] = pad
        image[:, :height, width:] = pad
    return images


@dataclass
class ClipBatch:
    """Images of D_CLIP for one rank and one step, all at the step's resolution."""

    images: torch.Tensor  # [B, 3, R, R] uint8 from the stream; float in [0, 1] after .to(device)
    resolution: int
    keys: list[str] = field(default_factory=list)  # sample keys, for debugging and resume checks
    # (h, w) of each image before SAM-frame padding, for batches framed as SAM frames its input; else None.
    frame_sizes: torch.Tensor | None = None
    # A teacher cache's outputs of these views: [B, D] (one output, the CLIP teacher's embedding), or by name.
    teacher_embeds: CachedOutputs | None = None

    def to(self, device: torch.device | str) -> ClipBatch:
        framed = self.frame_sizes is not None and self.images.dtype == torch.uint8
        images = _device_pixels(self.images, device)
        if framed:
            images = restore_sam_padding(images, self.frame_sizes.tolist())
        embeds = self.teacher_embeds
        return replace(
            self,
            images=images,
            teacher_embeds=map_outputs(embeds, lambda t: t.to(device, non_blocking=True)),
        )

    def pin_memory(self) -> ClipBatch:
        embeds = self.teacher_embeds
        return replace(
            self,
            images=self.images.pin_memory(),
            teacher_embeds=map_outputs(embeds, torch.Tensor.pin_memory),
        )


@dataclass
class SamBatch:
    """SA-1B images in SAM's input frame with the geometric prompts sampled from their masks.

    ``prompts[k].image_index`` indexes into the batch; the student and the SAM teacher receive the same
    prompts. ``gt_masks[i]`` (when requested) holds image i's masks in the order of its prompt groups.
    """

    images: (
        torch.Tensor
    )  # [B, 3, S, S] uint8 (float in [0, 1] after .to), padded bottom/right with SAM_PAD_VALUE
    input_sizes: torch.Tensor  # [B, 2] (h, w) of the resized image before padding
    original_sizes: torch.Tensor  # [B, 2] (h, w) of the image as stored
    prompts: list[SamPrompts]
    gt_masks: list[torch.Tensor] | None = None  # per image [N_i, S, S] bool
    keys: list[str] = field(default_factory=list)
    # A teacher cache's outputs of these images: [B, 256, h, w] (the SAM teacher's image embeddings), or by name.
    teacher_embeds: CachedOutputs | None = None

    def to(self, device: torch.device | str) -> SamBatch:
        convert = self.images.dtype == torch.uint8
        images = _device_pixels(self.images, device)
        if convert:
            images = restore_sam_padding(images, self.input_sizes.tolist())
        embeds = self.teacher_embeds
        return replace(
            self,
            images=images,
            teacher_embeds=map_outputs(embeds, lambda t: t.to(device, non_blocking=True)),
            input_sizes=self.input_sizes.to(device, non_blocking=True),
            original_sizes=self.original_sizes.to(device, non_blocking=True),
            prompts=[p.to(device) for p in self.prompts],
            gt_masks=None
            if self.gt_masks is None
            else [m.to(device, non_blocking=True) for m in self.gt_masks],
        )

    def pin_memory(self) -> SamBatch:
        return replace(
            self,
            images=self.images.pin_memory(),
            gt_masks=None if self.gt_masks is None else [m.pin_memory() for m in self.gt_masks],
            teacher_embeds=map_outputs(self.teacher_embeds, torch.Tensor.pin_memory),
        )
