"""Model shapes: one frozen dataclass describes a whole SAM-CLIP model, and names map to published sizes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class SamClipConfig:
    """Everything needed to rebuild a SAM-CLIP model (checkpoints store ``asdict(config)``).

    The backbone and SAM head fields follow segment_anything's ``_build_sam``; the CLIP head fields
    follow the SAM-CLIP paper (3 blocks, max-pool, LayerNorm, MLP with two hidden layers).
    """

    # Backbone: SAM's ViT-Det image encoder.
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    patch_size: int = 16
    mlp_ratio: float = 4.0
    # Square image side the position embeddings (and relative positions) are stored at.
    image_size: int = 1024
    # SAM head: prompt encoder + mask decoder; prompt_embed_dim is also the neck's width.
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # CLIP head. The paper does not state the MLP width; we use the backbone width (our choice).
    clip_head_depth: int = 3
    clip_embed_dim: int = 768
    clip_mlp_hidden_dim: int | None = None
    # Adaptor heads (AM-RADIO): (name, width) of each extra teacher's feature space, e.g. (("dino", 768),).
    adaptors: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_attn_indexes", tuple(self.global_attn_indexes))
        pairs = self.adaptors.items() if isinstance(self.adaptors, Mapping) else self.adaptors
        object.__setattr__(self, "adaptors", tuple((str(name), int(width)) for name, width in pairs))
        bad = [name for name, width in self.adaptors if width < 1]
        if bad:
            raise ValueError(f"model.adaptors: the width of {bad} must be >= 1")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} are outside the backbone's {self.depth} blocks")

    @property
    def grid_size(self) -> int:
        """Tokens per side of the SAM frame (64 for SAM's 1024 px)."""
        return self.image_size // self.patch_size

    @property
    def clip_hidden_dim(self) -> int:
        return self.clip_mlp_hidden_dim or self.embed_dim

    def adaptor_dim(self, name: str) -> int:
        widths = dict(self.adaptors)
        if name not in widths:
            raise ValueError(f"model.adaptors has no head {name!r} (it has {sorted(widths) or 'none'})")
        return widths[name]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["global_attn_indexes"] = list(self.global_attn_indexes)
        if self.adaptors:
            out["adaptors"] = dict(self.adaptors)
        else:  # checkpoints of two-teacher models keep their exact keys
            del out["adaptors"]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SamClipConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


# SAM's published encoder shapes (segment_anything.build_sam); the CLIP head targets ViT-L-14's 768-d space.
MODEL_CONFIGS: dict[str, SamClipConfig] = {
    "samclip_vit_b": SamClipConfig(),
    "samclip_vit_l": SamClipConfig(
        embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
    ),
    "samclip_vit_h": SamClipConfig(
        embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
    ),
    # A few-block model for tests and the CPU smoke run: 256 px SAM frame, narrow heads.
    "samclip_tiny": SamClipConfig(
        embed_dim=64,
        depth=4,
        num_heads=2,
        global_attn_indexes=(1, 3),
        window_size=4,
        image_size=256,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        clip_embed_dim=32,
    ),
}

# The segment_anything registry name for each published size (used to name checkpoint mismatches).
SAM_REGISTRY_NAMES = {"samclip_vit_b": "vit_b", "samclip_vit_l": "vit_l", "samclip_vit_h": "vit_h"}


def get_model_config(name: str, **overrides: Any) -> SamClipConfig:
    """The named configuration with ``overrides`` applied (unknown keys raise ``ValueError``)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODEL_CONFIGS)}")
    known = {f.name for f in fields(SamClipConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for model {name!r}; known keys: {sorted(known)}")
    return replace(MODEL_CONFIGS[name], **overrides)
