"""Official SAM checkpoints (``sam_vit_b_01ec64.pth`` layout): build, read, validate, split."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, Sam
from timm.models.vision_transformer_sam import checkpoint_filter_fn

from samclip.models.checkpoint_files import read_torch_file
from samclip.models.config import SamClipConfig
from samclip.models.preprocess import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from samclip.models.sam_head import build_mask_decoder, build_prompt_encoder

SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def build_official_sam(config: SamClipConfig) -> Sam:
    """segment_anything's ``Sam`` for any config (``sam_model_registry`` covers only the three published sizes)."""
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=config.depth,
            embed_dim=config.embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=config.global_attn_indexes,
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=build_prompt_encoder(config),
        mask_decoder=build_mask_decoder(config),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )


def read_sam_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load an official SAM checkpoint's state dict onto the CPU, with errors that name the file."""
    state_dict = read_torch_file(path, "SAM checkpoint")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(
            f"SAM checkpoint {path} is not a flat state dict of tensors (the official SAM layout)"
        )
    if not all(key.startswith(SAM_PARTS) for key in state_dict):
        prefixes = sorted({key.split(".", 1)[0] for key in state_dict})[:8]
        raise ValueError(
            f"SAM checkpoint {path} does not have the official SAM layout (keys under image_encoder., "
            f"prompt_encoder., mask_decoder.); its top-level prefixes are {prefixes}"
        )
    return state_dict


def _describe_encoder(state_dict: dict[str, torch.Tensor]) -> str:
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    blocks = {key.split(".")[2] for key in state_dict if key.startswith("image_encoder.blocks.")}
    width = "?" if patch is None else patch.shape[0]
    return f"an image encoder of width {width} with {len(blocks)} blocks"


def validate_sam_state_dict(state_dict: dict[str, torch.Tensor], config: SamClipConfig, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` if ``state_dict`` is not an official SAM of ``config``'s shape."""
    with torch.device("meta"):
        expected = {key: tensor.shape for key, tensor in build_official_sam(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [key for key in expected if key in state_dict and state_dict[key].shape != expected[key]]
    if not (missing or unexpected or mismatched):
        return
    details = []
    if mismatched:
        key = mismatched[0]
        details.append(
            f"{len(mismatched)} shape mismatches (e.g. {key}: {tuple(state_dict[key].shape)} "
            f"in the file, {tuple(expected[key])} expected)"
        )
    if missing:
        details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    raise ValueError(
        f"SAM checkpoint {source} holds {_describe_encoder(state_dict)}, but the model expects width "
        f"{config.embed_dim} with {config.depth} blocks: " + "; ".join(details)
    )


def split_sam_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Official SAM keys -> (timm backbone state dict, SAM head state dict)."""
    backbone = checkpoint_filter_fn(state_dict, None)
    head = {key: value for key, value in state_dict.items() if not key.startswith("image_encoder.")}
    return backbone, head


def to_official_state_dict(
    backbone: dict[str, torch.Tensor], sam_head: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`split_sam_state_dict`: a state dict ``segment_anything`` loads as is."""
    encoder = {f"image_encoder.{key.replace('mlp.fc', 'mlp.lin')}": value for key, value in backbone.items()}
    return {**encoder, **sam_head}
