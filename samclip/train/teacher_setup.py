"""Frozen teachers for speed: their weights in the autocast dtype (cast once), optionally compiled.

Under bf16 autocast a teacher with fp32 weights has every weight re-cast to bf16 on every call (autocast
caches casts only for tensors that require a gradient); cast once, the matmuls read the same bf16 values.
Only the networks are cast: the teachers' normalisation constants stay fp32.
"""

from __future__ import annotations

from typing import Any

import torch

from samclip.models.teachers import FrozenTeacher


def task_teachers(task: Any) -> list[FrozenTeacher]:
    """The frozen teachers a task holds (its ``teachers`` mapping, or its attributes), whatever the recipe."""
    held = getattr(task, "teachers", None)
    values = held.values() if isinstance(held, dict) else vars(task).values()
    return [value for value in values if isinstance(value, FrozenTeacher)]


def prepare_teachers(
    task: Any, autocast_dtype: torch.dtype | None, compile_encoders: bool = False
) -> list[str]:
    """Cast the task's teachers to ``autocast_dtype`` (when training autocasts) and compile their image
    encoders (``trainer.compile_teachers``); returns what was done, for the log."""
    done = []
    for teacher in task_teachers(task):
        name = type(teacher).__name__
        if autocast_dtype is not None:
            for network in teacher.networks():
                network.to(autocast_dtype)
            done.append(f"{name} in {autocast_dtype}")
        encoder = teacher.heavy_part() if compile_encoders else None
        if encoder is not None:
            encoder.compile()
            done.append(f"{name} image encoder compiled")
    return done
