"""A stopped (not killed) rank ends the job within ``trainer.dist_timeout_s``, not after 30 minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_a_sigstopped_rank_ends_the_job_within_the_configured_timeout() -> None:
    timeout_s = 8
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(HERE / "stopped_rank_worker.py"),
            str(timeout_s),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    waited = re.search(r"rank 0 gave up after ([\d.]+) s", output)
    assert waited is not None, output[-3000:]
    assert timeout_s - 1 <= float(waited.group(1)) <= timeout_s + 10, output[-3000:]
    assert elapsed < 120, f"the job took {elapsed:.0f} s to end"
