"""The distillation task: the student, its frozen teachers and the two losses (SAM-CLIP eq. 1-3).

This is the one place that knows the teacher/student contract: teachers are frozen, in eval mode
and run under ``no_grad``; the student sees the same images (and, for SAM, the same prompts); each
loss is a mean over its units (images for L_clip, masks for L_sam).

A trainable parameter that no loss reaches (the hypernetwork MLPs of mask outputs that are not
distilled, the IoU head when the scores are not, the mask-input encoder when no mask prompt is
sampled) would still be shrunk by AdamW's decoupled weight decay, since a slice of the decoder's
output hands it an exactly-zero gradient rather than none. :meth:`SamClipTask.freeze_without_loss_path`
finds them with one probe backward and freezes them, so they stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from samclip.losses import CosineDistillationLoss, MaskDistillationLoss, MaskLoss
from samclip.models import SamClipModel, SamClipOutput, SamPrompts
from samclip.models.sam_head import SamHeadOutput
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.train.step import split_clip, split_sam
from samclip.train.tasks.base import StreamLoss

StudentForward = Callable[..., SamClipOutput]
SAM_OUTPUTS = ("single", "all")
CACHEABLE_STREAMS = ("clip", "sam")  # streams whose batches may carry cached teacher outputs


class SamClipTask:
    """Student + frozen ``ClipTeacher`` / ``SamTeacher`` + ``L = clip_weight·L_clip + sam_weight·L_sam``."""

    cacheable_streams = CACHEABLE_STREAMS

    def __init__(
        self,
        student: SamClipModel,
        clip_teacher: ClipTeacher | None = None,
        sam_teacher: SamTeacher | None = None,
        clip_loss: nn.Module | None = None,
        sam_loss: nn.Module | None = None,
        clip_weight: float = 1.0,
        sam_weight: float = 10.0,
        sam_outputs: str = "single",
        cached_streams: Sequence[str] = (),
    ) -> None:
        """``sam_outputs``: ``single`` distils SAM's single-mask output (SAM-CLIP); ``all`` distils all four
        mask outputs and the IoU predictions (EdgeSAM-style), keeping ``multimask`` and scores calibrated.

        ``cached_streams``: streams whose batches carry the teacher's cached image outputs
        (``teacher_embeds``): no CLIP teacher is needed for ``clip``; the SAM teacher of ``sam`` needs only
        its prompt encoder and mask decoder. A batch with ``teacher_embeds`` always uses them."""
        if sam_outputs not in SAM_OUTPUTS:
            raise ValueError(f"loss.sam_outputs must be one of {SAM_OUTPUTS}, got {sam_outputs!r}")
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
        self.sam_outputs = sam_outputs
        self.part_names = {"clip": (), "sam": ("focal", "dice")}
        self.cached_streams = tuple(cached_streams)
        # Only multitask mixes streams; there each head is unused in the other stream's micro-batches.
        self.find_unused_parameters = (
            clip_teacher is not None or "clip" in self.cached_streams
        ) and sam_teacher is not None

    def to(self, device: torch.device) -> SamClipTask:
        for module in (self.student, self.clip_teacher, self.sam_teacher):
            if module is not None:
                module.to(device)
        return self

    def train(self) -> None:
        """Student in train mode; teachers stay in eval mode (their ``train`` is a no-op)."""
        self.student.train()

    def split(self, stream: str, batch: Any, micro_batch_size: int) -> list[Any]:
        """D_CLIP: chunks of images; D_SAM: chunks of images with their prompt groups re-indexed.

        With cached teacher outputs a chunk also carries its slice of them: (images, embeds) for D_CLIP,
        (images, prompts, embeds) for D_SAM.
        """
        embeds = getattr(batch, "teacher_embeds", None)
        if stream == "clip":
            chunks = split_clip(batch.images, micro_batch_size)
            if embeds is None:
                return chunks
            return list(zip(chunks, split_clip(embeds, micro_batch_size), strict=True))
        chunks = split_sam(batch.images, batch.prompts, micro_batch_size)
        if embeds is None:
            return chunks
        cached = split_sam(embeds, batch.prompts, micro_batch_size)
        return [(images, groups, e) for (images, groups), (e, _) in zip(chunks, cached, strict=True)]

    def num_units(self, stream: str, micro: Any) -> int:
        """Images for L_clip, masks (prompts) for L_sam."""
        if stream == "clip":
            return _clip_images(micro).shape[0]
        return sum(group.num_prompts for group in micro[1])

    def num_images(self, stream: str, micro: Any) -> int:
        return _clip_images(micro).shape[0] if stream == "clip" else micro[0].shape[0]

    def loss(self, stream: str, student: StudentForward, micro: Any) -> StreamLoss:
        if stream == "clip":
            if isinstance(micro, tuple):
                return StreamLoss(self.clip_loss(student, *micro), {})
            return StreamLoss(self.clip_loss(student, micro), {})
        mask_loss = self.sam_loss(student, *micro)
        return StreamLoss(mask_loss.total, {"focal": mask_loss.focal, "dice": mask_loss.dice})

    def clip_loss(
        self, student: StudentForward, images: torch.Tensor, cached: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L_clip on one micro-batch: mean over its images of ``1 - cos(student, teacher)``.

        ``cached``: the teacher's embeddings of these views from a teacher cache (the teacher does not run).
        """
        if cached is not None:
            target = cached
        elif self.clip_teacher is None:
            raise ValueError(
                "this stage uses the clip stream but no CLIP teacher was built (teacher.clip)"
                + (" and its batch carries no cached embeddings" if "clip" in self.cached_streams else "")
            )
        else:
            with torch.no_grad():
                target = self.clip_teacher.encode_image(images)
        embeds = student(images, None, clip=True).clip.image_embeds
        return self.clip_loss_fn(embeds, target)

    def sam_loss(
        self,
        student: StudentForward,
        images: torch.Tensor,
        prompts: Sequence[SamPrompts],
        cached: torch.Tensor | None = None,
    ) -> MaskLoss:
        """L_sam on one micro-batch: focal + dice per mask against the SAM teacher, for the same prompts.

        ``cached``: the teacher's image embeddings from a teacher cache; only its decoder runs.
        """
        if self.sam_teacher is None:
            raise ValueError("this stage uses the sam stream but no SAM teacher was built (teacher.sam)")
        all_outputs = self.sam_outputs == "all"
        with torch.no_grad():
            if cached is not None:
                target = self.sam_teacher.decode(cached, prompts, all_outputs=all_outputs)
            else:
                target = self.sam_teacher(images, prompts, all_outputs=all_outputs)
        output = student(images, list(prompts), clip=False, all_outputs=all_outputs).sam
        return self._sam_objective(output, target)

    def _sam_objective(self, student: SamHeadOutput, teacher: SamHeadOutput) -> MaskLoss:
        if self.sam_outputs == "all":
            return self.sam_loss_fn(
                student.low_res_logits,
                teacher.low_res_logits,
                student.iou_predictions,
                teacher.iou_predictions,
            )
        return self.sam_loss_fn(student.low_res_logits, teacher.low_res_logits)

    def freeze_without_loss_path(self, streams: Sequence[str]) -> list[str]:
        """Freeze the trainable student parameters that no loss of ``streams`` reaches; their names.

        One probe backward of each stream's objective on random inputs (random targets in place of the
        teachers'): a parameter whose gradient is missing or exactly zero has no loss path. The SAM probe
        uses the prompt kinds D_SAM samples (a box group and a foreground-point group, no mask inputs;
        ``samclip.data.prompts_sampling``). The student is left in its mode, its gradients cleared.
        """
        student, config = self.student, self.student.config
        trainable = {name: p for name, p in student.named_parameters() if p.requires_grad}
        if not trainable:
            return []
        device = next(iter(trainable.values())).device
        generator = torch.Generator(device="cpu").manual_seed(0)

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator).to(device)

        was_training = student.training
        student.eval()  # no dropout / drop-path draws from the global RNG
        student.zero_grad(set_to_none=True)
        try:
            if "clip" in streams:
                side = 4 * config.patch_size
                embeds = student(rand(2, 3, side, side), None, clip=True).clip.image_embeds
                self.clip_loss_fn(embeds, rand(*embeds.shape) - 0.5).backward()
            if "sam" in streams:
                frame = config.image_size
                corner = rand(2, 2) * frame / 2
                prompts = [
                    SamPrompts(0, boxes=torch.cat([corner, corner + frame / 4], dim=1)),
                    SamPrompts(
                        0,
                        point_coords=rand(2, 2, 2) * frame,
                        point_labels=torch.ones(2, 2, dtype=torch.int64, device=device),
                    ),
                ]
                output = student(
                    rand(1, 3, frame, frame), prompts, clip=False, all_outputs=self.sam_outputs == "all"
                ).sam
                target = SamHeadOutput(
                    rand(*output.low_res_logits.shape) * 8 - 4,
                    rand(*output.iou_predictions.shape),
                    output.image_index,
                )
                self._sam_objective(output, target).total.backward()
            unreached = [name for name, p in trainable.items() if p.grad is None or not p.grad.any()]
        finally:
            student.zero_grad(set_to_none=True)
            student.train(was_training)
        for name in unreached:
            trainable[name].requires_grad_(False)
        return unreached


def _clip_images(micro: Any) -> torch.Tensor:
    return micro[0] if isinstance(micro, tuple) else micro
