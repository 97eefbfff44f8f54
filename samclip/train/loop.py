"""The training loop: one function for every stage. Logging and checkpoints each decide when they act."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from samclip.data.bad_samples import SKIP_KINDS, check_skip_rate
from samclip.train.checkpoint import Checkpointer, StageState, training_state
from samclip.train.distributed import DistEnv, all_reduce_sum
from samclip.train.flops import StepFlops
from samclip.train.step import StepLosses, forward_backward, task_streams
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
    flops: StepFlops | None = None,
) -> StageState:
    """Run optimizer steps ``state.step + 1 .. last_step``; ``student`` is the (possibly DDP-wrapped) trainee.

    The host reads losses, the gradient norm and the non-finite counters only on steps that log,
    validate or checkpoint (and the last); in between, a step queues its work without waiting for it.
    ``flops`` counts each new batch shape's model FLOPs once, for the logged TFLOP/s and MFU.
    """
    params = [p for p in task.student.parameters() if p.requires_grad]
    max_norm = options.max_grad_norm or math.inf
    batches = {name: _forever(stream) for name, stream in streams.items()}
    guard = NonFiniteGuard(state, options.max_consecutive_nonfinite, env.device)
    # Fused AdamW skips its update on the device when told found_inf; others need the host's decision.
    skips_on_device = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
    stream_names = task_streams(task)
    images = torch.zeros(len(stream_names), dtype=torch.float64, device=env.device)
    window_flops = 0.0
    task.train()
    while state.step < last_step:
        step_batches = {name: next(batch).to(env.device) for name, batch in batches.items()}
        optimizer.zero_grad(set_to_none=True)
        with flops.count(step_batches) if flops is not None else contextlib.nullcontext():
            losses = forward_backward(
                task,
                student,
                step_batches,
                micro_batch_sizes=options.micro_batch_sizes,
                env=env,
                autocast_dtype=options.autocast_dtype,
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        # Gradients are all-reduced, so every rank sees the same norm and takes the same branch.
        skip = guard.update(torch.isfinite(losses.total_tensor) & torch.isfinite(grad_norm), state.step + 1)
        if skips_on_device:
            optimizer.found_inf = skip.float()
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
        elif not bool(skip):  # a host read, cheap where the device is the CPU
            optimizer.step()
        state.step += 1
        images += losses.image_counts
        window_flops += flops.last if flops is not None else 0.0
        tracker.step_done()
        sync_now = (
            tracker.due(state.step)
            or checkpointer.due(state.step, last_step)
            or (validator is not None and validator.due(state.step, last_step))
            or state.step == last_step
            or not skips_on_device  # the host knows already; stop as soon as the limit is reached
        )
        if sync_now:
            guard.sync(stage, losses, grad_norm, options, checkpointer)
        if tracker.due(state.step):
            tracker.count_images(**dict(zip(stream_names, map(int, images.tolist()), strict=True)))
            images.zero_()
            clip_batch = step_batches.get("clip")
            resolution = None if clip_batch is None else int(clip_batch.images.shape[-1])
            metrics = _metrics(losses, float(grad_norm), optimizer, state, resolution)
            if flops is not None:
                metrics["flops_per_step"] = flops.last
            tracker.log(state.step, {**metrics, **_skipped_samples(streams, env)}, flops=window_flops)
            window_flops = 0.0
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


class NonFiniteGuard:
    """Skips and counts steps with a non-finite loss or gradient norm, on the device.

    Once ``max_consecutive_nonfinite`` steps in a row were non-finite, every later step is skipped too
    (the weights stay the last good ones) until the next :meth:`sync`, which stops the run.
    """

    def __init__(self, state: StageState, limit: int, device: torch.device) -> None:
        self.counters = state.counters
        self.limit = limit
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        self.consecutive = torch.full(
            (), state.counters.consecutive_nonfinite, dtype=torch.int64, device=device
        )
        self.limit_step = torch.full((), -1, dtype=torch.int64, device=device)

    def update(self, finite: torch.Tensor, step: int) -> torch.Tensor:
        """This step's skip flag (a device bool); ``step`` is its 1-based number."""
        skip = ~finite | (self.limit_step >= 0)
        self.skipped += skip
        self.consecutive = torch.where(finite, 0, self.consecutive + 1)
        reached = (self.limit_step < 0) & (self.consecutive >= self.limit)
        self.limit_step = torch.where(reached, step, self.limit_step)
        return skip

    def sync(
        self,
        stage: str,
        losses: StepLosses,
        grad_norm: torch.Tensor,
        options: LoopOptions,
        checkpointer: Checkpointer,
    ) -> None:
        """Counters to the host (the stage state); raise if the limit was reached since the last sync."""
        skipped, consecutive, limit_step = torch.stack(
            [self.skipped, self.consecutive, self.limit_step]
        ).tolist()
        self.skipped.zero_()
        self.counters.skipped_steps += skipped
        self.counters.consecutive_nonfinite = consecutive
        if limit_step >= 0:
            raise NonFiniteLossError(
                f"{stage}: {self.limit} consecutive steps with a non-finite loss or gradient norm at step "
                f"{limit_step} (the last read: loss {losses.total}, gradient norm {float(grad_norm)}); stopping. "
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
