"""OV-SAM stage 1, SAM2CLIP: the adapter on the frozen CLIP pyramid learns the frozen SAM encoder's embedding.

Units are images: each micro-batch's loss is the mean over its images of the per-pixel MSE between
SAM2CLIP's output and the SAM teacher's embedding of the same frame (OV-SAM eq. 2-3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from samclip.losses import EmbeddingDistillationLoss, valid_embedding_region
from samclip.models.ovsam import OvSamModel
from samclip.models.teachers import SamTeacher
from samclip.train.tasks.base import StreamLoss


class Sam2ClipTask:
    """OV-SAM student + frozen ``SamTeacher`` on D_SAM (the stream named ``sam``)."""

    def __init__(
        self,
        student: OvSamModel,
        sam_teacher: SamTeacher | None = None,
        distill_loss: EmbeddingDistillationLoss | None = None,
        distill_weight: float = 1.0,
    ) -> None:
        if (
            sam_teacher is not None
            and sam_teacher.config.prompt_embed_dim != student.sam_config.prompt_embed_dim
        ):
            raise ValueError(
                f"teacher.sam embeds in {sam_teacher.config.prompt_embed_dim} channels but the OV-SAM decoder "
                f"({student.config.sam_model}) expects {student.sam_config.prompt_embed_dim}"
            )
        self.student = student
        self.sam_teacher = sam_teacher
        self.distill_loss = distill_loss if distill_loss is not None else EmbeddingDistillationLoss()
        self.weights = {"sam": float(distill_weight)}
        self.term_streams = {"sam": "sam"}
        self.part_names: dict[str, tuple[str, ...]] = {"sam": ()}
        self.find_unused_parameters = False

    def to(self, device: torch.device) -> Sam2ClipTask:
        self.student.to(device)
        if self.sam_teacher is not None:
            self.sam_teacher.to(device)
        return self

    def train(self) -> None:
        self.student.train()

    def freeze_without_loss_path(self, streams: Sequence[str]) -> list[str]:
        """Nothing to freeze: the stage's trainable patterns name only parameters the loss reaches."""
        return []

    def split(self, stream: str, batch: Any, micro_batch_size: int) -> list[Any]:
        return list(
            zip(batch.images.split(micro_batch_size), batch.input_sizes.split(micro_batch_size), strict=True)
        )

    def num_units(self, stream: str, micro: Any) -> int:
        return int(micro[0].shape[0])

    def num_images(self, stream: str, micro: Any) -> int:
        return int(micro[0].shape[0])

    def loss(self, stream: str, student: Callable[..., Any], micro: Any) -> dict[str, StreamLoss]:
        if self.sam_teacher is None:
            raise ValueError(
                "the sam2clip stage uses the sam stream but no SAM teacher was built (teacher.sam)"
            )
        images, input_sizes = micro
        with torch.no_grad():
            target = self.sam_teacher.image_embeddings(images)
        embedding = student(images).embedding.image_embeddings
        config = self.student.config
        valid = valid_embedding_region(input_sizes, config.grid_size, config.patch_size)
        return {"sam": StreamLoss(self.distill_loss(embedding, target, valid), {})}
