"""The recipe contract: what the generic step and loop ask of a task (SAM-CLIP, SAM2CLIP, CLIP2SAM).

A task names its loss terms, their weights and the stream each reads; it splits a stream's batch into
micro-batches, counts each micro-batch's units (images, masks, instances) and images, and returns, for
each term reading the stream, the micro-batch's loss as a *mean over its units* plus named parts for
logging. The step weights each micro-batch by its share of the step's global units, so any split over
micro-batches and ranks gives the full-batch gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn


class StreamLoss(NamedTuple):
    """A term's loss on a micro-batch (mean over its units) and its named parts (``loss_<term>_<part>`` in the logs)."""

    total: torch.Tensor
    parts: Mapping[str, torch.Tensor]


class Task(Protocol):
    student: nn.Module
    # Loss weight per term the recipe knows; the step sums weight * term mean.
    weights: Mapping[str, float]
    # The stream each term reads (several terms may read one stream).
    term_streams: Mapping[str, str]
    # Names of each term's loss parts (a fixed set, logged as None when its stream is absent).
    part_names: Mapping[str, tuple[str, ...]]
    # Whether some trainable parameters get no gradient in a step (DDP must then look for them).
    find_unused_parameters: bool

    def to(self, device: torch.device) -> Task: ...

    def train(self) -> None: ...

    def split(self, stream: str, batch: Any, micro_batch_size: int) -> list[Any]: ...

    def num_units(self, stream: str, micro: Any) -> int: ...

    def num_images(self, stream: str, micro: Any) -> int: ...

    def loss(self, stream: str, student: Callable[..., Any], micro: Any) -> Mapping[str, StreamLoss]:
        """The loss of each term reading ``stream`` on one micro-batch, by term name."""
        ...

    def freeze_without_loss_path(self, streams: Sequence[str]) -> list[str]:
        """Freeze (and return) trainable parameters that no loss of ``streams`` reaches."""
        ...
