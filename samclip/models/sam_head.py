"""SAM's prompt encoder + mask decoder, batched over several images that each carry many prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from samclip.models.config import SamClipConfig
from samclip.models.prompts import SamPrompts


class SamHeadOutput(NamedTuple):
    low_res_logits: torch.Tensor  # [M, K, 4h, 4w] for all M prompts of the batch, in prompt-group order
    iou_predictions: torch.Tensor  # [M, K]
    image_index: torch.Tensor  # [M] which image of the batch each prompt belongs to


def build_prompt_encoder(config: SamClipConfig) -> PromptEncoder:
    grid = config.grid_size
    return PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=config.mask_in_chans,
    )


def build_mask_decoder(config: SamClipConfig) -> MaskDecoder:
    return MaskDecoder(
        num_multimask_outputs=config.num_multimask_outputs,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.prompt_embed_dim,
            mlp_dim=config.decoder_mlp_dim,
            num_heads=config.decoder_num_heads,
        ),
        transformer_dim=config.prompt_embed_dim,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )


def decode_masks(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    prompts: Sequence[SamPrompts],
    multimask: bool,
    all_outputs: bool = False,
) -> SamHeadOutput:
    """Run SAM's decoder for every prompt group against its image's embedding.

    ``multimask`` picks SAM's outputs as ``SamPredictor`` does (the three multimask outputs, or the
    single-mask one); ``all_outputs`` returns all four, single-mask first (for distilling every output).

    segment_anything's ``MaskDecoder`` takes one image embedding per call (it repeats it over the
    prompts), so groups are decoded one by one, exactly as ``Sam.forward`` does per image. Student
    and teacher share this function, so both see the same prompts the same way.
    """
    if not prompts:
        raise ValueError("decode_masks needs at least one prompt group")
    dense_pe = prompt_encoder.get_dense_pe()
    logits, ious, owners = [], [], []
    for group in prompts:
        if not 0 <= group.image_index < image_embeddings.shape[0]:
            raise ValueError(
                f"prompt group refers to image {group.image_index} of a batch of {image_embeddings.shape[0]}"
            )
        points = None if group.point_coords is None else (group.point_coords, group.point_labels)
        sparse, dense = prompt_encoder(points=points, boxes=group.boxes, masks=group.mask_inputs)
        decoder_inputs = {
            "image_embeddings": image_embeddings[group.image_index : group.image_index + 1],
            "image_pe": dense_pe,
            "sparse_prompt_embeddings": sparse,
            "dense_prompt_embeddings": dense,
        }
        if all_outputs:
            group_logits, group_ious = mask_decoder.predict_masks(**decoder_inputs)
        else:
            group_logits, group_ious = mask_decoder(**decoder_inputs, multimask_output=multimask)
        logits.append(group_logits)
        ious.append(group_ious)
        owners.append(
            torch.full(
                (group.num_prompts,), group.image_index, dtype=torch.long, device=image_embeddings.device
            )
        )
    return SamHeadOutput(torch.cat(logits), torch.cat(ious), torch.cat(owners))


class SamHead(nn.Module):
    """The SAM head of SAM-CLIP: initialised from (and shaped like) SAM's prompt encoder and mask decoder."""

    def __init__(self, config: SamClipConfig) -> None:
        super().__init__()
        self.prompt_encoder = build_prompt_encoder(config)
        self.mask_decoder = build_mask_decoder(config)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        prompts: Sequence[SamPrompts],
        multimask: bool = False,
        all_outputs: bool = False,
    ) -> SamHeadOutput:
        return decode_masks(
            self.prompt_encoder, self.mask_decoder, image_embeddings, prompts, multimask, all_outputs
        )
