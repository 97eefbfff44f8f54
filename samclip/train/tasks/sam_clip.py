"""The distillation task: the student, its frozen teachers and the two losses (SAM-CLIP eq. 1-3).

This is the one place that knows the teacher/student contract: teachers are frozen, in eval mode
and run under ``no_grad``; the student sees the same images (and, for SAM, the same prompts); each
loss is a mean over its units (images for L_clip, masks for L_sam).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from samclip.losses import CosineDistillationLoss, MaskDistillationLoss, MaskLoss
from samclip.models import SamClipModel, SamClipOutput, SamPrompts
from samclip.models.teachers import ClipTeacher, SamTeacher

StudentForward = Callable[..., SamClipOutput]


class SamClipTask:
    """Student + frozen ``ClipTeacher`` / ``SamTeacher`` + ``L = clip_weight·L_clip + sam_weight·L_sam``."""

    def __init__(
        self,
        student: SamClipModel,
        clip_teacher: ClipTeacher | None = None,
        sam_teacher: SamTeacher | None = None,
        clip_loss: nn.Module | None = None,
        sam_loss: nn.Module | None = None,
        clip_weight: float = 1.0,
        sam_weight: float = 10.0,
    ) -> None:
        if clip_teacher is not None and clip_teacher.embed_dim != student.config.clip_embed_dim:
            raise ValueError(
                f"the CLIP teacher {clip_teacher.model_name} embeds in {clip_teacher.embed_dim} dimensions but "
                f"the student's CLIP head has clip_embed_dim={student.config.clip_embed_dim}"
            )
        self.student = student
        self.clip_teacher = clip_teacher
        self.sam_teacher = sam_teacher
        self.clip_loss_fn = clip_loss if clip_loss is not None else CosineDistillationLoss()
        self.sam_loss_fn = sam_loss if sam_loss is not None else MaskDistillationLoss()
        self.weights = {"clip": float(clip_weight), "sam": float(sam_weight)}

    def to(self, device: torch.device) -> SamClipTask:
        for module in (self.student, self.clip_teacher, self.sam_teacher):
            if module is not None:
                module.to(device)
        return self

    def train(self) -> None:
        """Student in train mode; teachers stay in eval mode (their ``train`` is a no-op)."""
        self.student.train()

    def clip_loss(self, student: StudentForward, images: torch.Tensor) -> torch.Tensor:
        """L_clip on one micro-batch: mean over its images of ``1 - cos(student, teacher)``."""
        if self.clip_teacher is None:
            raise ValueError("this stage uses the clip stream but no CLIP teacher was built (teacher.clip)")
        with torch.no_grad():
            target = self.clip_teacher.encode_image(images)
        embeds = student(images, None, clip=True).clip.image_embeds
        return self.clip_loss_fn(embeds, target)

    def sam_loss(
        self, student: StudentForward, images: torch.Tensor, prompts: Sequence[SamPrompts]
    ) -> MaskLoss:
        """L_sam on one micro-batch: focal + dice per mask against the SAM teacher, for the same prompts."""
        if self.sam_teacher is None:
            raise ValueError("this stage uses the sam stream but no SAM teacher was built (teacher.sam)")
        with torch.no_grad():
            target = self.sam_teacher(images, prompts, multimask=False).low_res_logits
        logits = student(images, list(prompts), clip=False).sam.low_res_logits
        return self.sam_loss_fn(logits, target)
