"""Training checkpoints of a stage: written atomically every N steps and at the end, the last K kept.

A training checkpoint holds everything needed to continue bit for bit: the student's weights, the
optimizer and scheduler, the step, every rank's RNG and data-stream states, counters and the resolved
config. It never holds teacher weights (teachers are rebuilt from their own files).
A stage's ``final.pt`` is the separate, smaller format of :mod:`samclip.models.final_checkpoint`.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samclip.models.checkpoint_files import read_torch_file
from samclip.models.final_checkpoint import atomic_torch_save
from samclip.train.distributed import DistEnv, all_gather_object, barrier

log = logging.getLogger(__name__)

FORMAT = "samclip-training"
_NAME = re.compile(r"^step_(\d+)\.pt$")
# atomic_torch_save's temporary files (``.step_<N>.pt.<random>.tmp`` here, ``.final.pt.<random>.tmp`` in the
# stage folder), left behind only by a kill.
_PARTIAL = re.compile(r"^\.(step_\d+|final)\.pt\..*\.tmp$")
_REQUIRED = ("stage", "step", "counters", "student", "optimizer", "scheduler", "rng", "data", "world_size")


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

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads (an unreadable newer one is skipped with a warning naming both)."""
        failures: list[tuple[Path, Exception]] = []
        for path in reversed(self.paths()):
            try:
                checkpoint = load_training_checkpoint(path)
            except (ValueError, OSError) as error:
                failures.append((path, error))
                continue
            for bad, error in failures:
                log.warning(
                    "training checkpoint %s is unreadable (%s); resuming from %s instead", bad, error, path
                )
            return path, checkpoint
        if failures:
            raise ValueError(
                f"no training checkpoint in {self.directory} loads: "
                + "; ".join(f"{path.name}: {error}" for path, error in failures)
            )
        return None

    def clean_partial_writes(self) -> list[Path]:
        """Remove the temporary files of writes a kill interrupted (rank 0, at the stage's start)."""
        folders = [folder for folder in (self.directory, self.directory.parent) if folder.is_dir()]
        partial = sorted(p for folder in folders for p in folder.iterdir() if _PARTIAL.match(p.name))
        for path in partial:
            path.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted checkpoint write", path)
        return partial

    def save_all_ranks(self, step: int, state: dict[str, Any] | None, env: DistEnv) -> None:
        """Rank 0 writes (``state`` is None elsewhere); every rank waits so none runs ahead of the file."""
        if env.is_main:
            assert state is not None
            self.save(step, state)
        barrier(env)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        path = self.directory / f"step_{step:08d}.pt"
        atomic_torch_save(state, path)
        # Later steps than this one are leftovers of a run that resumed from before them (unreadable ones).
        kept = [p for p in self.paths() if int(_NAME.match(p.name).group(1)) <= step]
        for stale in sorted(set(self.paths()) - set(kept)):
            stale.unlink(missing_ok=True)
        for old in kept[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Tensors and plain containers only (``weights_only=True``): a planted file cannot run code."""
    path = Path(path)
    checkpoint = read_torch_file(path, "training checkpoint")
    if isinstance(checkpoint, dict) and "format_version" in checkpoint and "model_config" in checkpoint:
        raise ValueError(
            f"{path} is a stage's final.pt (a model), not a training checkpoint (checkpoints/step_*.pt)"
        )
    missing = [key for key in _REQUIRED if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a samclip training checkpoint (format or keys {missing} missing)")
    return checkpoint


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _numpy_state() -> dict[str, Any]:
    """numpy's legacy state tuple with its key array as a tensor (``weights_only`` refuses ndarrays)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "bit_generator": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["bit_generator"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
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
        "format": FORMAT,
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
    checkpoint: Mapping[str, Any] | None = None,
    stage: str | None = None,
    keep_new_hyperparameters: bool = False,
) -> StageState:
    """Load the training checkpoint at ``path`` into live objects and this rank's RNG; returns the loop state.

    ``checkpoint`` is the already-loaded content of ``path`` (see :meth:`Checkpointer.load_latest`).
    ``keep_new_hyperparameters``: the optimizer's and schedule's configured values (lr, decay, schedule
    length) win over the checkpoint's, for a resume that was allowed to change them.
    """
    checkpoint = load_training_checkpoint(path) if checkpoint is None else checkpoint
    if stage is not None and checkpoint["stage"] != stage:
        raise ValueError(
            f"training checkpoint {path} belongs to stage {checkpoint['stage']!r}, not to stage {stage!r}"
        )
    saved_world_size = int(checkpoint["world_size"])
    _require_same_shapes(path, checkpoint["student"], student.state_dict())
    fresh = _hyperparameters(optimizer, scheduler) if keep_new_hyperparameters else None
    student.load_state_dict(checkpoint["student"], strict=True)
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except ValueError as error:
        raise ValueError(
            f"training checkpoint {path}: its optimizer does not fit this stage's ({error})"
        ) from error
    scheduler.load_state_dict(checkpoint["scheduler"])
    if fresh is not None:
        _apply_hyperparameters(optimizer, scheduler, fresh)
    if saved_world_size == env.world_size:
        for name, stream in streams.items():
            saved = checkpoint["data"][env.rank][name]
            # An allowed change of the shard list continues from the same epoch and step with fresh cursors.
            if keep_new_hyperparameters:
                stream.load_state_dict(saved, strict=False)
            else:
                stream.load_state_dict(saved)
        set_rng_state(checkpoint["rng"][env.rank])
    else:
        _map_to_world_size(path, checkpoint, streams, env)
    return StageState(int(checkpoint["step"]), LoopCounters(**checkpoint["counters"]), checkpoint.get("best"))


def _map_to_world_size(
    path: str | Path, checkpoint: Mapping[str, Any], streams: Mapping[str, Any], env: DistEnv
) -> None:
    """Resume on another number of ranks: same global step, epoch and step; the epoch's shard cursors restart.

    Weights, optimizer and schedule are global, so they load exactly. The data position cannot be mapped
    sample for sample onto a new sharding: every rank restarts the current epoch's shards at its new slot
    and keeps the epoch's step count, so at most the samples of the ``s`` steps already taken in this epoch
    are seen again and as many at the epoch's end are not (none when resuming at an epoch boundary).
    Skip counts are summed onto rank 0 so the run's totals are kept.
    """
    saved_world_size = int(checkpoint["world_size"])
    for name, stream in streams.items():
        per_rank = [checkpoint["data"][rank][name] for rank in range(saved_world_size)]
        mapped = dict(per_rank[0])
        skipped: dict[str, int] = {}
        for state in per_rank:
            for key, value in state.get("skipped", {}).items():
                skipped[key] = skipped.get(key, 0) + int(value)
        mapped["skipped"] = skipped if env.is_main else {}
        mapped["seen"] = sum(int(state.get("seen", 0)) for state in per_rank) if env.is_main else 0
        stream.load_state_dict(mapped, strict=False)
        if env.is_main:
            log.warning(
                "%s: resuming from %s, written by %d ranks, on %d: global step %d, epoch %d; the epoch's shard "
                "cursors restart, so at most the samples of the %d steps already taken in this epoch are seen "
                "again, and as many at its end are not",
                name,
                path,
                saved_world_size,
                env.world_size,
                int(checkpoint["step"]),
                int(mapped.get("epoch", 0)),
                int(mapped.get("step", 0)),
            )
    # Per-rank randomness (augmentation, prompt sampling) continues where a rank of that index left off.
    set_rng_state(checkpoint["rng"][env.rank % saved_world_size])


def _require_same_shapes(
    path: str | Path, saved: Mapping[str, torch.Tensor], live: Mapping[str, torch.Tensor]
) -> None:
    """One line naming both models instead of torch's per-tensor ``size mismatch`` list."""
    missing, unexpected = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
    mismatched = [key for key in live if key in saved and saved[key].shape != live[key].shape]
    if not (missing or unexpected or mismatched):
        return
    example = (
        f"{mismatched[0]} is {tuple(saved[mismatched[0]].shape)} there, {tuple(live[mismatched[0]].shape)} here"
        if mismatched
        else f"keys {(missing or unexpected)[:2]} differ"
    )
    raise ValueError(
        f"training checkpoint {path} holds a different model ({_describe(saved)}) than this run builds "
        f"({_describe(live)}): {len(mismatched)} shape mismatches, {len(missing)} missing and "
        f"{len(unexpected)} unexpected keys, e.g. {example}"
    )


def _describe(state: Mapping[str, torch.Tensor]) -> str:
    patch = state.get("backbone.patch_embed.proj.weight")
    blocks = {key.split(".")[2] for key in state if key.startswith("backbone.blocks.")}
    width = "?" if patch is None else patch.shape[0]
    return f"backbone width {width}, {len(blocks)} blocks"


def _hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    groups = [
        {k: v for k, v in group.items() if k not in ("params", "lr")} for group in optimizer.param_groups
    ]
    lambdas = [dict(vars(fn)) for fn in getattr(scheduler, "lr_lambdas", [])]
    return groups, lambdas


def _apply_hyperparameters(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fresh: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    """Keep the loaded moments and step counts, but the configured lrs, decay and schedule."""
    groups, lambdas = fresh
    for group, values in zip(optimizer.param_groups, groups, strict=True):
        group.update(values)
    for fn, values in zip(getattr(scheduler, "lr_lambdas", []), lambdas, strict=True):
        vars(fn).update(values)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
