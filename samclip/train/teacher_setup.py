"""Frozen teachers for speed: their weights in the autocast dtype (cast once), optionally compiled.

Under bf16 autocast a teacher with fp32 weights has every weight re-cast to bf16 on every call (autocast
caches casts only for tensors that require a gradient); cast once, the matmuls read the same bf16 values.
Only the networks are cast: the teachers' normalisation constants stay fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from samclip.models.teachers import ClipTeacher, FrozenTeacher, SamTeacher


def task_teachers(task: Any) -> list[FrozenTeacher]:
    """The frozen teachers a task holds (its attributes), whatever the recipe."""
    return [value for value in vars(task).values() if isinstance(value, FrozenTeacher)]


def _networks(teacher: FrozenTeacher) -> list[nn.Module]:
    if isinstance(teacher, ClipTeacher):
        return [teacher.model]
    if isinstance(teacher, SamTeacher):
        return [teacher.sam]
    return [teacher]


def _heavy_part(teacher: FrozenTeacher) -> nn.Module | None:
    """The image encoder: what a step spends the teacher's FLOPs in."""
    if isinstance(teacher, ClipTeacher):
        return teacher.model.visual
    if isinstance(teacher, SamTeacher):
        return teacher.sam.image_encoder
    return None


def prepare_teachers(
    task: Any, autocast_dtype: torch.dtype | None, compile_encoders: bool = False
) -> list[str]:
    """Cast the task's teachers to ``autocast_dtype`` (when training autocasts) and compile their image
    encoders (``trainer.compile_teachers``); returns what was done, for the log."""
    done = []
    for teacher in task_teachers(task):
        name = type(teacher).__name__
        if autocast_dtype is not None:
            for network in _networks(teacher):
                network.to(autocast_dtype)
            done.append(f"{name} in {autocast_dtype}")
        encoder = _heavy_part(teacher) if compile_encoders else None
        if encoder is not None:
            encoder.compile()
            done.append(f"{name} image encoder compiled")
    return done
