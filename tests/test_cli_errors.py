"""User errors at every command line: one line on stderr naming the problem, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samclip.cli_errors import one_line
from samclip.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def run_cli(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, env=environment
    )


def assert_one_line(result: subprocess.CompletedProcess, prog: str, *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    image = root / "photo.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    (root / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    student = root / "student.pt"
    torch.save(create_model("samclip_tiny").state_dict(), student)
    return {
        "image": image,
        "text": root / "notes.txt",
        "empty": root / "empty",
        "student": student,
        "root": root,
    }


@pytest.mark.slow
def test_every_cli_reports_user_errors_in_one_line(files: dict[str, Path]) -> None:
    checkpoint = str(files["student"])
    predict = ("samclip.cli.predict", "samclip-predict")
    cases = [
        (predict, [str(files["image"]), "--checkpoint", checkpoint, "--boxes", "1,2,3", "--out", "o.png"], ["--boxes"]),
        (predict, [str(files["text"]), "--checkpoint", checkpoint, "--labels", "a", "--out", "o.png"], ["notes.txt"]),
        (predict, [str(files["empty"]), "--checkpoint", checkpoint, "--labels", "a", "--out", "o"], ["no image files"]),
        (("samclip.cli.export", "samclip-export"),
         [checkpoint, "--model", "samclip_vit_b", "--format", "sam", "--out", str(files["root"] / "x.pth")],
         ["not a state dict of samclip_vit_b", "tensors of another shape"]),
        (("samclip.train", "samclip-train"), ["stages=[finetune]", f"run_dir={files['root'] / 'run'}"],
         ["unknown stage 'finetune'"]),
        (("samclip.cli.eval", "samclip-eval"), ["eval=semseg_voc"], ["run_dir=DIR is required"]),
        (("samclip.cli.data", "samclip-data preview"), ["preview", "sam", str(files["empty"]), "--out", "p.png"], []),
    ]  # fmt: skip
    for (module, prog), args, needles in cases:
        result = run_cli(module, *args)
        assert_one_line(result, prog, *needles)
        assert len(result.stderr) < 600, result.stderr  # not 100 KB of size-mismatch lines


@pytest.mark.slow
def test_debug_shows_the_traceback(files: dict[str, Path]) -> None:
    args = [str(files["image"]), "--checkpoint", str(files["student"]), "--boxes", "1,2,3", "--out", "o.png"]
    assert "Traceback" in run_cli("samclip.cli.predict", *args, "--debug").stderr
    assert "Traceback" in run_cli("samclip.cli.predict", *args, env={"SAMCLIP_DEBUG": "1"}).stderr


def test_omegaconf_errors_name_the_full_key() -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    cfg = OmegaConf.create({"data": {"clip": {"urls": "???"}}})
    with pytest.raises(MissingMandatoryValue) as error:
        _ = cfg.data.clip.urls
    assert one_line(error.value).startswith("data.clip.urls must be set")
    assert one_line(ValueError("first\n  second")) == "first second"
