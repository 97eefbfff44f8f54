"""A fingerprint of ``experiment=smoke``'s first steps: each step's losses and gradients, each stage's weights.

Recorded once from the two-teacher code (``tests/train/data/smoke_reference.json``, by
``python tests/train/smoke_trace.py``) and compared by ``test_smoke_bit_identity.py``, so that a change of
the task's shape that alters SAM-CLIP's arithmetic by a single bit is caught. Tensors are fingerprinted by
the SHA-256 of their bytes; a float64 sum of squares per tensor lets a machine with other kernels compare
with a tolerance instead.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

REFERENCE = Path(__file__).parent / "data" / "smoke_reference.json"
STEPS_PER_STAGE = 5


def tensor_print(tensor: torch.Tensor) -> dict[str, Any]:
    data = tensor.detach().cpu().contiguous()
    return {
        "sha256": hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest(),
        "sumsq": float(data.double().square().sum()),
    }


# Reductions split over threads round differently, so the trace runs on a fixed number of them.
TRACE_THREADS = 1


def platform() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": str(TRACE_THREADS),
    }


def trace_smoke(run_dir: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run experiment=smoke for ``STEPS_PER_STAGE`` steps per stage; the fingerprint of what it computed."""
    import samclip.train.loop as loop
    from samclip.config_root import config_dir
    from samclip.train import runner

    steps: list[dict[str, Any]] = []
    original = loop.forward_backward

    def traced(task: Any, student: Any, batches: Any, **kwargs: Any) -> Any:
        losses = original(task, student, batches, **kwargs)
        grads = {
            name: tensor_print(param.grad)
            for name, param in task.student.named_parameters()
            if param.grad is not None
        }
        steps.append(
            {"total": losses.total, "streams": losses.streams, "parts": losses.parts, "grads": grads}
        )
        return losses

    with initialize_config_dir(config_dir=str(config_dir("train.yaml")), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=smoke",
                f"run_dir={run_dir}",
                f"trainer.max_steps={STEPS_PER_STAGE}",
                "logger.progress=false",
                *overrides,
            ],
        )
    loop.forward_backward = traced
    threads = torch.get_num_threads()
    torch.set_num_threads(TRACE_THREADS)
    try:
        runner.run(cfg)
    finally:
        loop.forward_backward = original
        torch.set_num_threads(threads)
    weights = {}
    for stage in cfg.stages:
        state = torch.load(Path(run_dir) / stage / "final.pt", map_location="cpu", weights_only=True)
        weights[stage] = {name: tensor_print(value) for name, value in state["model"].items()}
    return {"platform": platform(), "steps": steps, "weights": weights}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        trace = trace_smoke(Path(directory) / "run")
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REFERENCE
    out.write_text(json.dumps(trace, indent=1, sort_keys=True) + "\n")
    print(f"{len(trace['steps'])} steps, {sum(map(len, trace['weights'].values()))} weight tensors -> {out}")
