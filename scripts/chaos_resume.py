"""Kill-at-random harness: SIGKILL a tiny training run at random moments, resume it, compare the final weights.

    OMP_NUM_THREADS=1 python scripts/chaos_resume.py --trials 20

Each trial trains experiment=smoke's head_probe and multitask stages in a fresh run directory, SIGKILLs the
trainer ``--kills-per-trial`` times (every other kill is aimed at a checkpoint write: it fires as soon as a
``.tmp`` file appears in a checkpoints folder), restarting the same command after each kill, and finally
lets it finish. Every stage's final.pt must equal the uninterrupted run's tensor for tensor. Prints trials,
kills (and how many landed inside a checkpoint write), and whether every resume reached the same weights.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STAGES = ("head_probe", "multitask")


def _command(run_dir: Path, assets: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "samclip.train",
        "experiment=smoke",
        f"run_dir={run_dir}",
        f"stages=[{','.join(STAGES)}]",
        f"data.clip.urls='{assets}/data/clip/{{00000..00003}}.tar'",
        f"data.sam.urls=[{assets}/data/sam/sa_000000.tar,{assets}/data/sam/sa_000001.tar]",
        f"data.sam.manifest={assets}/data/sam/train.txt",
        f"data.sam.val_manifest={assets}/data/sam/val.txt",
        f"teacher.clip.pretrained={assets}/teachers/clip_tiny.pt",
        f"teacher.sam.checkpoint={assets}/teachers/sam_tiny.pth",
        "prepare=null",
        "checkpoint.every_steps=1",  # a write every step: many chances to be killed inside one
        "logger.progress=false",
    ]


def _start(run_dir: Path, assets: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log.open("a") as handle:
        return subprocess.Popen(_command(run_dir, assets), env=env, stdout=handle, stderr=subprocess.STDOUT)


def _finish(run_dir: Path, assets: Path, log: Path) -> None:
    process = _start(run_dir, assets, log)
    if process.wait() != 0:
        raise RuntimeError(f"the run in {run_dir} failed (exit {process.returncode}); see {log}")


def _writing(run_dir: Path) -> bool:
    for stage in STAGES:
        folder = run_dir / stage / "checkpoints"
        try:
            if any(name.endswith(".tmp") for name in os.listdir(folder)):
                return True
        except FileNotFoundError:
            continue
    return False


def _kill(
    run_dir: Path, assets: Path, log: Path, rng: random.Random, duration: float, aim_at_write: bool
) -> tuple[bool, bool]:
    """Start the run and SIGKILL it; returns (killed, a checkpoint write was in progress)."""
    process = _start(run_dir, assets, log)
    deadline = time.monotonic() + rng.uniform(0.2, 1.0) * duration
    while process.poll() is None:
        now = time.monotonic()
        if (aim_at_write and now > deadline - duration / 2 and _writing(run_dir)) or now > deadline:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True, _writing(run_dir)  # a temporary file left behind: killed inside a write
        time.sleep(0.0005 if aim_at_write else 0.005)
    return False, False


def _finals(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {stage: torch.load(run_dir / stage / "final.pt", weights_only=True)["model"] for stage in STAGES}


def _same(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> bool:
    return all(
        a[stage].keys() == b[stage].keys() and all(torch.equal(a[stage][k], b[stage][k]) for k in a[stage])
        for stage in STAGES
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kills-per-trial", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="kept when given; a temporary folder otherwise"
    )
    args = parser.parse_args(argv)
    from samclip.train.smoke import prepare_smoke_assets

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos_resume_"))
    workdir.mkdir(parents=True, exist_ok=True)
    assets = workdir / "assets"
    prepare_smoke_assets(
        str(assets / "data"),
        str(assets / "teachers/clip_tiny.pt"),
        "samclip-tiny-clip",
        str(assets / "teachers/sam_tiny.pth"),
        "samclip_tiny",
    )
    log = workdir / "runs.log"
    start = time.monotonic()
    _finish(workdir / "reference", assets, log)
    duration = time.monotonic() - start
    reference = _finals(workdir / "reference")
    rng = random.Random(args.seed)
    kills = in_write = identical = 0
    for trial in range(args.trials):
        run_dir = workdir / f"trial_{trial:03d}"
        for index in range(args.kills_per_trial):
            killed, writing = _kill(
                run_dir,
                assets,
                log,
                rng,
                duration,
                aim_at_write=(trial * args.kills_per_trial + index) % 2 == 1,
            )
            kills += killed
            in_write += writing
        _finish(run_dir, assets, log)
        same = _same(_finals(run_dir), reference)
        identical += same
        print(f"trial {trial + 1}/{args.trials}: {'same' if same else 'DIFFERENT'} final weights", flush=True)
        if same and args.workdir is None:
            shutil.rmtree(run_dir)
    print(
        f"trials: {args.trials}  kills: {kills}  kills during a checkpoint write: {in_write}  "
        f"resumes reaching the uninterrupted run's final weights: {identical}/{args.trials}"
    )
    return 0 if identical == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
