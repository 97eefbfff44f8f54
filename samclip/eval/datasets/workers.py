"""DataLoader worker counts for evaluation: never more than the CPUs this process may run on."""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """The CPUs this process may use (its affinity where the OS has one, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def usable_num_workers(requested: int) -> int:
    """``requested`` capped to :func:`available_cpus`, so torch warns of no oversubscription on small
    machines (the eval configs ask for 4); the cap is logged once."""
    usable = min(requested, available_cpus())
    if usable < requested:
        _log_cap(requested, usable)
    return usable


@functools.cache
def _log_cap(requested: int, usable: int) -> None:
    log.info("eval: num_workers=%d capped to %d, the CPUs this process may use", requested, usable)
