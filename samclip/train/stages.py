"""A stage of the recipe as data: what trains, on which streams, how fast and for how long.

``head_probe``, ``multitask`` and ``res_adapt`` are three instances of :class:`Stage` (see
``configs/stage/``); one loop runs them all. Derived numbers (steps per epoch, stop step) are
computed here, once, and the checks that must fail before any work live here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from samclip.train.config_checks import require_number

STAGE_NAMES = ("head_probe", "multitask", "res_adapt")
HEAD_LOSSES = {"clip_head": "clip", "sam_head": "sam"}


@dataclass(frozen=True)
class ClipStreamSpec:
    """D_CLIP in a stage: variable resolution; the data stream scales the batch as (base_resolution / r)²."""

    resolutions: Sequence[int]
    batch_size: int  # global, at base_resolution
    base_resolution: int
    # Resolutions whose batches are framed like SAM's input (longest side resized, padded), not full-bleed.
    sam_frame_resolutions: Sequence[int] = ()


@dataclass(frozen=True)
class SamStreamSpec:
    """D_SAM in a stage: SA-1B images in SAM's square frame, ``masks_per_image`` prompts each."""

    resolution: int
    batch_size: int  # global images
    masks_per_image: int


@dataclass(frozen=True)
class Stage:
    name: str
    trainable: Sequence[str]
    lr: float
    warmup_steps: int
    clip: ClipStreamSpec | None = None
    sam: SamStreamSpec | None = None
    previous: str | None = None
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    min_lr_ratio: float = 0.0
    # Length: epochs of D_CLIP (the paper's unit), or steps when ``schedule_steps`` is set.
    schedule_epochs: float | None = None
    stop_epoch: float | None = None  # early stop inside the schedule (16 of 20 in multitask)
    schedule_steps: int | None = None
    stop_step: int | None = None

    def __post_init__(self) -> None:
        if self.name not in STAGE_NAMES:
            raise ValueError(f"stages: unknown stage {self.name!r}; available: {list(STAGE_NAMES)}")
        if self.clip is None and self.sam is None:
            raise ValueError(f"stage.{self.name}: a stage needs at least one of the clip and sam streams")
        if self.schedule_steps is None and self.schedule_epochs is None:
            raise ValueError(f"stage.{self.name}: set schedule_epochs or schedule_steps")
        self._check_values()

    def _check_values(self) -> None:
        key = f"stage.{self.name}"
        require_number(f"{key}.lr", self.lr, above=0)
        require_number(f"{key}.warmup_steps", self.warmup_steps, minimum=0, integer=True)
        require_number(f"{key}.min_lr_ratio", self.min_lr_ratio, minimum=0, maximum=1)
        require_number(f"{key}.schedule_epochs", self.schedule_epochs, above=0, optional=True)
        require_number(f"{key}.stop_epoch", self.stop_epoch, above=0, optional=True)
        require_number(f"{key}.schedule_steps", self.schedule_steps, minimum=1, integer=True, optional=True)
        require_number(f"{key}.stop_step", self.stop_step, minimum=1, integer=True, optional=True)
        for name, multiplier in self.lr_multipliers.items():
            require_number(f"{key}.lr_multipliers.{name}", multiplier, minimum=0)
        if self.clip is not None:
            require_number(f"{key}.clip.batch_size", self.clip.batch_size, minimum=1, integer=True)
            require_number(f"{key}.clip.base_resolution", self.clip.base_resolution, minimum=1, integer=True)
            for resolution in self.clip.resolutions:
                require_number(f"{key}.clip.resolutions", resolution, minimum=1, integer=True)
        if self.sam is not None:
            require_number(f"{key}.sam.batch_size", self.sam.batch_size, minimum=1, integer=True)
            require_number(f"{key}.sam.resolution", self.sam.resolution, minimum=1, integer=True)
            require_number(f"{key}.sam.masks_per_image", self.sam.masks_per_image, minimum=1, integer=True)

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(name for name in ("clip", "sam") if getattr(self, name) is not None)

    def schedule_length(self, steps_per_epoch: int | None) -> int:
        """Steps of the warmup + cosine schedule; an epoch is a pass over D_CLIP (the stream's count)."""
        if self.schedule_steps is not None:
            return int(self.schedule_steps)
        return math.ceil(self.schedule_epochs * _need(steps_per_epoch, self.name))

    def stop_length(self, steps_per_epoch: int | None, max_steps: int | None = None) -> int:
        """Steps actually run: the early stop if any, capped by ``trainer.max_steps`` (the schedule is kept)."""
        length = self.schedule_length(steps_per_epoch)
        if self.stop_step is not None:
            length = min(length, int(self.stop_step))
        elif self.stop_epoch is not None and self.schedule_steps is None:
            length = min(length, math.ceil(self.stop_epoch * _need(steps_per_epoch, self.name)))
        if max_steps is not None:
            length = min(length, int(max_steps))
        return length

    def validate(
        self,
        *,
        trainable_names: Sequence[str],
        loss_weights: dict[str, float],
        world_size: int,
        patch_size: int,
    ) -> None:
        """The config errors that must stop a run before any work, each naming its key."""
        key = f"stage.{self.name}"
        not_patches, not_ranks = (
            "is not a multiple of the patch size",
            "images are not divisible by the world size",
        )
        if self.clip is not None:
            for resolution in self.clip.resolutions:
                _require_divisible(f"{key}.clip.resolutions", resolution, patch_size, not_patches)
            _require_divisible(f"{key}.clip.batch_size", self.clip.batch_size, world_size, not_ranks)
            outside = sorted(set(self.clip.sam_frame_resolutions) - set(self.clip.resolutions))
            if outside:
                raise ValueError(
                    f"{key}.clip.sam_frame_resolutions: {outside} are not among "
                    f"{key}.clip.resolutions {list(self.clip.resolutions)}"
                )
        if self.sam is not None:
            _require_divisible(f"{key}.sam.resolution", self.sam.resolution, patch_size, not_patches)
            _require_divisible(f"{key}.sam.batch_size", self.sam.batch_size, world_size, not_ranks)
        for head, loss in HEAD_LOSSES.items():
            if not any(name.startswith(f"{head}.") for name in trainable_names):
                continue
            if loss not in self.streams:
                raise ValueError(
                    f"stage.{self.name}.trainable: {head} is trainable but the stage has no {loss} stream "
                    f"(stage.{self.name}.{loss} is null)"
                )
            if loss_weights.get(loss, 0.0) == 0.0:
                raise ValueError(
                    f"loss.{loss}_weight is 0 but stage {self.name} trains {head}; "
                    f"freeze {head} or give its loss a weight"
                )


def _require_divisible(key: str, value: int, divisor: int, complaint: str) -> None:
    if value % divisor:
        raise ValueError(f"{key}: {value} {complaint} {divisor}")


def _need(steps_per_epoch: int | None, stage: str) -> int:
    if steps_per_epoch is None:
        raise ValueError(
            f"stage.{stage}: a length in epochs needs a D_CLIP epoch (set data.clip.num_samples, or use "
            f"stage.{stage}.schedule_steps)"
        )
    return int(steps_per_epoch)
