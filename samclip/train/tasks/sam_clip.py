"""SAM-CLIP as Python code: the two-term distillation task (``clip``: L_clip on D_CLIP, ``sam``: L_sam on D_SAM).

The configs build the same task from ``configs/task/sam_clip.yaml``'s term list; this constructor keeps
the paper's arguments for code that builds the task by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from samclip.models import SamClipModel
from samclip.models.teachers import ClipTeacher, FrozenTeacher, SamTeacher
from samclip.train.tasks.distill import DistillationTask
from samclip.train.tasks.terms import SAM_OUTPUTS, EmbeddingTerm, MaskTerm

__all__ = ["SAM_OUTPUTS", "SamClipTask"]


class SamClipTask(DistillationTask):
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
        sam_outputs: str = "single",
        cached_streams: Sequence[str] = (),
    ) -> None:
        """``cached_streams``: streams whose batches carry the teacher's cached image outputs
        (``teacher_embeds``): no CLIP teacher is needed for ``clip``; the SAM teacher of ``sam`` needs only
        its prompt encoder and mask decoder."""
        terms = {
            "clip": EmbeddingTerm("clip", stream="clip", weight=clip_weight, teacher=clip_teacher, loss=clip_loss),
            "sam": MaskTerm(
                "sam", stream="sam", weight=sam_weight, teacher=sam_teacher, loss=sam_loss, outputs=sam_outputs
            ),
        }
        super().__init__(student, terms, cached_terms={stream: stream for stream in cached_streams})

    @property
    def clip_teacher(self) -> FrozenTeacher | None:
        return self.teachers["clip"]

    @property
    def sam_teacher(self) -> FrozenTeacher | None:
        return self.teachers["sam"]
