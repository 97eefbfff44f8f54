"""Open-Vocabulary SAM: one frozen CLIP encoder, SAM2CLIP, SAM's decoder with CLIP2SAM (prompt -> mask + label)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from samclip.models.config import get_model_config
from samclip.models.ovsam.clip2sam import Clip2SamHead, class_logits, fuse_class_probabilities
from samclip.models.ovsam.clip_tower import FrozenClipTower
from samclip.models.ovsam.config import OvSamConfig, get_ovsam_config
from samclip.models.ovsam.decoder import decode_with_label_token
from samclip.models.ovsam.sam2clip import Sam2ClipAdapter
from samclip.models.prompts import SamPrompts
from samclip.models.sam_checkpoint import read_sam_checkpoint
from samclip.models.sam_head import build_mask_decoder, build_prompt_encoder


@dataclass
class OvSamEmbedding:
    features: list[torch.Tensor]  # the frozen CLIP pyramid (config.clip_levels)
    image_embeddings: torch.Tensor  # [B, C, grid, grid] SAM2CLIP's output, in place of SAM's encoder


@dataclass
class OvSamOutput:
    low_res_logits: torch.Tensor  # [M, K, 4g, 4g] for all M prompts, in prompt-group order
    iou_predictions: torch.Tensor  # [M, K]
    image_index: torch.Tensor  # [M]
    boxes: torch.Tensor  # [M, 4] the boxes recognised (the prompt's, or the predicted mask's for points)
    label_embeddings: torch.Tensor  # [M, D] CLIP2SAM's embedding, in the CLIP text space
    class_logits: torch.Tensor | None = None  # [M, C] eq. 1 against the text embeddings, when given


@dataclass
class OvSamForward:
    embedding: OvSamEmbedding
    masks: OvSamOutput | None  # None when no prompts were given


class OvSamModel(nn.Module):
    """Parameter names: ``clip.*`` (frozen), ``sam2clip.*``, ``prompt_encoder.*``, ``mask_decoder.*``, ``clip2sam.*``."""

    kind = "ovsam"

    def __init__(self, config: OvSamConfig, clip_pretrained: str | None = None) -> None:
        super().__init__()
        self.config = config
        sam = get_model_config(config.sam_model, image_size=config.image_size, patch_size=config.patch_size)
        self.sam_config = sam
        self.clip = FrozenClipTower(config.clip_model_name, config.clip_levels, clip_pretrained)
        self.sam2clip = Sam2ClipAdapter(
            self.clip.channels,
            config.grid_size,
            config.adapter_dim,
            config.adapter_depth,
            config.adapter_heads,
            sam.prompt_embed_dim,
        )
        self.prompt_encoder = build_prompt_encoder(sam)
        self.mask_decoder = build_mask_decoder(sam)
        self.clip2sam = Clip2SamHead(
            self.clip.channels,
            self.clip.strides,
            sam.prompt_embed_dim,
            config.fpn_dim,
            config.roi_size,
            config.head_hidden_dim,
            self.clip.embed_dim,
        )

    def train(self, mode: bool = True) -> OvSamModel:
        super().train(mode)
        self.clip.train(False)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass  # the adapter is a few layers; the frozen tower keeps no activations for backward

    def embed(self, images: torch.Tensor) -> OvSamEmbedding:
        """``images``: float [B, 3, S, S] in [0, 1] in SAM's frame (padded with ``SAM_PAD_VALUE``)."""
        with torch.no_grad():
            features = [f.detach() for f in self.clip.features(images)]
        return OvSamEmbedding(features, self.sam2clip(features))

    def decode(
        self, embedding: OvSamEmbedding, prompts: Sequence[SamPrompts], multimask: bool = False
    ) -> OvSamOutput:
        """SAM's decoder with the label token for every prompt group; CLIP2SAM embeds each prompt's region."""
        if not prompts:
            raise ValueError("decode needs at least one prompt group")
        dense_pe = self.prompt_encoder.get_dense_pe()
        logits, ious, owners, boxes, tokens = [], [], [], [], []
        for group in prompts:
            points = None if group.point_coords is None else (group.point_coords, group.point_labels)
            sparse, dense = self.prompt_encoder(points=points, boxes=group.boxes, masks=group.mask_inputs)
            out = decode_with_label_token(
                self.mask_decoder,
                self.clip2sam.label_token.weight,
                embedding.image_embeddings[group.image_index : group.image_index + 1],
                dense_pe,
                sparse,
                dense,
                multimask,
            )
            logits.append(out.low_res_logits)
            ious.append(out.iou_predictions)
            tokens.append(out.label_tokens)
            owners.append(
                torch.full((group.num_prompts,), group.image_index, dtype=torch.long, device=sparse.device)
            )
            boxes.append(
                group.boxes if group.boxes is not None else self.mask_boxes(out.low_res_logits[:, 0], group)
            )
        owner = torch.cat(owners)
        box = torch.cat(boxes).to(embedding.features[0].dtype)
        levels = self.clip2sam.pyramid(embedding.features)
        rois = torch.cat([owner[:, None].to(box.dtype), box], dim=1)
        label = self.clip2sam.embed(levels, rois, torch.cat(tokens))
        return OvSamOutput(torch.cat(logits), torch.cat(ious), owner, box, label)

    def mask_boxes(self, low_res_logits: torch.Tensor, group: SamPrompts) -> torch.Tensor:
        """Boxes (frame pixels) of the predicted masks, for point prompts; an empty mask keeps a box at its points."""
        masks = low_res_logits.detach() > 0
        scale = self.config.image_size / masks.shape[-1]
        boxes = []
        for index, mask in enumerate(masks):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if xs.numel():
                boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float() * scale)
            else:
                xy = group.point_coords[index].float()
                boxes.append(torch.cat([xy.min(0).values - scale, xy.max(0).values + scale]))
        return torch.stack(boxes)

    def forward(
        self,
        images: torch.Tensor,
        prompts: Sequence[SamPrompts] | None = None,
        multimask: bool = False,
        text_embeddings: torch.Tensor | None = None,
    ) -> OvSamForward:
        """The image embedding; with ``prompts`` the masks and label embeddings, scored against
        ``text_embeddings`` when given (one call, so that DDP sees every trained parameter in forward)."""
        embedding = self.embed(images)
        if prompts is None:
            return OvSamForward(embedding, None)
        masks = self.decode(embedding, prompts, multimask)
        if text_embeddings is not None:
            masks.class_logits = self.clip2sam.class_logits(masks.label_embeddings, text_embeddings)
        return OvSamForward(embedding, masks)

    @torch.no_grad()
    def text_embeddings(
        self, class_names: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)
    ) -> torch.Tensor:
        """[C, D] normalised CLIP text embeddings of the class names, averaged over the templates."""
        per_template = torch.stack(
            [self.clip.encode_text([t.format(c) for c in class_names]) for t in templates]
        )
        return torch.nn.functional.normalize(per_template.mean(0), dim=-1)

    @torch.no_grad()
    def clip_region_logits(
        self, embedding: OvSamEmbedding, output: OvSamOutput, text: torch.Tensor
    ) -> torch.Tensor:
        """The frozen CLIP's own scores of the recognised regions (RoIAlign on its last level + its pooling)."""
        rois = torch.cat([output.image_index[:, None].to(output.boxes.dtype), output.boxes], dim=1)
        regions = self.clip.region_embeddings(embedding.features[-1], rois, self.clip.strides[-1])
        return class_logits(regions, text, self.clip.logit_scale)

    def class_probabilities(
        self, embedding: OvSamEmbedding, output: OvSamOutput, text: torch.Tensor
    ) -> torch.Tensor:
        """Inference: CLIP2SAM's softmax fused with the frozen CLIP's by the weighted geometric mean."""
        learned = self.clip2sam.class_logits(output.label_embeddings, text)
        frozen = self.clip_region_logits(embedding, output, text)
        return fuse_class_probabilities(learned, frozen, self.config.clip_score_weight)


def load_sam_decoder(model: OvSamModel, checkpoint: str | Path) -> None:
    """SAM's prompt encoder and mask decoder from an official checkpoint (its image encoder is the SAM2CLIP teacher)."""
    state = read_sam_checkpoint(checkpoint)
    for part in ("prompt_encoder", "mask_decoder"):
        sub = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(f"{part}.")}
        try:
            getattr(model, part).load_state_dict(sub, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"SAM checkpoint {checkpoint}: its {part} does not fit {model.config.sam_model}: {error}"
            ) from error


def create_ovsam_model(
    name: str,
    sam_checkpoint: str | None = None,
    clip_pretrained: str | None = None,
    **overrides: object,
) -> OvSamModel:
    """The named OV-SAM (``OVSAM_CONFIGS``) with ``overrides``; CLIP from a tag/file, decoder from SAM's checkpoint."""
    model = OvSamModel(get_ovsam_config(name, **overrides), clip_pretrained=clip_pretrained)
    if sam_checkpoint is not None:
        load_sam_decoder(model, sam_checkpoint)
    return model


def create_ovsam_from_config(config: OvSamConfig) -> OvSamModel:
    return OvSamModel(config)
