"""Batches copied to the device one step ahead, on a side CUDA stream, so the copy overlaps the step.

A ``non_blocking`` copy from pinned memory frees the host, but issued on the compute stream it still
waits for the previous step's kernels and delays the next step's. Issued on a side stream while the
current step runs, the copy (and the uint8 -> float conversion in ``batch.to``) is off the critical
path. On a CPU device this is ``batch.to(device)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _tensors(getattr(value, field.name))


class DevicePrefetcher:
    """Iterate ``batches`` (objects with ``.to(device)``) as batches on ``device``, one copied ahead."""

    def __init__(self, batches: Iterator[Any], device: torch.device | str) -> None:
        self.batches = iter(batches)
        self.device = torch.device(device)
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.ahead = self._load() if self.copy_stream is not None else None

    def _load(self) -> Any:
        try:
            batch = next(self.batches)
        except StopIteration:
            return None
        with torch.cuda.stream(self.copy_stream):
            return batch.to(self.device)

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> Any:
        if self.copy_stream is None:
            return next(self.batches).to(self.device)
        batch = self.ahead
        if batch is None:
            raise StopIteration
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.copy_stream)
        for tensor in _tensors(batch):
            if tensor.device.type == "cuda":
                tensor.record_stream(compute)  # memory made on the copy stream, used on the compute one
        self.ahead = self._load()
        return batch
