"""Open-Vocabulary SAM for users: prompts in image pixels -> masks, IoU scores and class labels with probabilities.

``samclip.load(path)`` returns an :class:`OpenVocabularySam` for an OV-SAM ``final.pt`` or export; its
``segment(image, boxes=..., points=..., labels=[...])`` recognises each mask among ``labels`` by the
CLIP2SAM scores fused with the frozen CLIP's (geometric mean), as at the paper's inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samclip.data.transforms import ImageLike, to_uint8_array
from samclip.models.final_checkpoint import ClipTeacherSpec, save_final_checkpoint
from samclip.models.ovsam import OvSamConfig, OvSamEmbedding, OvSamModel
from samclip.models.preprocess import (
    SAM_PAD_VALUE,
    pad_to_square,
    resized_longest_side_shape,
    upscale_mask_logits,
)
from samclip.models.prompts import SamPrompts

# An OV-SAM export directory holds this file (the final.pt format; it carries its whole CLIP).
OVSAM_EXPORT_FILE = "ovsam.pt"


class LabelledSegmentation(NamedTuple):
    masks: torch.Tensor  # [N, H, W] bool at the image's size
    scores: torch.Tensor  # [N] predicted IoU
    labels: list[str]  # [N] the most probable of the given labels ([] without labels)
    label_scores: torch.Tensor  # [N] that label's probability
    probs: torch.Tensor  # [N, C] fused class probabilities over the given labels
    logits: torch.Tensor  # [N, 1, 4h, 4w] low-resolution mask logits


class ImageFrame(NamedTuple):
    embedding: OvSamEmbedding
    input_size: tuple[int, int]
    original_size: tuple[int, int]


class OpenVocabularySam(nn.Module):
    def __init__(self, model: OvSamModel, templates: Sequence[str] = ("a photo of a {}.",)) -> None:
        super().__init__()
        self.ovsam = model
        self.templates = tuple(templates)
        self.source: dict[str, object] = {}  # where it was loaded from (path, stage, step), for provenance
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    @property
    def config(self) -> OvSamConfig:
        return self.ovsam.config

    @property
    def model(self) -> OpenVocabularySam:
        """The box-prompted evaluators call ``model.model.embed_image`` / ``.segment`` (as on SAM-CLIP's model)."""
        return self

    @property
    def device(self) -> torch.device:
        return next(self.ovsam.parameters()).device

    def text_embeddings(self, labels: Sequence[str]) -> torch.Tensor:
        key = tuple(labels)
        if key not in self._text:
            self._text[key] = self.ovsam.text_embeddings(key, self.templates)
        return self._text[key]

    @torch.no_grad()
    def embed_image(self, image: ImageLike | ImageFrame) -> ImageFrame:
        if isinstance(image, ImageFrame):
            return image
        array = to_uint8_array(image)
        height, width = array.shape[:2]
        size = self.config.image_size
        h, w = resized_longest_side_shape(height, width, size)
        pixels = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)[None].float().div(255.0)
        pixels = F.interpolate(pixels, (h, w), mode="bilinear", antialias=True, align_corners=False).clamp(
            0, 1
        )
        frame = pad_to_square(pixels, size, SAM_PAD_VALUE).to(self.device)
        return ImageFrame(self.ovsam.embed(frame), (h, w), (height, width))

    @torch.no_grad()
    def segment(
        self,
        image: ImageLike | ImageFrame,
        boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
        points: np.ndarray | Sequence[Sequence[float]] | None = None,
        point_labels: np.ndarray | Sequence[int] | None = None,
        labels: Sequence[str] | None = None,
        multimask: bool = False,
    ) -> LabelledSegmentation:
        """One mask per box ``[N, 4]`` (xyxy) or per point set ``[N, P, 2]`` / ``[P, 2]`` (xy), in image pixels."""
        if (boxes is None) == (points is None):
            raise ValueError("segment needs boxes or points (one of them)")
        frame = self.embed_image(image)
        scale = frame.input_size[0] / frame.original_size[0]
        if boxes is not None:
            tensor = torch.as_tensor(
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale, device=self.device
            )
            prompts = SamPrompts(0, boxes=tensor)
        else:
            array = np.asarray(points, dtype=np.float32)
            array = array[None] if array.ndim == 2 else array
            coords = torch.as_tensor(array * scale, device=self.device)
            kinds = (
                np.ones(array.shape[:2])
                if point_labels is None
                else np.asarray(point_labels).reshape(array.shape[:2])
            )
            prompts = SamPrompts(
                0,
                point_coords=coords,
                point_labels=torch.as_tensor(kinds, dtype=torch.int, device=self.device),
            )
        output = self.ovsam.decode(frame.embedding, [prompts], multimask)
        masks = (
            upscale_mask_logits(
                output.low_res_logits, self.config.image_size, frame.input_size, frame.original_size
            )
            > 0
        )
        if not labels:
            count = masks.shape[0]
            return LabelledSegmentation(
                masks[:, 0],
                output.iou_predictions[:, 0],
                [],
                torch.zeros(count),
                torch.zeros(count, 0),
                output.low_res_logits,
            )
        probs = self.ovsam.class_probabilities(frame.embedding, output, self.text_embeddings(labels))
        best = probs.argmax(-1)
        return LabelledSegmentation(
            masks[:, 0],
            output.iou_predictions[:, 0],
            [labels[int(i)] for i in best],
            probs.gather(1, best[:, None])[:, 0],
            probs,
            output.low_res_logits,
        )

    def save_pretrained(self, directory: str | Path) -> Path:
        """``DIR/ovsam.pt`` in the final.pt format: self-contained (the CLIP tower, text included), read by ``load``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        spec = ClipTeacherSpec(self.config.clip_model_name, None)
        save_final_checkpoint(directory / OVSAM_EXPORT_FILE, self.ovsam, spec, "export", 0)
        return directory
