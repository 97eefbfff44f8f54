"""Step-by-step streams over sharded data with exact resume; shared by the D_CLIP and D_SAM streams.

How exact resume works (and its limits):
- Step ``s`` of an epoch is built by logical worker ``s % num_workers`` of this rank, from that worker's
  slot of the shard list (see ``shards.SlotShards``); its randomness comes from a generator seeded by
  (seed, global step, rank). A batch is therefore a function of (seed, epoch, rank, step) and of where
  the worker's shard cursors stood when it started the batch.
- Each batch carries its worker's cursors after it; the stream records them as batches are handed to the
  trainer. ``state_dict()`` = epoch, step, those cursors and the skip counts. On restore, a DataLoader
  worker takes the logical role that continues the sequence, and reopens its shards at the recorded
  cursors (reading, without decoding, the part of the current shard already consumed).
- Sample-level shuffling (``shuffle_buffer`` > 0, as open_clip's webdataset pipeline): each worker keeps,
  per source, a buffer of that many raw samples and hands out a random one (drawn from a generator of
  (seed, global step, rank)), refilling from its cursor. The buffer is saved as the cursor positions of
  the samples in it, in order; on restore they are read again from their shards (one pass per shard).
- Exact only with the same seed, world_size, num_workers, rank, shard lists and buffer size;
  ``load_state_dict`` refuses a mismatch unless ``strict=False``, which keeps epoch and step but restarts
  the cursors with empty buffers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from samclip.data.bad_samples import BadSample, SkipTracker
from samclip.data.shards import RawSample, ShardCursor, SlotShards, iter_shard

logger = logging.getLogger(__name__)

BatchT = TypeVar("BatchT")
SampleT = TypeVar("SampleT")
Position = tuple[int, int]


class SampleReader:
    """One worker's view of its sources: the next usable sample, skipping and counting the bad ones.

    With ``shuffle_buffer`` > 0 the next sample is a random one of a buffer of that many raw samples per
    source (drawn from ``rng``, which the worker reseeds every step); ``buffers`` restores saved ones.
    """

    def __init__(
        self,
        cursors: list[ShardCursor],
        tracker: SkipTracker,
        shuffle_buffer: int = 0,
        buffers: list[list[tuple[Position, RawSample]]] | None = None,
    ) -> None:
        self.cursors = cursors
        self.tracker = tracker
        self.shuffle_buffer = shuffle_buffer
        self.buffers = buffers if buffers is not None else [[] for _ in cursors]
        self.rng = np.random.default_rng(0)

    def _next_raw(self, source: int) -> RawSample:
        cursor = self.cursors[source]
        if not self.shuffle_buffer:
            return cursor.next_raw()
        buffer = self.buffers[source]
        while len(buffer) < self.shuffle_buffer:
            raw = cursor.next_raw()
            buffer.append(((cursor.shard_index, cursor.sample_index - 1), raw))
        pick = int(self.rng.integers(len(buffer)))
        buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
        return buffer.pop()[1]

    def next(self, source: int, prepare: Callable[[RawSample], SampleT]) -> SampleT:
        """``prepare(raw)`` of the next sample of ``source`` for which it does not raise ``BadSample``."""
        while True:
            raw = self._next_raw(source)
            self.tracker.seen()
            try:
                return prepare(raw)
            except BadSample as bad:
                self.tracker.skip(bad.kind, raw.get("__url__", "?"), raw.get("__key__", "?"), bad.detail)

    @property
    def positions(self) -> list[Position]:
        return [c.position for c in self.cursors]

    @property
    def buffer_positions(self) -> list[list[Position]]:
        return [[position for position, _ in buffer] for buffer in self.buffers]


def reread_buffer(
    slot_shards: SlotShards,
    positions: Sequence[Position],
    tracker: SkipTracker,
    keep_key: Callable[[str], bool],
) -> list[tuple[Position, RawSample]]:
    """The samples at ``positions`` (a saved shuffle buffer), in order: one pass over each of their shards.

    A sample that cannot be read again (its shard broke since) is dropped and counted as skipped.
    """
    stride, offset = slot_shards.stride_offset()
    found: dict[Position, RawSample] = {}
    by_shard: dict[int, set[int]] = {}
    for n, m in positions:
        by_shard.setdefault(n, set()).add(m)
    for n, wanted in by_shard.items():
        url = slot_shards[n]
        try:
            for index, sample in iter_shard(url, min(wanted), stride, offset):
                if index in wanted and keep_key(sample["__key__"]):
                    found[(n, index)] = sample
                if index >= max(wanted):
                    break
        except Exception as exn:  # the same rule as a shard that breaks while streaming
            tracker.skip("unreadable_shard", url, "shuffle buffer", f"{type(exn).__name__}: {exn}")
    return [(tuple(p), found[tuple(p)]) for p in positions if tuple(p) in found]


class BatchBuilder(Generic[BatchT]):
    """Stream-specific part: build the batch of one step from a reader. Must be picklable."""

    stream_name: str = "stream"

    def build(self, global_step: int, reader: SampleReader, rng: np.random.Generator) -> BatchT:
        raise NotImplementedError

    def keep_key(self, key: str) -> bool:
        return True


@dataclass(frozen=True)
class EpochPlan:
    """Everything a worker needs to produce its share of the steps [start_step, end_step) of one epoch."""

    sources: tuple[tuple[str, ...], ...]
    seed: int
    epoch: int
    rank: int
    world_size: int
    num_workers: int  # logical workers (>= 1)
    resampled: bool
    start_step: int
    end_step: int | None  # None: infinite
    first_global_step: int  # global step of the epoch's step 0
    positions: tuple[tuple[Position, ...], ...]  # [logical worker][source]
    max_skip_fraction: float
    skip_rate_min_samples: int
    shuffle_buffer: int = 0
    buffers: tuple[
        tuple[tuple[Position, ...], ...], ...
    ] = ()  # [logical worker][source][k]: buffered samples


@dataclass
class _WorkerOutput:
    batch: Any
    logical_worker: int
    positions: list[Position]
    skipped: dict[str, int]
    buffers: list[list[Position]]

    def pin_memory(self) -> _WorkerOutput:
        """Called by the DataLoader's pinning thread (it pins only what has this method or is a tensor)."""
        return replace(self, batch=_pinned(self.batch))


def _pinned(batch: Any) -> Any:
    return batch.pin_memory() if hasattr(batch, "pin_memory") else batch


_SHUFFLE_STREAM = 1  # tags the shuffle buffer's generator apart from the batch's


def _identity(x: Any) -> Any:
    return x


class _EpochWorkers(IterableDataset):
    def __init__(self, builder: BatchBuilder, plan: EpochPlan) -> None:
        self.builder = builder
        self.plan = plan

    def __iter__(self) -> Iterator[_WorkerOutput]:
        plan = self.plan
        info = get_worker_info()
        worker_id = info.id if info is not None else 0
        logical = (plan.start_step + worker_id) % plan.num_workers
        slot = plan.rank * plan.num_workers + logical
        num_slots = plan.world_size * plan.num_workers
        tracker = SkipTracker(self.builder.stream_name, plan.max_skip_fraction, plan.skip_rate_min_samples)
        cursors = [
            ShardCursor(
                SlotShards(shards, i, plan.seed, plan.epoch, slot, num_slots, plan.resampled),
                plan.positions[logical][i],
                tracker,
                self.builder.keep_key,
            )
            for i, shards in enumerate(plan.sources)
        ]
        buffers = None
        if plan.shuffle_buffer and plan.buffers:
            buffers = [
                reread_buffer(cursor.slot_shards, plan.buffers[logical][i], tracker, self.builder.keep_key)
                for i, cursor in enumerate(cursors)
            ]
        reader = SampleReader(cursors, tracker, plan.shuffle_buffer, buffers)
        step = plan.start_step + worker_id
        while plan.end_step is None or step < plan.end_step:
            global_step = plan.first_global_step + step
            rng = np.random.default_rng((plan.seed, global_step, plan.rank))
            # Its own generator, so that a batch's augmentations do not depend on the buffer size.
            reader.rng = np.random.default_rng((plan.seed, global_step, plan.rank, _SHUFFLE_STREAM))
            batch = self.builder.build(global_step, reader, rng)
            yield _WorkerOutput(
                batch, logical, reader.positions, tracker.take_pending(), reader.buffer_positions
            )
            step += plan.num_workers


def epoch_length(
    steps_per_epoch: int | None,
    num_samples: int | None,
    resampled: bool,
    global_batch_size: float,
    count_samples: Callable[[], int],
) -> tuple[int | None, int | None]:
    """(steps_per_epoch, num_samples): ``steps_per_epoch`` as given, else ``num_samples`` over the global
    batch, with ``count_samples()`` (a pass over the tar headers) only when the epoch needs the count.

    Resampled mode with neither set has no epochs: (None, None).
    """
    if steps_per_epoch is not None or (num_samples is None and resampled):
        return steps_per_epoch, num_samples
    if num_samples is None:
        num_samples = count_samples()
    steps_per_epoch = int(num_samples // global_batch_size)
    if steps_per_epoch < 1:
        raise ValueError(
            f"num_samples={num_samples} is less than one global batch ({global_batch_size:g}); "
            "lower the batch size"
        )
    return steps_per_epoch, num_samples


# Keys that checkpoints written before they existed lack, with the value those streams had.
_STATE_DEFAULTS = {"shuffle_buffer": 0}


class ShardedStream(Generic[BatchT]):
    """Iterate to get this rank's batches of the current epoch (epoch mode) or forever (resampled mode
    without ``steps_per_epoch``). Counts of skipped samples are in ``skipped`` (keys ``skipped/<kind>``)."""

    def __init__(
        self,
        builder: BatchBuilder[BatchT],
        sources: list[list[str]],
        steps_per_epoch: int | None,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        resampled: bool,
        max_skip_fraction: float,
        skip_rate_min_samples: int,
        prefetch_factor: int = 2,
        shuffle_buffer: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if steps_per_epoch is None and not resampled:
            raise ValueError("epoch mode needs steps_per_epoch (or num_samples to derive it)")
        self.builder = builder
        self.sources = tuple(tuple(s) for s in sources)
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.resampled = resampled
        self.max_skip_fraction = max_skip_fraction
        self.skip_rate_min_samples = skip_rate_min_samples
        self.prefetch_factor = prefetch_factor
        self.shuffle_buffer = shuffle_buffer
        # Pinned batches make ``batch.to(device)``'s non_blocking copies asynchronous (from pageable
        # memory CUDA copies synchronously whatever the flag says).
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.epoch = 0
        self.step = 0  # next step within the epoch
        self.skipped: Counter[str] = Counter()
        self.num_seen = 0  # samples read over the run (good and bad), for the run-long skip rate
        self._positions = self._fresh_positions()
        self._buffers = self._fresh_buffers()

    @property
    def _num_logical_workers(self) -> int:
        return max(1, self.num_workers)

    def _fresh_positions(self) -> list[list[Position]]:
        return [[(0, 0) for _ in self.sources] for _ in range(self._num_logical_workers)]

    def _fresh_buffers(self) -> list[list[list[Position]]]:
        return [[[] for _ in self.sources] for _ in range(self._num_logical_workers)]

    def _restart_cursors(self) -> None:
        self._positions = self._fresh_positions()
        self._buffers = self._fresh_buffers()

    @property
    def global_step(self) -> int:
        return self.epoch * (self.steps_per_epoch or 0) + self.step

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first step (an uninterrupted run reaches it by iterating)."""
        if epoch != self.epoch or self.step:
            self.epoch, self.step = epoch, 0
            if not self.resampled:
                self._restart_cursors()

    def _roll_over_finished_epoch(self) -> None:
        if self.steps_per_epoch is not None and self.step >= self.steps_per_epoch:
            self.epoch += 1
            self.step = 0
            if not self.resampled:  # resampled shard draws continue across nominal epochs
                self._restart_cursors()

    def __iter__(self) -> Iterator[BatchT]:
        self._roll_over_finished_epoch()
        plan = EpochPlan(
            sources=self.sources,
            seed=self.seed,
            epoch=self.epoch if not self.resampled else 0,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self._num_logical_workers,
            resampled=self.resampled,
            start_step=self.step,
            end_step=self.steps_per_epoch,
            first_global_step=self.global_step - self.step,
            positions=tuple(tuple(p) for p in self._positions),
            max_skip_fraction=self.max_skip_fraction,
            skip_rate_min_samples=self.skip_rate_min_samples,
            shuffle_buffer=self.shuffle_buffer,
            buffers=tuple(tuple(tuple(map(tuple, b)) for b in worker) for worker in self._buffers),
        )
        workers = _EpochWorkers(self.builder, plan)
        if self.num_workers == 0:
            outputs: Any = iter(workers)
        else:
            outputs = iter(
                DataLoader(
                    workers,
                    batch_size=None,
                    num_workers=self.num_workers,
                    collate_fn=_identity,
                    prefetch_factor=self.prefetch_factor,
                    pin_memory=self.pin_memory,
                )
            )
        epoch = self.epoch
        for out in outputs:
            self._positions[out.logical_worker] = list(out.positions)
            self._buffers[out.logical_worker] = [list(b) for b in out.buffers]
            counts = dict(out.skipped)
            self.num_seen += counts.pop("seen", 0)
            self.skipped.update(counts)
            self.step += 1
            yield _pinned(out.batch) if self.pin_memory and self.num_workers == 0 else out.batch
        if self.skipped:
            logger.info(
                "%s epoch %d: %s", self.builder.stream_name, epoch, dict(sorted(self.skipped.items()))
            )
        self._roll_over_finished_epoch()

    def state_dict(self) -> dict[str, Any]:
        """This rank's stream position; store one per rank in the checkpoint."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "positions": [[list(p) for p in worker] for worker in self._positions],
            "buffers": [[[list(p) for p in b] for b in worker] for worker in self._buffers],
            "skipped": dict(self.skipped),
            "seen": self.num_seen,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "num_shards": [len(s) for s in self.sources],
            "shuffle_buffer": self.shuffle_buffer,
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        mismatched = {
            key: (state.get(key), ours)
            for key, ours in (
                ("seed", self.seed),
                ("rank", self.rank),
                ("world_size", self.world_size),
                ("num_workers", self.num_workers),
                ("num_shards", [len(s) for s in self.sources]),
                ("shuffle_buffer", self.shuffle_buffer),
            )
            if state.get(key, _STATE_DEFAULTS.get(key)) != ours
        }
        if mismatched and strict:
            raise ValueError(
                f"{self.builder.stream_name}: cannot resume exactly, the stream differs from the checkpoint's "
                f"in {', '.join(f'{k} (saved {v[0]}, now {v[1]})' for k, v in mismatched.items())}; "
                "pass strict=False to continue from the same epoch and step with fresh shard cursors"
            )
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.skipped = Counter({k: int(v) for k, v in state.get("skipped", {}).items()})
        self.num_seen = int(state.get("seen", 0))
        if mismatched:
            logger.warning(
                "%s: inexact resume (%s): shard cursors restart", self.builder.stream_name, mismatched
            )
            self._restart_cursors()
        else:
            self._positions = [[(int(n), int(m)) for n, m in worker] for worker in state["positions"]]
            self._buffers = [
                [[(int(n), int(m)) for n, m in b] for b in worker]
                for worker in state.get("buffers", self._fresh_buffers())
            ]
