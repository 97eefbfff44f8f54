"""Distillation terms: one teacher, the student output it supervises, a loss and a weight, on one stream.

A task is a list of terms (:class:`samclip.train.tasks.distill.DistillationTask`). Each term says what it
needs of the student's forward (:class:`StudentRequest`), computes its teacher's target for a micro-batch
(under ``no_grad``; from a teacher cache when the micro-batch carries one) and its loss, a mean over the
stream's units. Term kinds are registered by name in :data:`TERM_KINDS`; SAM-CLIP is ``embedding`` (L_clip)
plus ``masks`` (L_sam). The dense-feature kind (DINOv2) lives in :mod:`samclip.train.tasks.dense_term`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from samclip.losses import CosineDistillationLoss, MaskDistillationLoss
from samclip.models import SamClipModel, SamClipOutput, SamPrompts
from samclip.models.sam_head import SamHeadOutput
from samclip.models.teachers import FrozenTeacher
from samclip.train.tasks.base import StreamLoss
from samclip.train.tasks.registry import Registry
from samclip.train.tasks.streams import Micro

CLIP_HEAD = "clip"  # the student's own CLIP head; any other head name is one of its adaptors
SAM_OUTPUTS = ("single", "all")
RandomTensor = Callable[..., torch.Tensor]


class StudentRequest(NamedTuple):
    """What one student forward must compute for the terms of a micro-batch (the union of theirs)."""

    clip: bool = False
    prompts: bool = False
    all_outputs: bool = False
    heads: tuple[str, ...] = ()

    def union(self, other: StudentRequest) -> StudentRequest:
        heads = self.heads + tuple(h for h in other.heads if h not in self.heads)
        return StudentRequest(
            self.clip or other.clip, self.prompts or other.prompts, self.all_outputs or other.all_outputs, heads
        )

    def run(self, student: Callable[..., SamClipOutput], micro: Micro) -> SamClipOutput:
        prompts = list(micro.prompts) if self.prompts else None
        if self.heads:
            return student(
                micro.images, prompts, clip=self.clip, all_outputs=self.all_outputs, heads=self.heads
            )
        return student(micro.images, prompts, clip=self.clip, all_outputs=self.all_outputs)


class DistillTerm:
    """The contract of a term; subclasses set ``kind`` and implement the four methods.

    A term whose teacher can be cached names the teacher outputs it reads (``cache_outputs``) and says
    how to compute them (:meth:`teacher_outputs`): ``samclip-data cache-teacher`` stores exactly those,
    and ``target`` gets them back from ``micro.cached`` instead of running the teacher.
    """

    kind: ClassVar[str]
    part_names: tuple[str, ...] = ()
    cache_outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, name: str, *, stream: str, weight: float, teacher: FrozenTeacher | None, loss: nn.Module
    ) -> None:
        self.name = name
        self.stream = stream
        self.weight = float(weight)
        self.teacher = teacher
        self.loss_fn = loss
        self.cached = False  # the task sets it when this term's teacher outputs come from a cache

    @property
    def student_module(self) -> str:
        """The student's module this term trains (a ``trainable`` prefix): a trained head needs a term."""
        raise NotImplementedError

    def request(self) -> StudentRequest:
        raise NotImplementedError

    def target(self, micro: Micro) -> Any:
        raise NotImplementedError

    def loss(self, output: SamClipOutput, target: Any) -> StreamLoss:
        raise NotImplementedError

    def probe(self, student: SamClipModel, rand: RandomTensor) -> torch.Tensor:
        """The term's objective on random inputs and targets (finds parameters no loss reaches)."""
        raise NotImplementedError

    def check_student(self, student: SamClipModel) -> None:
        """Raise if the student's head cannot be compared with the teacher (dimensions)."""

    def check_cached(self, shapes: Mapping[str, Sequence[int] | None], student: SamClipModel) -> None:
        """Raise if a cache's outputs (per-image shapes by name; None: not recorded) do not fit the student."""

    def to(self, device: torch.device) -> DistillTerm:
        for module in (self.teacher, self.loss_fn):
            if module is not None:
                module.to(device)
        return self

    @classmethod
    def teacher_with_cache(cls, teacher: dict[str, Any]) -> dict[str, Any] | None:
        """The teacher's config when a cache provides its image outputs: what of it must still run."""
        return None

    @classmethod
    def teacher_outputs(cls, teacher: FrozenTeacher, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's outputs of ``images`` that a cache stores for this kind of term, by name."""
        raise ValueError(f"the teacher of a {cls.kind} term cannot be cached (it names no cache outputs)")

    def cached_outputs(self, micro: Micro) -> dict[str, torch.Tensor] | None:
        """This term's cached teacher outputs of the micro-batch, by name (None: compute them online)."""
        cached = micro.cached.get(self.name)
        if cached is None:
            return None
        if isinstance(cached, torch.Tensor):  # a cache of one output
            return {self.cache_outputs[0]: cached}
        return as_outputs(cached, self.cache_outputs, self.name)

    def _require_teacher(self, micro: Micro) -> FrozenTeacher:
        if self.teacher is None:
            cached = " and its batch carries no cached outputs" if not micro.cached else ""
            raise ValueError(
                f"this stage uses the {self.stream} stream but no {self.name} teacher was built "
                f"(teacher.{self.name}){cached}"
            )
        return self.teacher


TERM_KINDS: Registry[type[DistillTerm]] = Registry("distillation term kind")


def as_outputs(cached: Mapping[str, torch.Tensor], names: tuple[str, ...], term: str) -> dict[str, torch.Tensor]:
    missing = [name for name in names if name not in cached]
    if missing:
        raise ValueError(f"term {term}: its teacher cache holds the outputs {sorted(cached)}, not {missing}")
    return {name: cached[name] for name in names}


def head_module(head: str) -> str:
    return "clip_head" if head == CLIP_HEAD else f"adaptors.{head}"


@TERM_KINDS.register("embedding")
class EmbeddingTerm(DistillTerm):
    """L_clip: ``1 - cos`` between an image embedding of the student and the teacher's ``encode_image``.

    ``head``: ``clip`` (the CLIP head's pooled embedding) or an adaptor's summary. Units: images.
    """

    kind = "embedding"
    cache_outputs = ("embedding",)

    def __init__(
        self,
        name: str,
        *,
        stream: str = "clip",
        weight: float = 1.0,
        teacher: FrozenTeacher | None = None,
        loss: nn.Module | None = None,
        head: str = CLIP_HEAD,
    ) -> None:
        super().__init__(
            name, stream=stream, weight=weight, teacher=teacher, loss=loss or CosineDistillationLoss()
        )
        self.head = head

    @property
    def student_module(self) -> str:
        return head_module(self.head)

    def check_student(self, student: SamClipModel) -> None:
        if self.teacher is None:
            return
        dim, where = self._head_width(student)
        if self.teacher.embed_dim != dim:
            raise ValueError(
                f"the {self.name} teacher {getattr(self.teacher, 'model_name', '')} embeds in "
                f"{self.teacher.embed_dim} dimensions but the student's {where}={dim}"
            )

    def check_cached(self, shapes: Mapping[str, Sequence[int] | None], student: SamClipModel) -> None:
        shape = shapes.get("embedding")
        dim, where = self._head_width(student)
        if shape and shape[-1] != dim:
            raise ValueError(f"holds {shape[-1]}-d embeddings but the student's {where}={dim}")

    def _head_width(self, student: SamClipModel) -> tuple[int, str]:
        if self.head == CLIP_HEAD:
            return student.config.clip_embed_dim, "CLIP head has clip_embed_dim"
        return student.config.adaptor_dim(self.head), f"adaptor {self.head} has width"

    def request(self) -> StudentRequest:
        if self.head == CLIP_HEAD:
            return StudentRequest(clip=True)
        return StudentRequest(heads=(self.head,))

    @classmethod
    def teacher_outputs(cls, teacher: FrozenTeacher, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"embedding": teacher.encode_image(images)}

    def target(self, micro: Micro) -> torch.Tensor:
        cached = self.cached_outputs(micro)
        if cached is not None:
            return cached["embedding"]
        return self.teacher_outputs(self._require_teacher(micro), micro.images)["embedding"]

    def embeds(self, output: SamClipOutput) -> torch.Tensor:
        return output.clip.image_embeds if self.head == CLIP_HEAD else output.heads[self.head].summary

    def loss(self, output: SamClipOutput, target: torch.Tensor) -> StreamLoss:
        return StreamLoss(self.loss_fn(self.embeds(output), target), {})

    def probe(self, student: SamClipModel, rand: RandomTensor) -> torch.Tensor:
        side = 4 * student.config.patch_size
        micro = Micro(rand(2, 3, side, side))
        embeds = self.embeds(self.request().run(student, micro))
        return self.loss_fn(embeds, rand(*embeds.shape) - 0.5)


@TERM_KINDS.register("masks")
class MaskTerm(DistillTerm):
    """L_sam: focal + dice per mask between the student's and the SAM teacher's masks for the same prompts.

    ``outputs``: ``single`` distils SAM's single-mask output (SAM-CLIP); ``all`` distils all four mask
    outputs and the IoU predictions (EdgeSAM-style), keeping ``multimask`` and scores calibrated.
    With cached image embeddings only the teacher's prompt encoder and decoder run. Units: masks.
    """

    kind = "masks"
    part_names = ("focal", "dice")
    cache_outputs = ("embedding",)  # SAM's image embedding; the prompt encoder and decoder still run

    def __init__(
        self,
        name: str,
        *,
        stream: str = "sam",
        weight: float = 10.0,
        teacher: FrozenTeacher | None = None,
        loss: nn.Module | None = None,
        outputs: str = "single",
    ) -> None:
        if outputs not in SAM_OUTPUTS:
            raise ValueError(f"loss.sam_outputs must be one of {SAM_OUTPUTS}, got {outputs!r}")
        super().__init__(
            name, stream=stream, weight=weight, teacher=teacher, loss=loss or MaskDistillationLoss()
        )
        self.outputs = outputs

    @property
    def student_module(self) -> str:
        return "sam_head"

    @classmethod
    def teacher_with_cache(cls, teacher: dict[str, Any]) -> dict[str, Any] | None:
        """The prompt encoder and mask decoder decode the cached image embeddings."""
        return {**teacher, "image_encoder": False}

    @classmethod
    def teacher_outputs(cls, teacher: FrozenTeacher, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"embedding": teacher.image_embeddings(images)}

    def request(self) -> StudentRequest:
        return StudentRequest(prompts=True, all_outputs=self.outputs == "all")

    def target(self, micro: Micro) -> SamHeadOutput:
        teacher = self._require_teacher(micro)
        all_outputs = self.outputs == "all"
        cached = self.cached_outputs(micro)
        with torch.no_grad():
            if cached is not None:
                return teacher.decode(cached["embedding"], micro.prompts, all_outputs=all_outputs)
            return teacher(micro.images, micro.prompts, all_outputs=all_outputs)

    def loss(self, output: SamClipOutput, target: SamHeadOutput) -> StreamLoss:
        mask_loss = self.objective(output.sam, target)
        return StreamLoss(mask_loss.total, {"focal": mask_loss.focal, "dice": mask_loss.dice})

    def objective(self, student: SamHeadOutput, teacher: SamHeadOutput) -> Any:
        if self.outputs == "all":
            return self.loss_fn(
                student.low_res_logits, teacher.low_res_logits, student.iou_predictions, teacher.iou_predictions
            )
        return self.loss_fn(student.low_res_logits, teacher.low_res_logits)

    def probe(self, student: SamClipModel, rand: RandomTensor) -> torch.Tensor:
        """The prompt kinds D_SAM samples: a box group and a foreground-point group, no mask inputs
        (``samclip.data.prompts_sampling``)."""
        frame = student.config.image_size
        corner = rand(2, 2) * frame / 2
        device = corner.device
        prompts = [
            SamPrompts(0, boxes=torch.cat([corner, corner + frame / 4], dim=1)),
            SamPrompts(
                0,
                point_coords=rand(2, 2, 2) * frame,
                point_labels=torch.ones(2, 2, dtype=torch.int64, device=device),
            ),
        ]
        output = self.request().run(student, Micro(rand(1, 3, frame, frame), prompts)).sam
        target = SamHeadOutput(
            rand(*output.low_res_logits.shape) * 8 - 4, rand(*output.iou_predictions.shape), output.image_index
        )
        return self.objective(output, target).total
