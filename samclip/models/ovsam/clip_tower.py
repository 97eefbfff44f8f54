"""The frozen open_clip CNN: multi-scale image features, region embeddings and text embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

import samclip.models.teachers  # noqa: F401  (registers samclip's small open_clip configs)


class FrozenClipTower(nn.Module):
    """An open_clip model (image tower + text tower) that never trains; ``.train()`` keeps it in eval mode.

    Images arrive as float in [0, 1] (any size: the CNN trunk is fully convolutional) and are normalised
    with the model's own statistics.
    """

    def __init__(self, model_name: str, levels: Sequence[int], pretrained: str | None = None) -> None:
        super().__init__()
        self.model_name = model_name
        self.levels = list(levels)
        # open_clip moves the model to ``device``; keep the ambient one (meta while a run is planned).
        device = torch.empty(0).device
        self.model = open_clip.create_model(model_name, pretrained=pretrained or None, device=device)
        if not hasattr(self.model.visual, "forward_intermediates"):
            raise ValueError(
                f"open_clip model {model_name} has no forward_intermediates (a CNN tower is needed)"
            )
        self.tokenizer = open_clip.get_tokenizer(model_name)
        visual = self.model.visual
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)
        with torch.no_grad():
            probe = self.features(torch.zeros(1, 3, 64, 64, device=self.mean.device))
        self.channels = [int(f.shape[1]) for f in probe]
        self.strides = [64 // int(f.shape[-1]) for f in probe]

    def train(self, mode: bool = True) -> FrozenClipTower:
        return self  # BatchNorm statistics and all weights stay as pretrained

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid levels ``levels`` of the image tower (open_clip's own ``forward_intermediates``)."""
        normalized = (images - self.mean) / self.std
        out = self.model.visual.forward_intermediates(
            normalized, indices=self.levels, stop_early=True, intermediates_only=True
        )
        return out["image_intermediates"]

    def region_embeddings(self, last_level: torch.Tensor, boxes: torch.Tensor, stride: int) -> torch.Tensor:
        """Frozen CLIP embeddings of boxes ``[K, 5]`` (batch index, xyxy in pixels): RoIAlign + CLIP's own pooling."""
        visual = self.model.visual
        if hasattr(visual, "attnpool"):  # ModifiedResNet: pool to the attention pool's grid
            side = round((visual.attnpool.positional_embedding.shape[0] - 1) ** 0.5)
            regions = roi_align(last_level, boxes, side, spatial_scale=1.0 / stride, aligned=True)
            return visual.attnpool(regions)
        regions = roi_align(last_level, boxes, 7, spatial_scale=1.0 / stride, aligned=True)
        return visual.head(visual.trunk.forward_head(regions, pre_logits=True))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.mean.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()
