"""A stage of the recipe as data: what trains, on which streams, how fast and for how long.

``head_probe``, ``multitask`` and ``res_adapt`` (SAM-CLIP) and ``sam2clip``, ``clip2sam`` (OV-SAM) are
instances of :class:`Stage` (see ``configs/stage/``), named by config; one loop runs them all. Derived numbers (steps per epoch, stop step) are
computed here, once, and the checks that must fail before any work live here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from samclip.train.config_checks import require_number


@dataclass(frozen=True)
class TermPlan:
    """A task's loss term as plan_run checks it: the stream it reads, its weight and the module it trains."""

    name: str
    stream: str
    weight: float
    module: str  # a trainable prefix of the student, e.g. clip_head, sam_head, adaptors.dino
    weight_key: str  # the config key the weight is set by (loss.sam_weight)


@dataclass(frozen=True)
class ClipStreamSpec:
    """D_CLIP in a stage: variable resolution; the data stream scales the batch as (base_resolution / r)²."""

    resolutions: Sequence[int]
    batch_size: int  # global, at base_resolution
    base_resolution: int
    # Resolutions whose batches are framed like SAM's input (longest side resized, padded), not full-bleed.
    sam_frame_resolutions: Sequence[int] = ()

    def stream_kwargs(self) -> dict[str, Any]:
        return {
            "resolutions": list(self.resolutions),
            "base_batch_size": self.batch_size,
            "base_resolution": self.base_resolution,
            "sam_frame_resolutions": list(self.sam_frame_resolutions),
        }


@dataclass(frozen=True)
class SamStreamSpec:
    """D_SAM in a stage: SA-1B images in SAM's square frame, ``masks_per_image`` prompts each."""

    resolution: int
    batch_size: int  # global images
    masks_per_image: int

    def stream_kwargs(self) -> dict[str, Any]:
        return {
            "global_batch_size": self.batch_size,
            "masks_per_image": self.masks_per_image,
            "image_size": self.resolution,
        }


@dataclass(frozen=True)
class InstanceStreamSpec:
    """COCO/LVIS instances in a stage (CLIP2SAM): images in SAM's frame, up to ``max_instances`` GT objects each."""

    resolution: int
    batch_size: int  # global images
    max_instances: int

    def stream_kwargs(self) -> dict[str, Any]:
        return {
            "global_batch_size": self.batch_size,
            "max_instances": self.max_instances,
            "image_size": self.resolution,
        }


STREAM_NAMES = ("clip", "sam", "instances")


@dataclass(frozen=True)
class Stage:
    name: str
    trainable: Sequence[str]
    lr: float
    warmup_steps: int
    clip: ClipStreamSpec | None = None
    sam: SamStreamSpec | None = None
    instances: InstanceStreamSpec | None = None
    previous: str | None = None
    task: str = "sam_clip"  # the recipe task that trains it: a key of the config's ``tasks``
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    min_lr_ratio: float = 0.0
    # Length: epochs of D_CLIP (the paper's unit), or steps when ``schedule_steps`` is set.
    schedule_epochs: float | None = None
    stop_epoch: float | None = None  # early stop inside the schedule (16 of 20 in multitask)
    schedule_steps: int | None = None
    stop_step: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("stages: a stage needs a name")
        if not self.streams:
            raise ValueError(
                f"stage.{self.name}: a stage needs at least one of the streams {list(STREAM_NAMES)}"
            )
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
        return tuple(name for name in STREAM_NAMES if getattr(self, name) is not None)

    def stream_spec(self, name: str) -> ClipStreamSpec | SamStreamSpec | InstanceStreamSpec:
        return getattr(self, name)

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
        terms: Sequence[TermPlan],
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
        if self.instances is not None:
            _require_divisible(
                f"{key}.instances.resolution", self.instances.resolution, patch_size, not_patches
            )
            _require_divisible(
                f"{key}.instances.batch_size", self.instances.batch_size, world_size, not_ranks
            )
        for module in dict.fromkeys(term.module for term in terms):
            if not any(name.startswith(f"{module}.") for name in trainable_names):
                continue
            readers = [term for term in terms if term.module == module]
            if not any(term.stream in self.streams for term in readers):
                stream = readers[0].stream
                raise ValueError(
                    f"stage.{self.name}.trainable: {module} is trainable but the stage has no {stream} stream "
                    f"(stage.{self.name}.{stream} is null)"
                )
            if all(term.weight == 0.0 for term in readers if term.stream in self.streams):
                key = next(term.weight_key for term in readers if term.stream in self.streams)
                raise ValueError(
                    f"{key} is 0 but stage {self.name} trains {module}; freeze {module} or give its loss a weight"
                )


def _require_divisible(key: str, value: int, divisor: int, complaint: str) -> None:
    if value % divisor:
        raise ValueError(f"{key}: {value} {complaint} {divisor}")


def _need(steps_per_epoch: int | None, stage: str) -> int:
    if steps_per_epoch is None:
        raise ValueError(
            f"stage.{stage}: a length in epochs needs the stream's epoch (set data.<stream>.num_samples, or use "
            f"stage.{stage}.schedule_steps)"
        )
    return int(steps_per_epoch)
