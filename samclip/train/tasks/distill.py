"""The distillation task: a student and N frozen teachers, as a list of terms (SAM-CLIP eq. 1-3, generalised).

``L = Σ_t weight_t · L_t``, each ``L_t`` a mean over the units of the stream the term reads. Several terms
may read one stream (CLIP and DINOv2 on D_CLIP): its batch is read once, the student runs once per
micro-batch with the union of what the terms need, and each term compares its own output with its teacher.
SAM-CLIP is the two-term case (``configs/task/sam_clip.yaml``): ``clip`` (embedding, on D_CLIP) and ``sam``
(masks, on D_SAM).

A trainable parameter that no loss reaches (the hypernetwork MLPs of mask outputs that are not
distilled, the IoU head when the scores are not, the mask-input encoder when no mask prompt is
sampled) would still be shrunk by AdamW's decoupled weight decay, since a slice of the decoder's
output hands it an exactly-zero gradient rather than none. :meth:`DistillationTask.freeze_without_loss_path`
finds them with one probe backward and freezes them, so they stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import reduce
from typing import Any

import torch

from samclip.models import SamClipModel, SamClipOutput
from samclip.models.teachers import FrozenTeacher
from samclip.train.tasks.base import StreamLoss
from samclip.train.tasks.streams import STREAM_KINDS, Micro, StreamKind
from samclip.train.tasks.terms import TERM_KINDS, DistillTerm

# The stream kind of each stream name the recipes use; a task may name others.
DEFAULT_STREAM_KINDS = {"clip": "images", "sam": "prompted_images"}


def build_term(name: str, spec: DistillTerm | Mapping[str, Any]) -> DistillTerm:
    """A term from its config (``kind`` names a registered term class; the rest are its arguments)."""
    if isinstance(spec, DistillTerm):
        return spec
    values = dict(spec)
    kind = values.pop("kind", None)
    if kind is None:
        raise ValueError(f"terms.{name}: a term needs a kind; registered: {list(TERM_KINDS)}")
    try:
        return TERM_KINDS.get(kind)(name, **values)
    except TypeError as error:
        raise TypeError(f"terms.{name} ({kind}): {error}") from None


class DistillationTask:
    """Student + the stage's terms; ``weights`` and ``part_names`` are per term, streams are read once."""

    # Streams whose batches may carry a teacher cache's outputs (the term owning the cache reads them).
    cacheable_streams = tuple(DEFAULT_STREAM_KINDS)

    def __init__(
        self,
        student: SamClipModel,
        terms: Mapping[str, DistillTerm | Mapping[str, Any]],
        streams: Mapping[str, str] | None = None,
        cached_terms: Mapping[str, str] | None = None,
    ) -> None:
        """``terms``: the stage's terms by name, in the order their losses are summed (configs: ``tasks.<task>.terms``).
        ``streams``: stream name -> stream kind (:data:`samclip.train.tasks.streams.STREAM_KINDS`).
        ``cached_terms``: stream -> the term whose teacher's outputs that stream's batches carry.

        Every term of the recipe is given, also in a stage without its stream (its teacher and loss then
        None, unless validation needs the teacher), so that each stage logs the same loss names."""
        self.student = student
        self.terms = [build_term(name, spec) for name, spec in terms.items()]
        if not self.terms:
            raise ValueError("a distillation task needs at least one term")
        kinds = {**DEFAULT_STREAM_KINDS, **(streams or {})}
        unknown = sorted({t.stream for t in self.terms} - set(kinds))
        if unknown:
            raise ValueError(f"terms read the stream(s) {unknown}, which have no stream kind (task streams)")
        self.stream_kinds: dict[str, StreamKind] = {
            s: STREAM_KINDS.get(kinds[s])() for s in dict.fromkeys(t.stream for t in self.terms)
        }
        self.cached_terms = dict(cached_terms or {})
        for term in self.terms:
            term.cached = term.name in self.cached_terms.values()
            term.check_student(student)
        self.weights = {t.name: t.weight for t in self.terms}
        self.term_streams = {t.name: t.stream for t in self.terms}
        self.part_names = {t.name: t.part_names for t in self.terms}
        self.teachers: dict[str, FrozenTeacher | None] = {t.name: t.teacher for t in self.terms}
        # Where several streams train, each stream's heads are unused in the other streams' micro-batches.
        live = {t.stream for t in self.terms if t.teacher is not None or t.name in self.cached_terms.values()}
        self.find_unused_parameters = len(live) > 1

    @property
    def cached_streams(self) -> tuple[str, ...]:
        return tuple(self.cached_terms)

    def to(self, device: torch.device) -> DistillationTask:
        self.student.to(device)
        for term in self.terms:
            term.to(device)
        return self

    def train(self) -> None:
        """Student in train mode; teachers stay in eval mode (their ``train`` is a no-op)."""
        self.student.train()

    def term(self, name: str) -> DistillTerm:
        for term in self.terms:
            if term.name == name:
                return term
        raise KeyError(f"the task has no term {name!r}; its terms: {[t.name for t in self.terms]}")

    def terms_of(self, stream: str) -> list[DistillTerm]:
        return [t for t in self.terms if t.stream == stream]

    def split(self, stream: str, batch: Any, micro_batch_size: int) -> list[Micro]:
        return self.stream_kinds[stream].split(batch, micro_batch_size, self.cached_terms.get(stream))

    def num_units(self, stream: str, micro: Micro) -> int:
        return self.stream_kinds[stream].num_units(micro)

    def num_images(self, stream: str, micro: Micro) -> int:
        return micro.images.shape[0]

    def loss(self, stream: str, student: Callable[..., SamClipOutput], micro: Micro) -> dict[str, StreamLoss]:
        """Each term of ``stream`` on one micro-batch: the teachers first, then one student forward."""
        terms = self.terms_of(stream)
        targets = [term.target(micro) for term in terms]
        request = reduce(lambda a, b: a.union(b), (t.request() for t in terms))
        output = request.run(student, micro)
        return {t.name: t.loss(output, target) for t, target in zip(terms, targets, strict=True)}

    def freeze_without_loss_path(self, streams: Sequence[str]) -> list[str]:
        """Freeze the trainable student parameters that no term of ``streams`` reaches; their names.

        One probe backward of each term's objective on random inputs and targets: a parameter whose
        gradient is missing or exactly zero has no loss path. The student is left in its mode, its
        gradients cleared.
        """
        student = self.student
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
            for term in self.terms:
                if term.stream in streams:
                    term.probe(student, rand).backward()
            unreached = [name for name, p in trainable.items() if p.grad is None or not p.grad.any()]
        finally:
            student.zero_grad(set_to_none=True)
            student.train(was_training)
        for name in unreached:
            trainable[name].requires_grad_(False)
        return unreached
