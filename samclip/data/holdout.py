"""Held-out splits of D_CLIP by sample key: a keyed hash puts a fixed fraction of keys in validation.

D_CLIP has no manifest (its shards are mixtures of web datasets), so the split is a function of the
sample key alone: the same on every machine, rank, worker count and shard order, and stable when
shards are added. SA-1B uses the ``val.txt`` manifest of ``samclip-data sa1b-manifest`` instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SPLITS = ("all", "train", "held_out")
_HASH_BYTES = 8


def key_fraction(key: str, seed: int) -> float:
    """A uniform number in [0, 1) drawn from (seed, key) by a keyed hash (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=_HASH_BYTES).digest()
    return int.from_bytes(digest, "big") / 2 ** (8 * _HASH_BYTES)


@dataclass(frozen=True)
class KeyHoldout:
    """Which keys a stream keeps: ``train`` (not held out), ``held_out``, or ``all``."""

    fraction: float = 0.0
    seed: int = 0
    split: str = "all"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.fraction}")
        if self.split == "held_out" and self.fraction == 0.0:
            raise ValueError("split=held_out needs holdout_fraction > 0 (with 0 no sample is held out)")

    def is_held_out(self, key: str) -> bool:
        return key_fraction(key, self.seed) < self.fraction

    def keep(self, key: str) -> bool:
        if self.split == "all":
            return True
        return self.is_held_out(key) == (self.split == "held_out")
