"""Open-Vocabulary SAM shapes: one frozen dataclass rebuilds the model (checkpoints store ``to_dict()``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class OvSamConfig:
    """Frozen open_clip CNN tower + SAM2CLIP adapter + SAM prompt encoder/mask decoder + CLIP2SAM head.

    ``clip_levels`` index open_clip's ``forward_intermediates`` (ModifiedResNet: 0 stem, 1..4 layer1..4,
    strides 4, 4, 8, 16, 32; timm ConvNeXt: 0..3, strides 4, 8, 16, 32). The paper fuses three levels.
    ``sam_model`` names the SAM whose prompt encoder and mask decoder shapes (and checkpoint) are used.
    """

    clip_model_name: str = "RN50x16"
    clip_levels: tuple[int, ...] = (2, 3, 4)
    sam_model: str = "samclip_vit_h"
    image_size: int = 1024  # SAM's square frame; the CLIP tower sees it too
    patch_size: int = 16  # stride of SAM's image embedding (64x64 at 1024)
    # SAM2CLIP: several transformer layers (paper, §3.2); widths/depth not stated, ours.
    adapter_dim: int = 512
    adapter_depth: int = 3
    adapter_heads: int = 8
    # CLIP2SAM: light FPN, RoIAlign on its finest level, one conv + MLP (paper, §3.2 and Fig. 3).
    fpn_dim: int = 256
    roi_size: int = 7
    head_hidden_dim: int = 1024
    # Inference: learned and frozen-CLIP class probabilities fused as p_learned^(1-a) * p_clip^a.
    clip_score_weight: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_levels", tuple(self.clip_levels))
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.adapter_dim % self.adapter_heads:
            raise ValueError(
                f"adapter_dim={self.adapter_dim} is not divisible by adapter_heads={self.adapter_heads}"
            )
        if not 0.0 <= self.clip_score_weight <= 1.0:
            raise ValueError(f"clip_score_weight must be in [0, 1], got {self.clip_score_weight}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["clip_levels"] = list(self.clip_levels)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OvSamConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown OV-SAM config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


OVSAM_CONFIGS: dict[str, OvSamConfig] = {
    # The paper's default: CLIP RN50x16 + SAM-H decoder (Table 1-3).
    "ovsam_r50x16": OvSamConfig(),
    # Its best backbone in Table 7 (timm ConvNeXt stages 1..3 = strides 8, 16, 32).
    "ovsam_convnext_l": OvSamConfig(clip_model_name="convnext_large_d_320", clip_levels=(1, 2, 3)),
    # For tests and the CPU smoke run: a tiny open_clip ResNet and the tiny SAM decoder at 256 px.
    "ovsam_tiny": OvSamConfig(
        clip_model_name="samclip-tiny-rn-clip",
        sam_model="samclip_tiny",
        image_size=256,
        adapter_dim=32,
        adapter_depth=2,
        adapter_heads=2,
        fpn_dim=16,
        roi_size=4,
        head_hidden_dim=32,
    ),
}


def get_ovsam_config(name: str, **overrides: Any) -> OvSamConfig:
    if name not in OVSAM_CONFIGS:
        raise ValueError(f"unknown OV-SAM model {name!r}; available: {sorted(OVSAM_CONFIGS)}")
    return replace(OVSAM_CONFIGS[name], **overrides)
