"""DDP equivalence: 2 gloo processes x half the batch = 1 process x the full batch, after real steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fakes import single_process_env, tiny_task, train_tiny

from samclip.train.tracking import read_metrics

HERE = Path(__file__).parent


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["multitask", "head_probe"])
def test_two_ranks_equal_one_process_with_the_full_batch(tmp_path: Path, stage: str) -> None:
    num_steps = 2
    # Ranks use micro-batches (2 CLIP images, 1 SAM image) of their half batch; the reference one full micro-batch.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(HERE / "ddp_worker.py"),
            str(tmp_path / "ddp"),
            stage,
            str(num_steps),
            "2",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"ddp.rank{r}.pt") for r in (0, 1)]
    reference = train_tiny(
        single_process_env(), tmp_path / "single", num_steps=num_steps, stage=stage
    ).student.state_dict()

    initial = tiny_task(seed=0).student.state_dict()
    max_diff, moved = 0.0, set()
    for name, expected in reference.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"ranks differ on {name}"
        max_diff = max(max_diff, (ranks[0][name] - expected).abs().max().item())
        if not torch.equal(expected, initial[name]):
            moved.add(name.split(".")[0])
    print(f"{stage}: max |DDP - single| = {max_diff:.3g} over {len(reference)} tensors")
    assert max_diff <= 1e-5
    # Adam's update is invariant to a uniform gradient scale; the logged gradient norm and losses are not.
    ddp_metrics = read_metrics(tmp_path / "work_rank0" / "metrics.jsonl")
    single_metrics = read_metrics(tmp_path / "single" / "metrics.jsonl")
    for key in ("grad_norm", "loss", "loss_clip", "loss_sam"):
        ddp_values, single_values = [m[key] for m in ddp_metrics], [m[key] for m in single_metrics]
        # A stage without the sam stream logs None for its loss: compare those exactly, numbers approximately.
        assert [v is None for v in ddp_values] == [v is None for v in single_values], key
        numbers = [(d, s) for d, s in zip(ddp_values, single_values, strict=True) if s is not None]
        assert [d for d, _ in numbers] == pytest.approx([s for _, s in numbers], rel=1e-5), key
    # Not vacuous: the stage's trainable parts moved (and only those).
    assert moved == ({"backbone", "clip_head", "sam_head"} if stage == "multitask" else {"clip_head"})
