"""``create_model``: the one entry point that builds a SAM-CLIP model, optionally from official SAM weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from samclip.models.attention import set_attention_kernel
from samclip.models.config import SamClipConfig, get_model_config
from samclip.models.sam_checkpoint import read_sam_checkpoint, split_sam_state_dict, validate_sam_state_dict
from samclip.models.samclip_model import SamClipModel


def create_model(
    name: str, *, sam_checkpoint: str | Path | None = None, attention: str = "sdpa", **overrides: Any
) -> SamClipModel:
    """Build ``name`` (``samclip_vit_b``/``_l``/``_h``/``samclip_tiny``) with config ``overrides``.

    ``attention`` (``sdpa``, ``flex`` or ``math``) is how the backbone and CLIP head apply SAM's
    relative-position bias; a runtime choice, not part of the model's config or checkpoints.

    ``sam_checkpoint`` is an official SAM checkpoint file; it initialises the backbone and the SAM
    head, and the CLIP head blocks are then copied from the loaded backbone's last block.
    """
    config = get_model_config(name, **overrides)
    model = SamClipModel(config)
    set_attention_kernel(model, attention)
    if sam_checkpoint is not None:
        load_sam_weights(model, sam_checkpoint)
    return model


def create_model_from_config(config: SamClipConfig | dict[str, Any]) -> SamClipModel:
    """Rebuild a model from the config a checkpoint stored."""
    if isinstance(config, dict):
        config = SamClipConfig.from_dict(config)
    return SamClipModel(config)


def load_sam_weights(model: SamClipModel, path: str | Path) -> None:
    load_sam_state_dict(model, read_sam_checkpoint(path), source=str(path))


def load_sam_state_dict(model: SamClipModel, state_dict: dict[str, Any], source: str) -> None:
    """An official SAM state dict (``image_encoder.* / prompt_encoder.* / mask_decoder.*``) into ``model``'s
    backbone and SAM head; the CLIP head blocks are then copied from the loaded backbone's last block."""
    validate_sam_state_dict(state_dict, model.config, source=source)
    backbone, head = split_sam_state_dict(state_dict)
    model.backbone.load_state_dict(backbone, strict=True)
    model.sam_head.load_state_dict(head, strict=True)
    model.init_clip_head_from_backbone()
