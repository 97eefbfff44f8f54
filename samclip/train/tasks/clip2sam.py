"""OV-SAM stage 2, CLIP2SAM: SAM's decoder with the label token and the recognition head learn to segment and name.

Units are GT instances (one per prompt): each micro-batch's loss is the mean over its prompts of
``cls_weight·CE(class) + mask_ce_weight·BCE(mask) + dice_weight·dice(mask)`` (the paper's
L = λ_cls L_cls + λ_ce L_ce + λ_dice L_dice; its λ are not stated, ours are Mask2Former's 2 : 5 : 5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from samclip.data.instances import InstanceBatch, InstanceTargets
from samclip.losses import dice_loss_per_mask
from samclip.models.ovsam import OvSamModel
from samclip.models.prompts import SamPrompts
from samclip.train.tasks.base import StreamLoss

InstanceMicroBatch = tuple[torch.Tensor, list[SamPrompts], list[InstanceTargets], tuple[str, ...]]


def split_instances(batch: InstanceBatch, micro_batch_size: int) -> list[InstanceMicroBatch]:
    """Chunks of images with their prompt groups (re-indexed) and the groups' targets."""
    micro = []
    for start in range(0, batch.images.shape[0], micro_batch_size):
        stop = min(start + micro_batch_size, batch.images.shape[0])
        kept = [
            (p, t) for p, t in zip(batch.prompts, batch.targets, strict=True) if start <= p.image_index < stop
        ]
        if kept:
            prompts = [replace(p, image_index=p.image_index - start) for p, _ in kept]
            micro.append((batch.images[start:stop], prompts, [t for _, t in kept], batch.class_names))
    return micro


class Clip2SamTask:
    """OV-SAM student on COCO/LVIS instances (the stream named ``instances``); CLIP, SAM2CLIP, prompts frozen."""

    def __init__(
        self,
        student: OvSamModel,
        templates: Sequence[str] = ("a photo of a {}.",),
        cls_weight: float = 2.0,
        mask_ce_weight: float = 5.0,
        dice_weight: float = 5.0,
        loss_weight: float = 1.0,
    ) -> None:
        self.student = student
        self.templates = tuple(templates)
        self.part_weights = {
            "cls": float(cls_weight),
            "mask_ce": float(mask_ce_weight),
            "dice": float(dice_weight),
        }
        self.weights = {"instances": float(loss_weight)}
        self.term_streams = {"instances": "instances"}
        self.part_names = {"instances": ("cls", "mask_ce", "dice", "accuracy")}
        # Every trainable parameter gets a gradient (stage clip2sam leaves the decoder's IoU head frozen).
        self.find_unused_parameters = False
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    def to(self, device: torch.device) -> Clip2SamTask:
        self.student.to(device)
        self._text.clear()
        return self

    def train(self) -> None:
        self.student.train()

    def freeze_without_loss_path(self, streams: Sequence[str]) -> list[str]:
        """Nothing to freeze: the stage's trainable patterns name only parameters the loss reaches."""
        return []

    def text_embeddings(self, class_names: tuple[str, ...]) -> torch.Tensor:
        """The frozen CLIP text embeddings of the training vocabulary, computed once."""
        if class_names not in self._text:
            self._text[class_names] = self.student.text_embeddings(class_names, self.templates)
        return self._text[class_names]

    def split(self, stream: str, batch: Any, micro_batch_size: int) -> list[Any]:
        return split_instances(batch, micro_batch_size)

    def num_units(self, stream: str, micro: Any) -> int:
        return sum(group.num_prompts for group in micro[1])

    def num_images(self, stream: str, micro: Any) -> int:
        return int(micro[0].shape[0])

    def loss(self, stream: str, student: Callable[..., Any], micro: Any) -> dict[str, StreamLoss]:
        images, prompts, targets, class_names = micro
        output = student(images, prompts, text_embeddings=self.text_embeddings(class_names)).masks
        masks = torch.cat([t.masks for t in targets])
        labels = torch.cat([t.labels for t in targets])
        logits = output.low_res_logits[:, 0].float()
        cls = F.cross_entropy(output.class_logits.float(), labels, reduction="none")
        mask_ce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none").flatten(1).mean(1)
        dice = dice_loss_per_mask(logits, masks)
        w = self.part_weights
        total = (w["cls"] * cls + w["mask_ce"] * mask_ce + w["dice"] * dice).mean()
        accuracy = (output.class_logits.argmax(-1) == labels).float().mean()
        parts = {"cls": cls.mean(), "mask_ce": mask_ce.mean(), "dice": dice.mean(), "accuracy": accuracy}
        return {"instances": StreamLoss(total, parts)}
