"""A stage's ``final.pt``: the student's weights plus what is needed to rebuild and use it.

Both the trainer (which writes it) and evaluation/export (which read it) go through this module.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field, replace
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


DEFAULT_CLIP_TEACHER = "samclip.models.teachers.ClipTeacher"
EXPORT_HINT = "`samclip-export CHECKPOINT --format samclip --out DIR` bundles the text tower into DIR"
# How many folders above a checkpoint's own are searched for a run dir holding a teacher file.
_RUN_DIR_DEPTH = 3


@dataclass(frozen=True)
class ClipTeacherSpec:
    """The CLIP teacher as configured (``teacher.clip``): it provides the merged model's frozen text tower.

    ``target`` and ``args`` are the config's ``_target_`` and arguments, so a user-supplied teacher is rebuilt
    as trained. A weights file (``pretrained``) is also recorded relative to the run dir (when inside it) and
    by content hash, so it is found again after the run dir moves (:meth:`resolve_pretrained`).
    """

    model_name: str
    pretrained: str | None  # an open_clip tag or a checkpoint file path (absolute)
    target: str = DEFAULT_CLIP_TEACHER
    args: dict[str, Any] = field(default_factory=dict)  # the other constructor arguments
    pretrained_in_run_dir: str | None = None  # ``pretrained`` relative to the run dir
    pretrained_sha256: str | None = None

    @classmethod
    def from_config(cls, node: dict[str, Any], run_dir: str | Path | None = None) -> ClipTeacherSpec:
        """From a resolved ``teacher.clip`` node (``_target_`` + arguments); files become absolute paths."""
        args = {key: value for key, value in node.items() if key != "_target_"}
        target = str(node.get("_target_", DEFAULT_CLIP_TEACHER))
        pretrained = args.pop("pretrained", None)
        model_name = str(args.pop("model_name", target))
        relative = None
        if pretrained is not None and _is_file_path(str(pretrained)):
            pretrained = os.path.abspath(pretrained)
            if run_dir is not None:
                inside = os.path.relpath(pretrained, os.path.abspath(run_dir))
                relative = None if inside.startswith(os.pardir) else inside
        return cls(model_name, pretrained, target, args, relative)

    def with_file_hash(self) -> ClipTeacherSpec:
        """The spec plus the sha256 of its weights file (when it is an existing file)."""
        if self.pretrained_sha256 is not None or self.pretrained is None:
            return self
        path = Path(self.pretrained)
        if not _is_file_path(self.pretrained) or not path.is_file():
            return self
        stat = path.stat()
        return replace(self, pretrained_sha256=_sha256(str(path), stat.st_size, stat.st_mtime_ns))

    def resolve_pretrained(self, checkpoint: str | Path | None = None) -> str | None:
        """The weights file as it is now: relative to a run dir above ``checkpoint``, then the recorded
        absolute path, each accepted only if its content hash matches. Tags pass through."""
        if self.pretrained is None or not _is_file_path(self.pretrained):
            return self.pretrained
        candidates = []
        if self.pretrained_in_run_dir is not None and checkpoint is not None:
            folders = Path(checkpoint).absolute().parents
            candidates += [
                folders[i] / self.pretrained_in_run_dir for i in range(min(_RUN_DIR_DEPTH, len(folders)))
            ]
        candidates.append(Path(self.pretrained))
        rejected = []
        for candidate in candidates:
            if not candidate.is_file():
                continue
            stat = candidate.stat()
            if self.pretrained_sha256 in (None, _sha256(str(candidate), stat.st_size, stat.st_mtime_ns)):
                return str(candidate)
            rejected.append(str(candidate))
        looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
        mismatch = f"; {', '.join(rejected)} has other content (sha256 differs)" if rejected else ""
        raise FileNotFoundError(
            f"the CLIP teacher file {self.pretrained} (the text tower, needed for labels) is not found "
            f"(looked at {looked}){mismatch}; put it back, or use an export: {EXPORT_HINT}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "target": self.target,
            "args": dict(self.args),
            "pretrained_in_run_dir": self.pretrained_in_run_dir,
            "pretrained_sha256": self.pretrained_sha256,
        }


def _is_file_path(value: str) -> bool:
    # The same rule as open_clip pretrained values (teachers.is_checkpoint_path), without importing open_clip.
    return any(sep in value for sep in ("/", "\\")) or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime key the cache: a file rewritten in place is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FinalCheckpoint:
    model_state: dict[str, torch.Tensor]
    model_config: Any  # SamClipConfig, or OvSamConfig for model_kind "ovsam"
    clip_teacher: ClipTeacherSpec
    stage: str
    step: int
    model_kind: str = SAMCLIP_KIND
    path: Path | None = None  # where it was read from (the teacher file is looked for around it)

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
            "clip_teacher": clip_teacher.with_file_hash().to_dict(),
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
        clip_teacher=_teacher_spec(raw["clip_teacher"], path),
        stage=str(raw.get("stage", "")),
        step=int(raw.get("step", 0)),
        path=Path(path),
    )


def _teacher_spec(record: Any, path: str | Path) -> ClipTeacherSpec:
    known = set(ClipTeacherSpec.__dataclass_fields__)
    if not isinstance(record, dict) or not {"model_name", "pretrained"} <= set(record) <= known:
        raise ValueError(f"checkpoint {path}: clip_teacher must hold {sorted(known)}, got {record!r}")
    return ClipTeacherSpec(**record)
