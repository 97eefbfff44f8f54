"""Model FLOPs of a training step, achieved TFLOP/s and MFU against the device's bf16 peak.

FLOPs are what :class:`torch.utils.flop_counter.FlopCounterMode` counts (matmuls, convolutions,
attention; forward and backward, teachers included) on one counted step per batch shape; the
counted step is the real one (the mode only observes), so training is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched in this
# order as substrings of torch.cuda.get_device_name() (so "H100 PCIe" before "H100", "A100" before "A10").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250.0),
    ("H200", 989.0),  # also GH200
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)


def known_peak_tflops(device_name: str) -> float | None:
    """The table's bf16 peak for a CUDA device name, or None when the device is not in it."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def device_peak_tflops(device: torch.device, configured: float | None = None) -> float | None:
    """``trainer.peak_tflops`` when set; otherwise the table's value for a CUDA device, None on CPU."""
    if configured is not None:
        if configured <= 0:
            raise ValueError(f"trainer.peak_tflops must be > 0 (TFLOP/s), got {configured}")
        return float(configured)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = known_peak_tflops(name)
    if peak is None:
        log.warning("no bf16 peak known for %s: MFU is not logged (set trainer.peak_tflops)", name)
    return peak


def achieved(flops: float, seconds: float, peak_tflops: float | None) -> dict[str, float]:
    """``tflops_per_s`` of ``flops`` done in ``seconds``, and ``mfu`` (a fraction) when the peak is known."""
    tflops = flops / max(seconds, 1e-12) / 1e12
    return {"tflops_per_s": tflops} | ({"mfu": tflops / peak_tflops} if peak_tflops else {})


def batch_shape(batch: Any) -> tuple:
    """What a step's FLOPs depend on: the shapes of the batch's tensors and the number of prompts."""
    if isinstance(batch, torch.Tensor):
        return tuple(batch.shape)
    if dataclasses.is_dataclass(batch):
        fields = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
        return tuple(_field_shape(value) for value in fields)
    return (type(batch).__name__,)


def _field_shape(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, list) and value and hasattr(value[0], "num_prompts"):
        return ("prompts", sum(group.num_prompts for group in value))
    return None  # keys, sizes as lists, absent masks: no FLOPs


class StepFlops:
    """Counts a step's model FLOPs (this rank's) the first time each batch shape is seen.

    ``last`` is the FLOP count of the latest step (counted or remembered).
    """

    def __init__(self) -> None:
        self.by_shape: dict[tuple, float] = {}
        self.last = 0.0

    @contextlib.contextmanager
    def count(self, batches: Mapping[str, Any]) -> Iterator[None]:
        key = tuple((name, batch_shape(batch)) for name, batch in sorted(batches.items()))
        if key in self.by_shape:
            self.last = self.by_shape[key]
            yield
            return
        with FlopCounterMode(display=False) as counter:
            yield
        self.last = self.by_shape[key] = float(counter.get_total_flops())
