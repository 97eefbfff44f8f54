"""The merged model seen as a ``segment_anything.modeling.Sam``, sharing its modules (no weight copy).

segment_anything's ``SamPredictor``, ``SamAutomaticMaskGenerator`` and ``SamOnnxModel`` take a ``Sam``. Rather
than re-writing their pre/post-processing, grid sampling, NMS and stability scores, samclip hands them a
``Sam`` whose image encoder is the merged backbone (SAM's normalised, padded input -> the neck) and whose
prompt encoder and mask decoder are the SAM head's own modules. The encoder keeps the last block's tokens of
its latest call, so the CLIP head can read the very same backbone pass (labels for masks).
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam
from torch import nn

from samclip.models.preprocess import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from samclip.models.samclip_model import SamClipModel


class BackboneAsSamEncoder(nn.Module):
    """SAM-normalised, zero-padded [B, 3, S, S] -> neck [B, C, S/16, S/16]; remembers the tokens it made."""

    def __init__(self, model: SamClipModel) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.img_size = model.config.image_size  # read by Sam.preprocess and SamPredictor
        self.last_tokens: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images, with_neck=True)
        self.last_tokens = features.tokens
        return features.neck


def as_segment_anything(model: SamClipModel) -> Sam:
    """A ``Sam`` over ``model``'s backbone and SAM head: what segment_anything's tools expect."""
    sam = Sam(
        image_encoder=BackboneAsSamEncoder(model),  # type: ignore[arg-type]  # duck-typed: img_size + forward
        prompt_encoder=model.sam_head.prompt_encoder,
        mask_decoder=model.sam_head.mask_decoder,
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    device = next(model.parameters()).device
    return sam.to(device).eval()
