"""The kill-at-random harness itself: one trial, one SIGKILL, a resume that reaches the same final weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


@pytest.mark.slow
def test_chaos_resume_reports_identical_final_weights(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "chaos_resume.py"),
            "--trials",
            "1",
            "--workdir",
            str(tmp_path),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "trials: 1  kills: " in result.stdout
    assert "resumes reaching the uninterrupted run's final weights: 1/1" in result.stdout
