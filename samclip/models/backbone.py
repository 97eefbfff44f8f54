"""SAM's ViT-Det image encoder on timm's VisionTransformerSAM, exposing both of its outputs."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from timm.layers import resample_abs_pos_embed_nhwc
from timm.models import checkpoint_seq
from timm.models.vision_transformer_sam import VisionTransformerSAM
from torch import nn

from samclip.models.attention import RelPosAttention
from samclip.models.config import SamClipConfig


class BackboneFeatures(NamedTuple):
    tokens: torch.Tensor  # [B, H/16, W/16, C] output of the last block: the CLIP head's input
    neck: torch.Tensor | None  # [B, prompt_embed_dim, H/16, W/16]: the SAM head's image embedding


class SamBackbone(VisionTransformerSAM):
    """SAM image encoder at any input size that is a multiple of the patch size.

    The absolute position embedding is resampled to the input's token grid (timm does this) and
    the global blocks' relative position tables are interpolated (as in segment_anything). Attention is
    :class:`~samclip.models.attention.RelPosAttention` (kernel set by ``set_attention_kernel``).
    """

    def __init__(self, config: SamClipConfig) -> None:
        super().__init__(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            qkv_bias=True,
            # segment_anything's encoder uses eps=1e-6; timm's class default is nn.LayerNorm's 1e-5.
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_abs_pos=True,
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=config.global_attn_indexes,
            neck_chans=config.prompt_embed_dim,
            num_classes=0,
        )
        self.patch_size = config.patch_size
        for block in self.blocks:
            RelPosAttention.adopt(block.attn)

    def forward_features(self, images: torch.Tensor, with_neck: bool = True) -> BackboneFeatures:  # type: ignore[override]
        """``images``: SAM-normalised [B, 3, H, W], H and W multiples of the patch size.

        ``with_neck=False`` skips the neck when only the CLIP head will read the tokens (and leaves the
        neck's parameters out of the autograd graph, which DDP needs to know about).
        """
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        x = self.patch_embed(images)
        x = x + resample_abs_pos_embed_nhwc(self.pos_embed, x.shape[1:3])
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # Non-reentrant explicitly: the reentrant kind (TIMM_REENTRANT_CKPT) gives no gradients to
            # parameters after the checkpoint when the input needs none, e.g. the CLIP head in head_probe.
            x = checkpoint_seq(self.blocks, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        neck = self.neck(x.permute(0, 3, 1, 2)) if with_neck else None
        return BackboneFeatures(tokens=x, neck=neck)

    def forward(self, images: torch.Tensor, with_neck: bool = True) -> BackboneFeatures:  # type: ignore[override]
        return self.forward_features(images, with_neck=with_neck)
