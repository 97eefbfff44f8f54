"""Open-Vocabulary SAM's parts: frozen CLIP tower, SAM2CLIP adapter, label-token decoder, CLIP2SAM head."""

from samclip.models.ovsam.clip2sam import Clip2SamHead, class_logits, fuse_class_probabilities
from samclip.models.ovsam.clip_tower import FrozenClipTower
from samclip.models.ovsam.config import OVSAM_CONFIGS, OvSamConfig, get_ovsam_config
from samclip.models.ovsam.model import (
    OvSamEmbedding,
    OvSamModel,
    OvSamOutput,
    create_ovsam_from_config,
    create_ovsam_model,
)
from samclip.models.ovsam.sam2clip import Sam2ClipAdapter

__all__ = [
    "OVSAM_CONFIGS",
    "Clip2SamHead",
    "FrozenClipTower",
    "OvSamConfig",
    "OvSamEmbedding",
    "OvSamModel",
    "OvSamOutput",
    "Sam2ClipAdapter",
    "class_logits",
    "create_ovsam_from_config",
    "create_ovsam_model",
    "fuse_class_probabilities",
    "get_ovsam_config",
]
