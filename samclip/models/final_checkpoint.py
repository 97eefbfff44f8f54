"""A stage's ``final.pt``: the student's weights plus what is needed to rebuild and use it.

Both the trainer (which writes it) and evaluation/export (which read it) go through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from samclip.models.checkpoint_files import atomic_torch_save, read_torch_file
from samclip.models.config import SamClipConfig
from samclip.models.factory import create_model_from_config
from samclip.models.samclip_model import SamClipModel

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClipTeacherSpec:
    """Which OpenCLIP model provides the merged model's (frozen) text encoder."""

    model_name: str
    pretrained: str | None  # an open_clip tag or a checkpoint file path


@dataclass
class FinalCheckpoint:
    model_state: dict[str, torch.Tensor]
    model_config: SamClipConfig
    clip_teacher: ClipTeacherSpec
    stage: str
    step: int

    def build_model(self) -> SamClipModel:
        model = create_model_from_config(self.model_config)
        model.load_state_dict(self.model_state, strict=True)
        return model


def save_final_checkpoint(
    path: str | Path, model: SamClipModel, clip_teacher: ClipTeacherSpec, stage: str, step: int
) -> None:
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    atomic_torch_save(
        {
            "format_version": FORMAT_VERSION,
            "model": state,
            "model_config": model.config.to_dict(),
            "clip_teacher": {"model_name": clip_teacher.model_name, "pretrained": clip_teacher.pretrained},
            "stage": stage,
            "step": step,
        },
        path,
    )


def load_final_checkpoint(path: str | Path) -> FinalCheckpoint:
    raw = read_torch_file(path, "checkpoint")
    if isinstance(raw, dict) and raw.get("format") == "samclip-training":
        raise ValueError(
            f"{path} is a training checkpoint (step_*.pt, to resume a stage); use the stage's final.pt, "
            f"written when the stage ends"
        )
    missing = [
        key
        for key in ("model", "model_config", "clip_teacher")
        if not isinstance(raw, dict) or key not in raw
    ]
    if missing:
        raise ValueError(f"checkpoint {path} is not a samclip final checkpoint: it lacks {missing}")
    return FinalCheckpoint(
        model_state=raw["model"],
        model_config=SamClipConfig.from_dict(raw["model_config"]),
        clip_teacher=ClipTeacherSpec(**raw["clip_teacher"]),
        stage=str(raw.get("stage", "")),
        step=int(raw.get("step", 0)),
    )
