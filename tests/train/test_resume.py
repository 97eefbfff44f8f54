"""Resume equivalence: N steps straight = N/2 steps, stop, resume for N/2 (weights, optimizer, metrics)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fakes import FakeClipStream, single_process_env, train_tiny

from samclip.train.checkpoint import (
    Checkpointer,
    LoopCounters,
    StageState,
    load_training_checkpoint,
    restore_training_state,
    training_state,
)
from samclip.train.optim import build_scheduler
from samclip.train.tracking import is_timing_key, read_metrics

REPO = Path(__file__).parents[2]


def _without_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if not is_timing_key(k)} for line in lines]


def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_stop_and_resume_equals_straight_run(tmp_path: Path) -> None:
    # head_probe on in-memory streams here; the SIGKILL test below resumes multitask on the real streams.
    env = single_process_env()
    train_tiny(env, tmp_path / "straight", num_steps=4, every_steps=2, stage="head_probe")
    train_tiny(env, tmp_path / "resumed", num_steps=4, every_steps=2, stop_after=2, stage="head_probe")
    # A fresh process-like start: new model, optimizer and streams, all restored from step 2's checkpoint.
    train_tiny(env, tmp_path / "resumed", num_steps=4, every_steps=2, stage="head_probe")

    straight = load_training_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000004.pt")
    resumed = load_training_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_00000004.pt")
    _assert_same_tensors(straight["student"], resumed["student"], "student")
    _assert_same_tensors(straight["optimizer"], resumed["optimizer"], "optimizer")
    _assert_same_tensors(straight["scheduler"], resumed["scheduler"], "scheduler")
    assert straight["data"] == resumed["data"]
    straight_metrics = _without_timing(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    resumed_metrics = _without_timing(read_metrics(tmp_path / "resumed" / "metrics.jsonl"))
    assert [m["step"] for m in resumed_metrics] == [1, 2, 3, 4]
    assert resumed_metrics == straight_metrics
    initial = load_training_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_00000002.pt")["student"]
    assert any(not torch.equal(initial[k], straight["student"][k]) for k in initial), (
        "steps 3-4 changed nothing"
    )


def _live_objects() -> tuple:
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    return student, optimizer, build_scheduler(optimizer, 1, 10), {"clip": FakeClipStream(seed=0)}


def test_training_state_round_trip_restores_counters_rng_and_streams(tmp_path: Path) -> None:
    """What the equivalence runs cannot see: loop counters and every RNG come back as saved."""
    env = single_process_env()
    student, optimizer, scheduler, streams = _live_objects()
    student(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    next(iter(streams["clip"]))
    best = {"metric": "val/sam_iou_to_teacher", "mode": "max", "step": 4, "value": 0.9}
    state = StageState(step=5, counters=LoopCounters(skipped_steps=2, consecutive_nonfinite=1), best=best)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = training_state(
        student, optimizer, scheduler, streams, state, stage="multitask", env=env, extra={}
    )
    path = Checkpointer(tmp_path, every_steps=1).save(5, saved)
    draws = (random.random(), float(np.random.rand()), torch.rand(1).item())

    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    fresh = _live_objects()
    assert restore_training_state(path, *fresh, env=env) == state
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == draws
    assert (
        fresh[3]["clip"].state_dict()
        == streams["clip"].state_dict()
        == {"epoch": 0, "step": 1, "skipped": {}}
    )
    _assert_same_tensors(fresh[1].state_dict(), optimizer.state_dict(), "optimizer")
    assert fresh[2].state_dict()["last_epoch"] == 1


def _train_cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "samclip.train",
        "experiment=smoke",
        f"run_dir={run_dir}",
        "stages=[head_probe,multitask]",
        "stage.head_probe.schedule_steps=1",
        "stage.head_probe.warmup_steps=1",
        "stage.multitask.schedule_steps=5",
        "stage.multitask.stop_step=4",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=3",
        "validation.every_steps=2",  # validations (and a kept best.pt) before and after the kill
        *overrides,
    ]


@pytest.mark.slow
def test_sigkilled_run_resumes_from_its_last_checkpoint_and_matches(tmp_path: Path) -> None:
    """The real CLI and data streams: SIGKILL during multitask, restart, finish; same result as a straight run."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight), env=env, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = killed / "multitask" / "checkpoints" / "step_00000002.pt"
    deadline = time.monotonic() + 600
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.exists() and not (killed / "multitask" / "final.pt").exists(), (
        "killed too late to test resume"
    )

    result = subprocess.run(_train_cmd(killed), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "head_probe/final.pt exists, stage done" in result.stdout
    assert "multitask: resuming from" in result.stdout

    a = torch.load(straight / "multitask" / "final.pt")
    b = torch.load(killed / "multitask" / "final.pt")
    assert a["step"] == b["step"] == 4
    _assert_same_tensors(a["model"], b["model"], "model")
    straight_metrics = _without_timing(read_metrics(straight / "multitask" / "metrics.jsonl"))
    assert _without_timing(read_metrics(killed / "multitask" / "metrics.jsonl")) == straight_metrics
    assert [m["step"] for m in straight_metrics if "val/sam_iou_to_teacher" in m] == [2, 4]
    assert (killed / "multitask" / "best.json").read_text() == (
        straight / "multitask" / "best.json"
    ).read_text()
    _assert_same_tensors(
        torch.load(straight / "multitask" / "best.pt")["model"],
        torch.load(killed / "multitask" / "best.pt")["model"],
        "best",
    )
