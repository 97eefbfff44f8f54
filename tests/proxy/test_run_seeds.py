"""Seeds run in worker processes give what they give in one process (``run_seeds``)."""

from __future__ import annotations

import os
from pathlib import Path

from proxy_sizes import seed_runner_stub

from samclip.proxy.study import STUDY_SIZES, run_seeds


def test_seeds_in_two_workers_equal_seeds_in_one_process(tmp_path: Path) -> None:
    size, seeds = STUDY_SIZES["test"], [0, 1, 2]
    one_timings: dict[str, float] = {}
    in_process = run_seeds(seed_runner_stub, tmp_path, None, size, seeds, one_timings, workers=1)
    two_timings: dict[str, float] = {}
    in_workers = run_seeds(seed_runner_stub, tmp_path, None, size, seeds, two_timings, workers=2)
    assert (
        [r["row"] for r in in_workers]
        == [r["row"] for r in in_process]
        == [{"value": 10.0 * s} for s in seeds]
    )
    assert two_timings == one_timings == {f"seed_{s}/stub": float(s) for s in seeds}  # merged back
    assert all(r["where"]["pid"] == os.getpid() for r in in_process)
    assert all(r["where"]["pid"] != os.getpid() and r["where"]["threads"] == 1 for r in in_workers)
