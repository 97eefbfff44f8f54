"""How a stream's batch is cut into micro-batches and counted: the only place that knows a batch's shape.

``images`` (D_CLIP): a batch of images; a unit is an image. ``prompted_images`` (D_SAM): images with
prompt groups; a unit is a mask (a prompt). A batch may carry a teacher cache's outputs for its images
(``teacher_embeds``: a tensor, or a dict of named tensors); they travel with their images into each
micro-batch, for the term that owns the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from samclip.data.teacher_cache import CachedOutputs
from samclip.models import SamPrompts
from samclip.train.step import split_clip, split_sam
from samclip.train.tasks.registry import Registry


@dataclass(frozen=True)
class Micro:
    """One micro-batch: its images, their prompt groups (prompted streams) and cached teacher outputs by term."""

    images: torch.Tensor
    prompts: Sequence[SamPrompts] | None = None
    cached: dict[str, CachedOutputs] = field(default_factory=dict)


def split_outputs(
    cached: CachedOutputs, split: Callable[[torch.Tensor], list[torch.Tensor]]
) -> list[CachedOutputs]:
    """Cached outputs cut into micro-batches by ``split`` (each named output alike)."""
    if isinstance(cached, torch.Tensor):
        return split(cached)
    parts = {name: split(value) for name, value in cached.items()}
    return [dict(zip(parts, values, strict=True)) for values in zip(*parts.values(), strict=True)]


class StreamKind(Protocol):
    def split(self, batch: Any, micro_batch_size: int, cache_owner: str | None) -> list[Micro]: ...

    def num_units(self, micro: Micro) -> int: ...


STREAM_KINDS: Registry[type[StreamKind]] = Registry("stream kind")


@STREAM_KINDS.register("images")
class ImageStream:
    """Chunks of images; a unit is an image (L_clip, dense features: a mean over images)."""

    def split(self, batch: Any, micro_batch_size: int, cache_owner: str | None) -> list[Micro]:
        chunks = split_clip(batch.images, micro_batch_size)
        embeds = getattr(batch, "teacher_embeds", None)
        if embeds is None or cache_owner is None:
            return [Micro(images) for images in chunks]
        cached = split_outputs(embeds, lambda t: split_clip(t, micro_batch_size))
        return [Micro(i, cached={cache_owner: e}) for i, e in zip(chunks, cached, strict=True)]

    def num_units(self, micro: Micro) -> int:
        return micro.images.shape[0]


@STREAM_KINDS.register("prompted_images")
class PromptedImageStream:
    """Chunks of images with their prompt groups re-indexed; a unit is a mask (L_sam: a mean over masks)."""

    def split(self, batch: Any, micro_batch_size: int, cache_owner: str | None) -> list[Micro]:
        chunks = split_sam(batch.images, batch.prompts, micro_batch_size)
        embeds = getattr(batch, "teacher_embeds", None)
        if embeds is None or cache_owner is None:
            return [Micro(images, groups) for images, groups in chunks]
        cached = split_outputs(
            embeds, lambda t: [e for e, _ in split_sam(t, batch.prompts, micro_batch_size)]
        )
        return [
            Micro(images, groups, {cache_owner: e})
            for (images, groups), e in zip(chunks, cached, strict=True)
        ]

    def num_units(self, micro: Micro) -> int:
        return sum(group.num_prompts for group in micro.prompts or ())
