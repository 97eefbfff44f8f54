"""The merged model as an official SAM checkpoint or as a self-contained samclip directory (what
``samclip-export`` writes; :mod:`samclip.cli.export` is its command line)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch

from samclip.models import MODEL_CONFIGS, SamClipModel, create_model
from samclip.models.checkpoint_files import read_torch_file
from samclip.models.config import SAM_REGISTRY_NAMES
from samclip.models.final_checkpoint import ClipTeacherSpec, atomic_torch_save, load_final_checkpoint
from samclip.models.sam_checkpoint import to_official_state_dict, validate_sam_state_dict
from samclip.serve.merged import MergedSamClip, TextEncoder

log = logging.getLogger(__name__)


def official_sam_state_dict(model: SamClipModel) -> dict[str, torch.Tensor]:
    """The backbone and SAM head in segment_anything's key layout (the CLIP head is left out)."""
    state = to_official_state_dict(model.backbone.state_dict(), model.sam_head.state_dict())
    state = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    validate_sam_state_dict(state, model.config, source="the exported state dict")
    return state


def sam_registry_name(model: SamClipModel) -> str | None:
    """The ``sam_model_registry`` key that builds this model's shape, if segment_anything has one."""
    for name, registry_name in SAM_REGISTRY_NAMES.items():
        reference = MODEL_CONFIGS[name]
        if asdict(reference) | {"extra": {}} == asdict(model.config) | {"extra": {}}:
            return registry_name
    return None


def export_sam(model: SamClipModel, out: str | Path) -> Path:
    """Write an official SAM checkpoint: ``sam_model_registry[name](checkpoint=out)`` loads it unmodified."""
    out = Path(out)
    atomic_torch_save(official_sam_state_dict(model), out)
    registry = sam_registry_name(model)
    if registry is None:
        log.warning(
            "%s has a shape segment_anything's registry does not build; load it with "
            "samclip.models.sam_checkpoint.build_official_sam(config).load_state_dict(torch.load(FILE))",
            out,
        )
    else:
        log.info("wrote %s: load with segment_anything.sam_model_registry[%r](checkpoint=...)", out, registry)
    return out


def load_student(
    checkpoint: str | Path,
    model_name: str | None = None,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
) -> tuple[SamClipModel, ClipTeacherSpec | None]:
    """A final.pt (``model_name`` None) or a bare student state dict of the named model."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if model_name is None:
        final = load_final_checkpoint(path)
        teacher = final.clip_teacher
        if clip_model is not None:
            teacher = ClipTeacherSpec(clip_model, clip_pretrained)
        return final.build_model(), teacher
    model = create_model(model_name)
    state = read_torch_file(path, "checkpoint")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(f"{path} is not a state dict of {model_name}: {mismatch}")
    model.load_state_dict(state, strict=True)
    teacher = None if clip_model is None else ClipTeacherSpec(clip_model, clip_pretrained)
    return model, teacher


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: object) -> str | None:
    """A one-line summary of how ``given`` differs from ``expected`` (None when it loads), not torch's
    one line per tensor (100 KB for a ViT-B of the wrong size)."""
    if not isinstance(given, dict):
        return f"it holds a {type(given).__name__}, not a state dict"
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    resized = [
        key for key, value in expected.items()
        if key in given and hasattr(given[key], "shape") and tuple(given[key].shape) != tuple(value.shape)
    ]  # fmt: skip
    parts = []
    if resized:
        key = resized[0]
        parts.append(
            f"{len(resized)} tensors of another shape (e.g. {key}: {tuple(given[key].shape)} here, "
            f"{tuple(expected[key].shape)} expected)"
        )
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


def export_samclip(model: SamClipModel, teacher: ClipTeacherSpec | None, out: str | Path) -> Path:
    """Write the merged model (backbone, both heads, CLIP text tower) as safetensors + ``config.json``."""
    if teacher is None:
        raise ValueError(
            "--format samclip needs the CLIP text tower: a final.pt records it, a bare state dict needs "
            "--clip-model NAME [--clip-pretrained TAG_OR_FILE]"
        )
    text = TextEncoder.from_open_clip(teacher.model_name, teacher.pretrained)
    return MergedSamClip(model, text, teacher).save_pretrained(out)
