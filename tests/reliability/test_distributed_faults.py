"""A stopped (not killed) rank ends the job within ``trainer.dist_timeout_s``, not after 30 minutes."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from planted import compose_smoke, with_assets

from samclip.models.final_checkpoint import load_final_checkpoint
from samclip.train.checkpoint import load_training_checkpoint
from samclip.train.runner import run
from samclip.train.tracking import read_metrics

HERE = Path(__file__).parent
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


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


@pytest.mark.slow
def test_a_two_rank_run_resumes_on_one_rank_from_the_same_step(
    assets: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    overrides = [*with_assets(assets), "stages=[head_probe]", "logger.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    result = subprocess.run(
        [*TORCHRUN, "-m", "samclip.train", "experiment=smoke", f"run_dir={run_dir}", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # Rank 0 alone logs: the stage's start is announced once, not once per rank.
    output = result.stdout + result.stderr
    assert output.count("head_probe: starting from") == 1, output[-4000:]
    stage = run_dir / "head_probe"
    two_ranks = [line for line in read_metrics(stage / "metrics.jsonl") if "loss" in line]
    # The job is rescheduled on one rank after step 10's checkpoint.
    (stage / "final.pt").unlink()
    (stage / "checkpoints" / "step_00000012.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="samclip"):
        run(compose_smoke(run_dir, *overrides))
    assert any(
        "written by 2 ranks, on 1: global step 10" in record.getMessage()
        and "at most the samples of the" in record.getMessage()
        for record in caplog.records
    ), [record.getMessage() for record in caplog.records]
    one_rank = [
        line for line in read_metrics(stage / "metrics.jsonl") if "loss" in line
    ]  # not the val/ lines
    assert [line["step"] for line in one_rank] == list(range(1, 13))
    lrs = [{k: v for k, v in line.items() if k.startswith("lr/")} for line in one_rank]
    assert lrs == [{k: v for k, v in line.items() if k.startswith("lr/")} for line in two_ranks]
    checkpoint = load_training_checkpoint(stage / "checkpoints" / "step_00000012.pt")
    assert checkpoint["world_size"] == 1 and checkpoint["step"] == 12
    steps = {float(state["step"]) for state in checkpoint["optimizer"]["state"].values()}
    assert steps == {12.0}  # AdamW's bias correction continued from the 2-rank run's 10 steps
    assert load_final_checkpoint(stage / "final.pt").step == 12
