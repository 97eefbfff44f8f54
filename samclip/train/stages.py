"""A stage of the recipe as data: what trains, on which streams, how fast and for how long.

``head_probe``, ``multitask`` and ``res_adapt`` (SAM-CLIP) and ``sam2clip``, ``clip2sam`` (OV-SAM) are
instances of :class:`Stage` (see ``configs/stage/``), named by config; one loop runs them all. Derived numbers (steps per epoch, stop step) are
computed here, once, and the checks that must fail before any work live here too.

A stage's streams are a config value: ``stage.<name>.<stream>`` is a spec of the class
:data:`STREAM_SPECS` registers under that stream name, or null to drop the stream. Each spec class checks
its own values and its fit to the run (patch size, world size, the student's SAM frame), so registering a
class is all a new stream needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from samclip.data.resolution import VariableResolutionSchedule
from samclip.train.config_checks import require_number
from samclip.train.tasks.registry import Registry

_NOT_PATCHES = "is not a multiple of the patch size"
_NOT_RANKS = "images are not divisible by the world size"


@dataclass(frozen=True)
class TermPlan:
    """A task's loss term as plan_run checks it: the stream it reads, its weight and the module it trains."""

    name: str
    stream: str
    weight: float
    module: str  # a trainable prefix of the student, e.g. clip_head, sam_head, adaptors.dino
    weight_key: str  # the config key the weight is set by (loss.sam_weight)


@dataclass(frozen=True)
class StreamContext:
    """What a stage's streams are validated against: the ranks a global batch is split over and the student."""

    world_size: int
    patch_size: int
    image_size: int | None = None  # the student's SAM frame; None skips the frame checks
    model_name: str | None = None  # named in the frame errors


class StreamSpec:
    """A stream of a stage as config: its batch and frame, checked here, and its data stream's arguments.

    ``key`` is the spec's config key (``stage.multitask.sam``); every error names a key below it.
    """

    def check_values(self, key: str) -> None:
        """Types and ranges of the values alone, when the stage is built."""

    def validate(self, key: str, context: StreamContext) -> None:
        """The spec against the run (patch size, world size, SAM frame), before any work."""

    def stream_kwargs(self) -> dict[str, Any]:
        """The arguments the stage gives its data stream (``data.<stream>``'s target)."""
        raise NotImplementedError


# Stream name (the key under stage.<name>, and data.<stream>) -> the spec class it holds.
STREAM_SPECS: Registry[type[StreamSpec]] = Registry("stream spec")


@STREAM_SPECS.register("clip")
@dataclass(frozen=True)
class ClipStreamSpec(StreamSpec):
    """D_CLIP in a stage: variable resolution; the data stream scales the batch as (base_resolution / r)²."""

    resolutions: Sequence[int]
    batch_size: int  # global, at base_resolution
    base_resolution: int
    # Resolutions whose batches are framed like SAM's input (longest side resized, padded), not full-bleed.
    sam_frame_resolutions: Sequence[int] = ()

    def check_values(self, key: str) -> None:
        require_number(f"{key}.batch_size", self.batch_size, minimum=1, integer=True)
        require_number(f"{key}.base_resolution", self.base_resolution, minimum=1, integer=True)
        for resolution in self.resolutions:
            require_number(f"{key}.resolutions", resolution, minimum=1, integer=True)

    def validate(self, key: str, context: StreamContext) -> None:
        for resolution in self.resolutions:
            _require_divisible(f"{key}.resolutions", resolution, context.patch_size, _NOT_PATCHES)
        _require_divisible(f"{key}.batch_size", self.batch_size, context.world_size, _NOT_RANKS)
        outside = sorted(set(self.sam_frame_resolutions) - set(self.resolutions))
        if outside:
            raise ValueError(
                f"{key}.sam_frame_resolutions: {outside} are not among {key}.resolutions {list(self.resolutions)}"
            )
        try:  # the data stream's own rule for the batch at each resolution
            VariableResolutionSchedule(
                self.resolutions, self.batch_size, self.base_resolution, 0, context.world_size
            )
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from error

    def stream_kwargs(self) -> dict[str, Any]:
        return {
            "resolutions": list(self.resolutions),
            "base_batch_size": self.batch_size,
            "base_resolution": self.base_resolution,
            "sam_frame_resolutions": list(self.sam_frame_resolutions),
        }


@dataclass(frozen=True)
class _SamFrameStreamSpec(StreamSpec):
    """A stream of images in SAM's square frame of side ``resolution``, ``batch_size`` of them a step."""

    resolution: int
    batch_size: int  # global images

    def check_values(self, key: str) -> None:
        require_number(f"{key}.batch_size", self.batch_size, minimum=1, integer=True)
        require_number(f"{key}.resolution", self.resolution, minimum=1, integer=True)

    def validate(self, key: str, context: StreamContext) -> None:
        _require_divisible(f"{key}.resolution", self.resolution, context.patch_size, _NOT_PATCHES)
        _require_divisible(f"{key}.batch_size", self.batch_size, context.world_size, _NOT_RANKS)
        if context.image_size is not None and self.resolution != context.image_size:
            raise ValueError(
                f"{key}.resolution: {self.resolution} differs from the model's SAM frame {context.image_size} "
                f"(model {context.model_name})"
            )


@STREAM_SPECS.register("sam")
@dataclass(frozen=True)
class SamStreamSpec(_SamFrameStreamSpec):
    """D_SAM in a stage: SA-1B images in SAM's square frame, ``masks_per_image`` prompts each."""

    masks_per_image: int

    def check_values(self, key: str) -> None:
        super().check_values(key)
        require_number(f"{key}.masks_per_image", self.masks_per_image, minimum=1, integer=True)

    def stream_kwargs(self) -> dict[str, Any]:
        return {
            "global_batch_size": self.batch_size,
            "masks_per_image": self.masks_per_image,
            "image_size": self.resolution,
        }


@STREAM_SPECS.register("instances")
@dataclass(frozen=True)
class InstanceStreamSpec(_SamFrameStreamSpec):
    """COCO/LVIS instances in a stage (CLIP2SAM): images in SAM's frame, up to ``max_instances`` GT objects each."""

    max_instances: int

    def check_values(self, key: str) -> None:
        super().check_values(key)
        require_number(f"{key}.max_instances", self.max_instances, minimum=1, integer=True)

    def stream_kwargs(self) -> dict[str, Any]:
        return {
            "global_batch_size": self.batch_size,
            "max_instances": self.max_instances,
            "image_size": self.resolution,
        }


@dataclass(frozen=True, init=False)
class Stage:
    """A stage: ``streams`` maps each stream it reads (``clip``, ``sam``, ...) to that stream's spec.

    Built from config as ``Stage(name=..., clip={...}, sam=None, ...)``: each keyword that is not a field
    names a stream of :data:`STREAM_SPECS`, its value a spec, the spec's values as a mapping, or None (the
    stream dropped). ``streams=`` gives them as one mapping instead.
    """

    name: str
    trainable: Sequence[str]
    lr: float
    warmup_steps: int
    streams: Mapping[str, StreamSpec] = field(default_factory=dict)  # in config order
    previous: str | None = None
    task: str = "sam_clip"  # the recipe task that trains it: a key of the config's ``tasks``
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    min_lr_ratio: float = 0.0
    # Length: epochs of D_CLIP (the paper's unit), or steps when ``schedule_steps`` is set.
    schedule_epochs: float | None = None
    stop_epoch: float | None = None  # early stop inside the schedule (16 of 20 in multitask)
    schedule_steps: int | None = None
    stop_step: int | None = None

    def __init__(
        self,
        name: str,
        trainable: Sequence[str],
        lr: float,
        warmup_steps: int,
        *,
        streams: Mapping[str, StreamSpec | Mapping[str, Any] | None] | None = None,
        previous: str | None = None,
        task: str = "sam_clip",
        lr_multipliers: Mapping[str, float] | None = None,
        min_lr_ratio: float = 0.0,
        schedule_epochs: float | None = None,
        stop_epoch: float | None = None,
        schedule_steps: int | None = None,
        stop_step: int | None = None,
        **stream_values: StreamSpec | Mapping[str, Any] | None,
    ) -> None:
        if not name:
            raise ValueError("stages: a stage needs a name")
        given = dict(streams or {})
        twice = sorted(given.keys() & stream_values.keys())
        if twice:
            raise ValueError(f"stage.{name}.{twice[0]}: given both on its own and in stage.{name}.streams")
        given.update(stream_values)
        values = {
            "name": name,
            "trainable": trainable,
            "lr": lr,
            "warmup_steps": warmup_steps,
            "streams": {
                stream: _stream_spec(f"stage.{name}.{stream}", stream, value)
                for stream, value in given.items()
                if value is not None
            },
            "previous": previous,
            "task": task,
            "lr_multipliers": dict(lr_multipliers or {}),
            "min_lr_ratio": min_lr_ratio,
            "schedule_epochs": schedule_epochs,
            "stop_epoch": stop_epoch,
            "schedule_steps": schedule_steps,
            "stop_step": stop_step,
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)  # frozen: set once, here
        if not self.streams:
            raise ValueError(
                f"stage.{self.name}: a stage needs at least one of the streams {list(STREAM_SPECS)}"
            )
        if self.schedule_steps is None and self.schedule_epochs is None:
            raise ValueError(f"stage.{self.name}: set schedule_epochs or schedule_steps")
        self._check_values()

    def __getattr__(self, name: str) -> StreamSpec | None:
        # ``stage.sam`` as before streams were a mapping: the spec, or None when the stage lacks the stream.
        if name != "streams" and not name.startswith("_") and name in STREAM_SPECS:
            return self.streams.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def stream(self, name: str) -> StreamSpec | None:
        """The spec of stream ``name``; None when the stage does not read it."""
        return self.streams.get(name)

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
        for stream, spec in self.streams.items():
            spec.check_values(f"{key}.{stream}")

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
        image_size: int | None = None,
        model_name: str | None = None,
    ) -> None:
        """The config errors that must stop a run before any work, each naming its key.

        ``image_size``: the student's SAM frame, which the streams in that frame must match (unchecked if None).
        """
        context = StreamContext(world_size, patch_size, image_size, model_name)
        for stream, spec in self.streams.items():
            spec.validate(f"stage.{self.name}.{stream}", context)
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


def _stream_spec(key: str, stream: str, value: StreamSpec | Mapping[str, Any]) -> StreamSpec:
    """The spec of ``stage.<name>.<stream>``: its registered class, built from a mapping if need be."""
    if stream not in STREAM_SPECS:
        raise ValueError(
            f"{key}: unknown stream {stream!r}; a stage reads the registered streams {list(STREAM_SPECS)}"
        )
    spec_class = STREAM_SPECS.get(stream)
    if isinstance(value, Mapping):
        try:
            return spec_class(**value)
        except TypeError as error:
            raise ValueError(f"{key}: {error}") from None
    if not isinstance(value, spec_class):
        raise ValueError(f"{key}: expected a {spec_class.__name__}, got {type(value).__name__}")
    return value


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
