"""An image-only teacher from timm: the template for bringing any embedding model as the CLIP teacher.

What the trainer needs of a CLIP teacher (``teacher.clip._target_``): a ``FrozenTeacher`` (frozen, eval mode)
with ``model_name``, ``embed_dim`` and ``encode_image(images) -> [B, embed_dim]`` for float images in [0, 1]
at any square size (the teacher resizes and normalises them itself). Text is needed only for zero-shot
evaluation and labels: final.pt records the teacher's ``_target_`` and arguments, and labels rebuild it and
use its ``model.encode_text(tokens)`` and ``tokenizer`` (as ``ClipTeacher`` has). A teacher without them, as
this one, trains the CLIP head, and the merged model then gives masks and image embeddings only.

    teacher:
      clip:
        _target_: samclip.models.timm_teacher.TimmImageTeacher
        model_name: vit_base_patch16_clip_224.openai
        pretrained: /ckpt/vit_base_patch16_clip_224.openai.safetensors
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F

from samclip.models.preprocess import resize_and_normalize
from samclip.models.teachers import FrozenTeacher


class TimmImageTeacher(FrozenTeacher):
    """timm ``model_name`` (pooled features, no classifier) from a local weights file; ``pretrained=None`` is random."""

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        image_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pretrained is not None and not Path(pretrained).is_file():
            raise FileNotFoundError(f"timm teacher weights {pretrained} do not exist")
        kwargs = dict(model_kwargs or {})
        if image_size is not None:
            kwargs.setdefault("img_size", image_size)
        self.model_name = model_name
        self.pretrained = pretrained
        # Weights come from the file, never from a hub: pretrained_cfg_overlay points timm's loader at it.
        self.model = timm.create_model(
            model_name,
            pretrained=pretrained is not None,
            pretrained_cfg_overlay=None if pretrained is None else {"file": pretrained},
            num_classes=0,
            **kwargs,
        )
        data = timm.data.resolve_model_data_config(self.model)
        self.image_size = int(image_size or data["input_size"][-1])
        self.register_buffer("mean", torch.tensor(data["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(data["std"]).view(1, 3, 1, 1))
        self.freeze()

    @property
    def embed_dim(self) -> int:
        return int(self.model.num_features)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        embeds = self.model(resize_and_normalize(images, self.image_size, self.mean, self.std))
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)
