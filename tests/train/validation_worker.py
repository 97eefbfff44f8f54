"""Run by ``torchrun --standalone --nproc_per_node=2`` from test_validation.py: validate, save the metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from train_fakes import held_out_evaluators, single_process_env, tiny_task

from samclip.train.distributed import init_distributed, shutdown
from samclip.train.validation import Validator

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    task = tiny_task(seed=0)
    validator = Validator(held_out_evaluators(env), every_steps=1)
    reduced = validator.run(task, env).metrics
    alone = validator.run(task, single_process_env()).metrics  # this rank's share only, no reduction
    (out / f"rank{env.rank}.json").write_text(json.dumps({"global": reduced, "local": alone}))
    shutdown(env)
