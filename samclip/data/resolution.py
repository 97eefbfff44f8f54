"""CVNets-style variable-resolution batches: the resolution changes per step, the pixel count per step does not."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PATCH_MULTIPLE = 16  # ViT-B/16 patches: other sizes would silently crop or pad tokens


def per_rank_batch_size(global_batch_size: int, world_size: int) -> int:
    """Split a global batch evenly across ranks; refuse a split that is not exact."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if global_batch_size % world_size:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by world_size {world_size}; "
            "choose a global batch that is a multiple of the number of ranks"
        )
    return global_batch_size // world_size


class VariableResolutionSchedule:
    """Resolution and global batch size of every step, from (seed, step) alone.

    Each step draws its resolution uniformly from ``resolutions``; the global batch is
    ``base_batch_size * (base_resolution / resolution) ** 2`` rounded *down* to a multiple of
    ``world_size`` (so it splits evenly across ranks and never exceeds the base pixel budget):
    2048 at 224px gives 512 at 448px. Every rank computes the same sequence without communicating.
    """

    def __init__(
        self,
        resolutions: Sequence[int],
        base_batch_size: int,
        base_resolution: int,
        seed: int = 0,
        world_size: int = 1,
    ) -> None:
        resolutions = [int(r) for r in resolutions]
        if not resolutions:
            raise ValueError("resolutions must not be empty")
        bad = [r for r in resolutions if r <= 0 or r % PATCH_MULTIPLE]
        if bad:
            raise ValueError(
                f"resolutions must be positive multiples of {PATCH_MULTIPLE}, got {bad} in {resolutions}"
            )
        if base_batch_size < 1 or base_resolution < 1:
            raise ValueError(
                f"base_batch_size and base_resolution must be >= 1, got {base_batch_size}, {base_resolution}"
            )
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.resolutions = resolutions
        self.base_batch_size = base_batch_size
        self.base_resolution = base_resolution
        self.seed = seed
        self.world_size = world_size
        self.global_batch_sizes = {}
        for r in resolutions:
            scaled = int(base_batch_size * (base_resolution / r) ** 2)
            batch = scaled // world_size * world_size
            if batch < world_size:
                raise ValueError(
                    f"resolution {r}: scaled global batch {scaled} ({base_batch_size} at {base_resolution}px) is "
                    f"smaller than world_size {world_size}"
                )
            self.global_batch_sizes[r] = batch

    def at(self, step: int) -> tuple[int, int]:
        """(resolution, global batch size) of ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        index = 0
        if len(self.resolutions) > 1:
            index = int(np.random.default_rng((self.seed, step)).integers(len(self.resolutions)))
        resolution = self.resolutions[index]
        return resolution, self.global_batch_sizes[resolution]

    def per_rank_at(self, step: int) -> tuple[int, int]:
        """(resolution, this rank's batch size) of ``step``."""
        resolution, global_batch = self.at(step)
        return resolution, per_rank_batch_size(global_batch, self.world_size)

    @property
    def mean_global_batch_size(self) -> float:
        """Expected samples per step under the uniform resolution draw."""
        return float(np.mean([self.global_batch_sizes[r] for r in self.resolutions]))
