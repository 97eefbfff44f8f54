"""Run by ``torchrun --standalone --nproc_per_node=2`` from test_distributed.py: train, then save rank 0's weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from train_fakes import train_tiny

from samclip.train.distributed import init_distributed, shutdown

if __name__ == "__main__":
    out, stage, num_steps, clip_micro, sam_micro = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    task = train_tiny(
        env,
        Path(out).parent / f"work_rank{env.rank}",
        num_steps=num_steps,
        stage=stage,
        clip_micro=clip_micro,
        sam_micro=sam_micro,
    )
    torch.save(task.student.state_dict(), Path(out).with_suffix(f".rank{env.rank}.pt"))
    shutdown(env)
