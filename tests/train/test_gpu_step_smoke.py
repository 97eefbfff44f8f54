"""benchmarks/gpu_step.py --smoke: the GPU benchmark's code path runs on the CPU with tiny models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_gpu_step_smoke_runs_both_teacher_arms(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--smoke", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    online, cached = json.loads(out.read_text())
    assert (online["teacher"], cached["teacher"]) == ("online", "cached")
    for arm in (online, cached):
        assert math.isfinite(arm["loss"]) and arm["s_per_step"] > 0
        assert arm["clip_images_per_s"] == pytest.approx(4 / arm["s_per_step"])  # SMOKE: 4 CLIP images a step
        assert arm["sam_images_per_s"] == pytest.approx(1 / arm["s_per_step"])
        assert arm["mfu"] is None  # no peak on the CPU unless given
        assert set(arm["sdpa_kernel_global_blocks"]) == {"64px", "256px"}
    # The cached arm runs neither teacher's image encoder: fewer FLOPs, the student's unchanged.
    assert 0 < cached["tflops_per_step"] < online["tflops_per_step"]
    assert "| online |" in result.stdout and "| cached |" in result.stdout
    # On meta tensors: the online step minus the two teachers' image encoders is what the cached arm counted.
    meta = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--smoke", "--flops-only"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert meta.returncode == 0, meta.stderr[-3000:]
    counted = json.loads(meta.stdout.strip().splitlines()[-1])
    assert counted["tflops_cached_step"] == pytest.approx(cached["tflops_per_step"], rel=1e-9)
    assert counted["tflops_online_step"] == pytest.approx(online["tflops_per_step"], rel=1e-2)
