"""One optimizer step's forward/backward: every micro-batch of every stream, gradients accumulated.

The step knows no recipe: the task (:mod:`samclip.train.tasks.base`) splits each stream's batch and
gives each micro-batch's loss as a mean over its units (images for L_clip, masks for L_sam,
instances for CLIP2SAM). A micro-batch's loss is scaled by its share of the step's *global* units,
and by the world size because DDP averages gradients over ranks; the accumulated gradient then
equals the single-process full-batch gradient, whatever the micro-batch sizes and the number of ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from samclip.models import SamPrompts
from samclip.train.distributed import DistEnv, all_reduce_sum, maybe_no_sync

if TYPE_CHECKING:  # tasks import the splitting helpers below
    from samclip.train.tasks.base import Task


class StepLosses:
    """Global (all-ranks) means for the step; ``total`` is what was differentiated.

    ``streams[term]`` / ``parts[f"{term}_{part}"]`` are None for a term whose stream has no units this step
    (``streams`` is keyed by term: for SAM-CLIP the terms are named as their streams).
    The values stay on the device until one is read: reading any of them is the step's one host
    synchronisation, which the loop does only on the steps it logs. ``total_tensor`` and
    ``image_counts`` are the device-side values for what runs every step.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        keys: Sequence[tuple[str, str | None]],
        sums: torch.Tensor,
        counts: torch.Tensor,
        streams: Sequence[str] | None = None,
    ) -> None:
        self.names = list(weights)
        self.stream_names = list(streams) if streams is not None else list(self.names)
        self.keys = list(keys)
        self.sums = sums  # [len(keys)] float64: per term and part, the global mean
        self.counts = counts  # float64: global units per term, then global images per stream
        streams = sums[: len(self.names)]
        weight = torch.tensor([weights[n] for n in self.names], dtype=sums.dtype, device=sums.device)
        self.total_tensor = (weight * streams).sum()
        self._weights = dict(weights)
        self._read: dict[str, Any] | None = None

    @property
    def image_counts(self) -> torch.Tensor:
        return self.counts[len(self.names) :]

    def _values(self) -> dict[str, Any]:
        if self._read is None:
            values, counts = self.sums.tolist(), self.counts.tolist()
            n = len(self.names)
            units = {name: int(c) for name, c in zip(self.names, counts[:n], strict=True)}
            streams = {name: values[i] if units[name] else None for i, name in enumerate(self.names)}
            parts = {
                f"{name}_{part}": values[i] if units[name] else None
                for i, (name, part) in enumerate(self.keys)
                if part is not None
            }
            self._read = {
                "total": sum(self._weights[name] * (streams[name] or 0.0) for name in self.names),
                "streams": streams,
                "parts": parts,
                "units": units,
                "images": {name: int(c) for name, c in zip(self.stream_names, counts[n:], strict=True)},
            }
        return self._read

    @property
    def total(self) -> float:
        return self._values()["total"]

    @property
    def streams(self) -> dict[str, float | None]:
        return self._values()["streams"]

    @property
    def parts(self) -> dict[str, float | None]:
        return self._values()["parts"]

    @property
    def units(self) -> dict[str, int]:
        return self._values()["units"]

    @property
    def images(self) -> dict[str, int]:
        return self._values()["images"]


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


def task_streams(task: Task) -> list[str]:
    """The streams the task's terms read, in the order of their first term."""
    return list(dict.fromkeys(task.term_streams[term] for term in task.weights))


def forward_backward(
    task: Task,
    student: nn.Module,
    batches: Mapping[str, Any],
    *,
    micro_batch_sizes: Mapping[str, int],
    env: DistEnv,
    autocast_dtype: torch.dtype | None = None,
) -> StepLosses:
    """Backward of the whole step's loss into ``.grad`` (one gradient all-reduce, on the last micro-batch).

    ``student`` is the (possibly DDP-wrapped) student; ``batches`` maps a stream name to this rank's
    share of the step's global batch. Each term's micro-batch mean is scaled by the micro-batch's share of
    its stream's global units and by the term's weight; the terms of one micro-batch share one backward.
    """
    terms = list(task.weights)
    streams = task_streams(task)
    unknown = sorted(set(batches) - set(streams))
    if unknown:
        raise ValueError(f"the task has no loss for the stream(s) {unknown}; it knows {streams}")
    micro = {
        name: task.split(name, batches[name], micro_batch_sizes[name]) if name in batches else []
        for name in streams
    }
    stream_units = {n: float(sum(task.num_units(n, m) for m in micro[n])) for n in streams}
    local = [stream_units[task.term_streams[t]] for t in terms]
    local += [float(sum(task.num_images(n, m) for m in micro[n])) for n in streams]
    # Global counts stay on the device: the loss scales below are device tensors, read by no one here.
    counts = all_reduce_sum(torch.tensor(local, dtype=torch.float64).to(env.device, non_blocking=True), env)
    # A term without global units has no loss to scale; its share is never used (no micro-batches).
    global_units = counts[: len(terms)].clamp(min=1.0)

    keys = [(t, None) for t in terms] + [(t, p) for t in terms for p in task.part_names.get(t, ())]
    slot = {key: index for index, key in enumerate(keys)}
    # Micro-batch means weighted by their share of the global units, per term and per part.
    sums = torch.zeros(len(keys), dtype=torch.float64, device=env.device)
    calls = [(n, m) for n in streams for m in micro[n]]
    for index, (name, chunk) in enumerate(calls):
        with maybe_no_sync(student, skip_sync=index < len(calls) - 1):
            scaled = []
            with _autocast(env.device, autocast_dtype):
                losses = task.loss(name, student, chunk)
                units = task.num_units(name, chunk)
                for term, loss in losses.items():
                    share = units / global_units[terms.index(term)]
                    sums[slot[term, None]] += loss.total.detach().double() * share
                    for part, value in loss.parts.items():
                        sums[slot[term, part]] += value.detach().double() * share
                    scaled.append((loss.total, share * (task.weights[term] * env.world_size)))
            objective = scaled[0][0] * scaled[0][1].to(scaled[0][0].dtype)
            for total, scale in scaled[1:]:
                objective = objective + total * scale.to(total.dtype)
            objective.backward()

    return StepLosses(task.weights, keys, all_reduce_sum(sums, env), counts, streams)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
