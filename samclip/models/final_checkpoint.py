"""A stage's ``final.pt``: the student's weights plus what is needed to rebuild and use it.

Both the trainer (which writes it) and evaluation/export (which read it) go through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samclip.models.checkpoint_files import atomic_torch_save, read_torch_file
from samclip.models.config import SamClipConfig
from samclip.models.factory import create_model_from_config

FORMAT_VERSION = 1
# ``model_kind`` in final.pt: which recipe's model the config rebuilds (absent in older files: samclip).
SAMCLIP_KIND = "samclip"
OVSAM_KIND = "ovsam"


def _config_class(kind: str) -> Any:
    if kind == SAMCLIP_KIND:
        return SamClipConfig
    if kind == OVSAM_KIND:
        from samclip.models.ovsam.config import OvSamConfig

        return OvSamConfig
    raise ValueError(
        f"unknown model_kind {kind!r} in a final checkpoint; known: {[SAMCLIP_KIND, OVSAM_KIND]}"
    )


@dataclass(frozen=True)
class ClipTeacherSpec:
    """Which OpenCLIP model provides the merged model's (frozen) text encoder."""

    model_name: str
    pretrained: str | None  # an open_clip tag or a checkpoint file path


@dataclass
class FinalCheckpoint:
    model_state: dict[str, torch.Tensor]
    model_config: Any  # SamClipConfig, or OvSamConfig for model_kind "ovsam"
    clip_teacher: ClipTeacherSpec
    stage: str
    step: int
    model_kind: str = SAMCLIP_KIND

    def build_model(self) -> nn.Module:
        if self.model_kind == OVSAM_KIND:
            from samclip.models.ovsam.model import create_ovsam_from_config

            model = create_ovsam_from_config(self.model_config)
        else:
            model = create_model_from_config(self.model_config)
        model.load_state_dict(self.model_state, strict=True)
        return model


def save_final_checkpoint(
    path: str | Path, model: nn.Module, clip_teacher: ClipTeacherSpec, stage: str, step: int
) -> None:
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    atomic_torch_save(
        {
            "format_version": FORMAT_VERSION,
            "model_kind": getattr(model, "kind", SAMCLIP_KIND),
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
    kind = str(raw.get("model_kind", SAMCLIP_KIND))
    return FinalCheckpoint(
        model_kind=kind,
        model_state=raw["model"],
        model_config=_config_class(kind).from_dict(raw["model_config"]),
        clip_teacher=ClipTeacherSpec(**raw["clip_teacher"]),
        stage=str(raw.get("stage", "")),
        step=int(raw.get("step", 0)),
    )
