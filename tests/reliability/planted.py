"""Planted faults: helpers shared by the reliability tests (a composed smoke config, a trap file)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from samclip.train.runner import CONFIG_DIR


def compose_smoke(run_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["experiment=smoke", f"run_dir={run_dir}", *overrides])


def with_assets(assets: Path) -> list[str]:
    return [
        f"data.clip.urls='{assets}/data/clip/{{00000..00003}}.tar'",
        f"data.sam.urls=[{assets}/data/sam/sa_000000.tar,{assets}/data/sam/sa_000001.tar]",
        f"data.sam.manifest={assets}/data/sam/train.txt",
        f"data.sam.val_manifest={assets}/data/sam/val.txt",
        f"teacher.clip.pretrained={assets}/teachers/clip_tiny.pt",
        f"teacher.sam.checkpoint={assets}/teachers/sam_tiny.pth",
        "prepare=null",
    ]


class Trap:
    """Unpickling this object runs code: it writes ``marker``. A safe loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "code ran"))


def plant_trap(path: Path, marker: Path, shape: str = "state_dict") -> Path:
    """A torch file whose unpickling writes ``marker``, shaped like the checkpoint a loader expects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    trap = Trap(marker)
    content = {
        "state_dict": {"image_encoder.patch_embed.proj.weight": torch.zeros(1), "trap": trap},
        "final": {"format_version": 1, "model": {"trap": trap}, "model_config": {}, "clip_teacher": {}},
        "training": {"format": "samclip-training", "stage": "head_probe", "step": 2, "rng": trap},
    }[shape]
    torch.save(content, path)
    return path


def literal(text: str) -> str:
    return re.escape(text)
