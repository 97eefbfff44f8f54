"""Run by ``torchrun --nproc_per_node=2`` from test_distributed_faults.py: rank 1 stops itself (SIGSTOP)
after the first collective; rank 0's next collective must fail within ``trainer.dist_timeout_s``."""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

from samclip.train.distributed import all_reduce_sum, barrier, init_distributed

if __name__ == "__main__":
    torch.set_num_threads(1)
    env = init_distributed("cpu", timeout_s=float(sys.argv[1]))
    barrier(env)
    if env.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    start = time.monotonic()
    try:
        all_reduce_sum(torch.ones(1), env)
    except RuntimeError as error:
        print(
            f"rank 0 gave up after {time.monotonic() - start:.1f} s: {str(error).splitlines()[0]}", flush=True
        )
        raise
