"""The training loop: one function for every stage. Logging and checkpoints each decide when they act."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from samclip.data.bad_samples import SKIP_KINDS, check_skip_rate
from samclip.train.checkpoint import Checkpointer, StageState, training_state
from samclip.train.distributed import DistEnv, all_reduce_sum
from samclip.train.step import StepLosses, forward_backward
from samclip.train.tasks.base import Task
from samclip.train.tracking import Tracker
from samclip.train.validation import Validator


class NonFiniteLossError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoopOptions:
    micro_batch_sizes: Mapping[str, int]  # per stream name
    max_grad_norm: float | None = 1.0  # None or 0: no clipping (the norm is still logged and checked)
    max_consecutive_nonfinite: int = 5
    autocast_dtype: torch.dtype | None = None


def train_stage(
    task: Task,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    streams: Mapping[str, Iterable[Any]],
    state: StageState,
    last_step: int,
    *,
    stage: str,
    options: LoopOptions,
    env: DistEnv,
    tracker: Tracker,
    checkpointer: Checkpointer,
    extra_state: Mapping[str, Any] | None = None,
    validator: Validator | None = None,
) -> StageState:
    """Run optimizer steps ``state.step + 1 .. last_step``; ``student`` is the (possibly DDP-wrapped) trainee."""
    params = [p for p in task.student.parameters() if p.requires_grad]
    max_norm = options.max_grad_norm or math.inf
    batches = {name: _forever(stream) for name, stream in streams.items()}
    task.train()
    while state.step < last_step:
        step_batches = {name: next(batch).to(env.device) for name, batch in batches.items()}
        optimizer.zero_grad(set_to_none=True)
        losses = forward_backward(
            task,
            student,
            step_batches,
            micro_batch_sizes=options.micro_batch_sizes,
            env=env,
            autocast_dtype=options.autocast_dtype,
        )
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))
        # Gradients are all-reduced, so every rank sees the same norm and takes the same branch.
        if math.isfinite(losses.total) and math.isfinite(grad_norm):
            optimizer.step()
            state.counters.consecutive_nonfinite = 0
        else:
            _skip_step(optimizer, state, losses, grad_norm, stage, options, checkpointer)
        state.step += 1
        tracker.count_images(**losses.images)
        if tracker.due(state.step):
            clip_batch = step_batches.get("clip")
            resolution = None if clip_batch is None else int(clip_batch.images.shape[-1])
            metrics = _metrics(losses, grad_norm, optimizer, state, resolution)
            tracker.log(state.step, {**metrics, **_skipped_samples(streams, env)})
        scheduler.step()  # after logging, so that the logged lrs are the ones this step used
        if validator is not None and validator.due(state.step, last_step):
            # Before the checkpoint of the same step, which then holds this validation's best record.
            state.best = validator.validate(task, state.step, env, tracker, state.best)
        if checkpointer.due(state.step, last_step):
            checkpoint = training_state(
                task.student,
                optimizer,
                scheduler,
                streams,
                state,
                stage=stage,
                env=env,
                extra=extra_state or {},
            )
            checkpointer.save_all_ranks(state.step, checkpoint, env)
    return state


def _skip_step(
    optimizer: torch.optim.Optimizer,
    state: StageState,
    losses: StepLosses,
    grad_norm: float,
    stage: str,
    options: LoopOptions,
    checkpointer: Checkpointer,
) -> None:
    """Drop a step's non-finite gradients and count it; too many in a row stop the run."""
    optimizer.zero_grad(set_to_none=True)
    state.counters.skipped_steps += 1
    state.counters.consecutive_nonfinite += 1
    if state.counters.consecutive_nonfinite >= options.max_consecutive_nonfinite:
        raise NonFiniteLossError(
            f"{stage}: {state.counters.consecutive_nonfinite} consecutive steps with a non-finite loss "
            f"({losses.total}) or gradient norm ({grad_norm}) at step {state.step + 1}; stopping. "
            f"Skipped steps leave the weights untouched, so the checkpoints in {checkpointer.directory} "
            f"hold the last good ones (trainer.max_consecutive_nonfinite={options.max_consecutive_nonfinite})."
        )


def _metrics(
    losses: StepLosses,
    grad_norm: float,
    optimizer: torch.optim.Optimizer,
    state: StageState,
    clip_resolution: int | None,
) -> dict[str, Any]:
    return {
        "loss": losses.total,
        **{f"loss_{name}": value for name, value in losses.streams.items()},
        **{f"loss_{name}": value for name, value in losses.parts.items()},
        **{f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups},
        "grad_norm": grad_norm,
        "resolution/clip": clip_resolution,
        "skipped_steps": state.counters.skipped_steps,
    }


def _forever(stream: Iterable[Any]) -> Iterator[Any]:
    """Epoch after epoch: a data stream's ``__iter__`` ends with its epoch and resumes from its own state."""
    while True:
        yielded = False
        for batch in stream:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError(f"data stream {stream!r} produced no batch in a whole epoch")


def _skipped_samples(streams: Mapping[str, Any], env: DistEnv) -> dict[str, int]:
    """Global counts of samples the data streams skipped, by stream and kind (a fixed key set on every rank).

    Also the run-long skip-rate limit: counts since the run began, summed over workers and ranks.
    """
    names = [f"{name}/{kind}" for name in streams for kind in SKIP_KINDS]
    local = [
        float(getattr(streams[name], "skipped", {}).get(f"skipped/{kind}", 0))
        for name in streams
        for kind in SKIP_KINDS
    ] + [float(getattr(streams[name], "num_seen", 0)) for name in streams]
    if not names:
        return {"skipped_samples": 0}
    totals = all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=env.device), env).tolist()
    kinds, seen = totals[: len(names)], totals[len(names) :]
    for index, (name, stream) in enumerate(streams.items()):
        limit = getattr(stream, "max_skip_fraction", None)
        if limit is not None:
            skipped = sum(kinds[index * len(SKIP_KINDS) : (index + 1) * len(SKIP_KINDS)])
            check_skip_rate(name, int(seen[index]), int(skipped), limit, stream.skip_rate_min_samples)
    counts = {f"skipped/{name}": int(v) for name, v in zip(names, kinds, strict=True) if v}
    return {"skipped_samples": sum(counts.values()), **counts}
