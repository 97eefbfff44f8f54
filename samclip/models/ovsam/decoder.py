"""SAM's mask decoder with CLIP2SAM's label token appended to its IoU and mask tokens (paper, §3.2)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from segment_anything.modeling import MaskDecoder


class LabelledMasks(NamedTuple):
    low_res_logits: torch.Tensor  # [N, K, 4h, 4w]
    iou_predictions: torch.Tensor  # [N, K]
    label_tokens: torch.Tensor | None  # [N, C] the label token after the two-way transformer


def decode_with_label_token(
    decoder: MaskDecoder,
    label_token: torch.Tensor | None,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    multimask: bool,
) -> LabelledMasks:
    """``MaskDecoder.forward`` with one more output token; without ``label_token`` it *is* that forward.

    segment_anything's decoder returns no token outputs, so its ``predict_masks`` is spelled out here
    with the decoder's own modules (the same transformer, upscaling, hypernetwork MLPs and IoU head).
    """
    tokens = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if label_token is not None:
        tokens.append(label_token.view(1, -1))
    output_tokens = torch.cat(tokens, dim=0).unsqueeze(0).expand(sparse_prompt_embeddings.shape[0], -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
    src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0) + dense_prompt_embeddings
    pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    num_masks = decoder.num_mask_tokens
    mask_tokens_out = hs[:, 1 : 1 + num_masks, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])
    chosen = slice(1, None) if multimask else slice(0, 1)
    label_out = hs[:, 1 + num_masks, :] if label_token is not None else None
    return LabelledMasks(masks[:, chosen], iou_pred[:, chosen], label_out)
