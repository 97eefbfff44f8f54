"""The merged SAM-CLIP model: one SAM backbone, a CLIP head and a SAM head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from samclip.models.adaptor_head import AdaptorHead, AdaptorOutput
from samclip.models.backbone import BackboneFeatures, SamBackbone
from samclip.models.clip_head import ClipHead, ClipHeadOutput
from samclip.models.config import SamClipConfig
from samclip.models.preprocess import normalize_sam, pad_to_square, upscale_mask_logits
from samclip.models.prompts import SamPrompts
from samclip.models.sam_head import SamHead, SamHeadOutput


class SamClipOutput(NamedTuple):
    clip: ClipHeadOutput | None
    sam: SamHeadOutput | None
    heads: dict[str, AdaptorOutput] | None = None  # the adaptor heads asked for, by name


class ImageEmbedding(NamedTuple):
    """One image encoded in SAM's frame; serves both heads without re-running the backbone."""

    features: BackboneFeatures  # batch of one
    input_size: tuple[int, int]  # (h, w) of the resized image inside the square frame
    original_size: tuple[int, int]  # (H, W) of the image as given


class Segmentation(NamedTuple):
    masks: torch.Tensor  # [N, H, W] bool at the input image's size ([N, K, H, W] with multimask)
    scores: torch.Tensor  # [N] predicted IoU ([N, K] with multimask)
    logits: torch.Tensor  # [N, K, 4h, 4w] low-resolution logits, usable as the next mask_input


class SamClipModel(nn.Module):
    """SAM-CLIP: ``Head_CLIP(Enc(x))`` gives CLIP embeddings, ``Head_SAM(Enc(x), prompts)`` gives masks.

    Images arrive as float in [0, 1]; the model applies SAM's normalisation itself.
    """

    def __init__(self, config: SamClipConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = SamBackbone(config)
        self.clip_head = ClipHead.from_backbone_block(
            self.backbone.blocks[-1],
            depth=config.clip_head_depth,
            width=config.embed_dim,
            hidden_dim=config.clip_hidden_dim,
            out_dim=config.clip_embed_dim,
        )
        self.sam_head = SamHead(config)
        # One adaptor per extra teacher (DINOv2, ...), on the backbone's tokens as the CLIP head.
        self.adaptors = nn.ModuleDict(
            {name: AdaptorHead(config.embed_dim, width) for name, width in config.adaptors}
        )

    def init_clip_head_from_backbone(self) -> None:
        """Copy the backbone's last block into every CLIP head block (after loading SAM weights)."""
        last = self.backbone.blocks[-1].state_dict()
        for block in self.clip_head.blocks:
            block.load_state_dict(last)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)
        self.clip_head.grad_checkpointing = enable

    def forward_features(self, images: torch.Tensor, with_neck: bool = True) -> BackboneFeatures:
        return self.backbone(normalize_sam(images), with_neck=with_neck)

    def forward(
        self,
        images: torch.Tensor,
        sam_prompts: Sequence[SamPrompts] | None = None,
        *,
        clip: bool = True,
        dense: bool = False,
        multimask: bool = False,
        all_outputs: bool = False,
        heads: Sequence[str] = (),
    ) -> SamClipOutput:
        """One backbone pass feeding the CLIP head (``clip``), the SAM head (when prompts are given) and
        the adaptor heads named in ``heads``.

        SAM prompts are in the pixel frame of ``images``, which for the SAM head must be the
        square ``config.image_size`` frame (SAM's resize-longest-side and pad). ``all_outputs`` returns
        all four of SAM's mask outputs (single-mask first) instead of the ``multimask`` selection.
        """
        features = self.forward_features(images, with_neck=sam_prompts is not None)
        clip_out = self.clip_head(features.tokens, dense=dense) if clip else None
        sam_out = (
            self.sam_head(features.neck, sam_prompts, multimask, all_outputs)
            if sam_prompts is not None
            else None
        )
        adaptors = {name: self.adaptors[name](features.tokens) for name in heads} if heads else None
        return SamClipOutput(clip=clip_out, sam=sam_out, heads=adaptors)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """CLIP image embeddings [B, D] for float images in [0, 1] of any size that is a multiple of 16."""
        embeds = self.clip_head(
            self.forward_features(images, with_neck=False).tokens, dense=False
        ).image_embeds
        return F.normalize(embeds, dim=-1) if normalize else embeds

    @torch.no_grad()
    def embed_image(self, image: np.ndarray | torch.Tensor) -> ImageEmbedding:
        """SAM's preprocessing of an HxWx3 uint8 image (resize longest side, normalise, pad), then the backbone."""
        array = _as_uint8_image(image)
        frame = self.config.image_size
        resized = ResizeLongestSide(frame).apply_image(array)
        device = next(self.parameters()).device
        pixels = torch.from_numpy(resized).to(device).permute(2, 0, 1)[None].float() / 255.0
        features = self.forward_features(pad_to_square(pixels, frame))
        return ImageEmbedding(features, tuple(resized.shape[:2]), tuple(array.shape[:2]))

    @torch.no_grad()
    def segment(
        self,
        image: np.ndarray | torch.Tensor | ImageEmbedding,
        boxes: np.ndarray | torch.Tensor | None = None,
        points: np.ndarray | torch.Tensor | None = None,
        point_labels: np.ndarray | torch.Tensor | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Segmentation:
        """Masks for N prompts on one image, in the image's own pixel coordinates (``SamPredictor`` semantics).

        ``boxes`` [N, 4] or [4] xyxy; ``points`` [N, P, 2] or [P, 2] xy with ``point_labels`` (1 foreground,
        0 background); ``mask_input`` [N, 1, 256, 256] low-res logits from an earlier call.
        """
        embedding = image if isinstance(image, ImageEmbedding) else self.embed_image(image)
        transform = ResizeLongestSide(self.config.image_size)
        device = embedding.features.neck.device
        box_tensor = point_tensor = label_tensor = mask_tensor = None
        if boxes is not None:
            box_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            box_tensor = torch.as_tensor(
                transform.apply_boxes(box_array, embedding.original_size), dtype=torch.float, device=device
            )
        if points is not None:
            if point_labels is None:
                raise ValueError("points need point_labels (1 for foreground, 0 for background)")
            point_array = np.asarray(points, dtype=np.float64)
            point_array = point_array[None] if point_array.ndim == 2 else point_array
            coords = transform.apply_coords(point_array, embedding.original_size)
            point_tensor = torch.as_tensor(coords, dtype=torch.float, device=device)
            label_tensor = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=device)
            label_tensor = label_tensor.reshape(point_tensor.shape[:2])
        if mask_input is not None:
            mask_tensor = torch.as_tensor(np.asarray(mask_input), dtype=torch.float, device=device)
            mask_tensor = mask_tensor.reshape(-1, 1, *mask_tensor.shape[-2:])
        prompts = SamPrompts(
            0, boxes=box_tensor, point_coords=point_tensor, point_labels=label_tensor, mask_inputs=mask_tensor
        )
        head = self.sam_head(embedding.features.neck, [prompts], multimask=multimask)
        logits = upscale_mask_logits(
            head.low_res_logits, self.config.image_size, embedding.input_size, embedding.original_size
        )
        masks, scores = logits > 0.0, head.iou_predictions
        if not multimask:
            masks, scores = masks[:, 0], scores[:, 0]
        return Segmentation(masks=masks, scores=scores, logits=head.low_res_logits)


def _as_uint8_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0..255), got dtype {array.dtype}")
    return array
