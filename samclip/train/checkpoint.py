"""Training checkpoints of a stage: written atomically every N steps and at the end, the last K kept.

A training checkpoint holds everything needed to continue bit for bit: the student's weights, the
optimizer and scheduler, the step, every rank's RNG and data-stream states, counters and the resolved
config. It never holds teacher weights (teachers are rebuilt from their own files).
A stage's ``final.pt`` is the separate, smaller format of :mod:`samclip.models.final_checkpoint`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samclip.models.final_checkpoint import atomic_torch_save
from samclip.train.distributed import DistEnv, all_gather_object, barrier

_NAME = re.compile(r"^step_(\d+)\.pt$")


@dataclass
class LoopCounters:
    skipped_steps: int = 0
    consecutive_nonfinite: int = 0


@dataclass
class StageState:
    """What the loop mutates besides the modules, optimizer and streams; saved in every checkpoint."""

    step: int = 0
    counters: LoopCounters = field(default_factory=LoopCounters)
    best: dict[str, Any] | None = None  # the kept best validation record (metric, mode, step, value)


class Checkpointer:
    """``<stage_dir>/checkpoints/step_<N>.pt``; decides itself when to write (every ``every_steps`` and at the end)."""

    def __init__(self, directory: str | Path, every_steps: int, keep_last: int = 2) -> None:
        if every_steps < 0:
            raise ValueError(f"checkpoint.every_steps must be >= 0 (0 = only at the end), got {every_steps}")
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.keep_last = keep_last

    def due(self, step: int, last_step: int) -> bool:
        return step == last_step or (self.every_steps > 0 and step % self.every_steps == 0)

    def paths(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def save_all_ranks(self, step: int, state: dict[str, Any] | None, env: DistEnv) -> None:
        """Rank 0 writes (``state`` is None elsewhere); every rank waits so none runs ahead of the file."""
        if env.is_main:
            assert state is not None
            self.save(step, state)
        barrier(env)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        path = self.directory / f"step_{step:08d}.pt"
        atomic_torch_save(state, path)
        for old in self.paths()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint {path} does not exist")
    # Our own file: it holds RNG states and plain Python containers besides tensors.
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def training_state(
    student: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    streams: Mapping[str, Any],
    loop_state: StageState,
    *,
    stage: str,
    env: DistEnv,
    extra: Mapping[str, Any],
) -> dict[str, Any] | None:
    """The checkpoint's content on rank 0 (None on other ranks); a collective: every rank must call it."""
    rng = all_gather_object(rng_state(), env)
    data = all_gather_object({name: stream.state_dict() for name, stream in streams.items()}, env)
    if not env.is_main:
        return None
    return {
        "format": "samclip-training",
        "stage": stage,
        "step": loop_state.step,
        "counters": asdict(loop_state.counters),
        "best": loop_state.best,
        "student": {key: value.detach().cpu() for key, value in student.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "data": data,
        "world_size": env.world_size,
        **extra,
    }


def restore_training_state(
    path: str | Path,
    student: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    streams: Mapping[str, Any],
    *,
    env: DistEnv,
) -> StageState:
    """Load the training checkpoint at ``path`` into live objects and this rank's RNG; returns the loop state."""
    checkpoint = load_training_checkpoint(path)
    if checkpoint.get("world_size") != env.world_size:
        raise ValueError(
            f"checkpoint {path} was written by {checkpoint.get('world_size')} ranks but this run has "
            f"{env.world_size}: the per-rank data-stream states cannot be mapped"
        )
    student.load_state_dict(checkpoint["student"], strict=True)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    for name, stream in streams.items():
        stream.load_state_dict(checkpoint["data"][env.rank][name])
    set_rng_state(checkpoint["rng"][env.rank])
    return StageState(int(checkpoint["step"]), LoopCounters(**checkpoint["counters"]), checkpoint.get("best"))
