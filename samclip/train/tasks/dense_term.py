"""The dense-feature term (AM-RADIO): a student adaptor matches a teacher's patch tokens and summary token.

The teacher (a :class:`samclip.models.dino_teacher.DinoTeacher`, or any frozen module whose ``encode``
returns ``(summary [B, D], patches [B, D, h, w])``) sees the images at its own input size; its patch grid is
resampled to the student's. Its outputs are standardized with PHI-S before the loss: feature scales differ
by orders of magnitude between teachers and between channels (DINOv2 has a few very large channels), so
without it one teacher, or a few channels, would dominate ``L = Σ_t w_t L_t``; PHI-S rather than
per-channel whitening because it is an isometry up to one scale (the teacher's geometry, which k-NN and
linear probes read, is kept) while still giving every channel the same variance. Its statistics are fitted
once per stage on the first ``fit_images`` images of the stage's stream (summed over ranks, so every rank
holds the same transform; a resumed stage fits the same images again and gets the same one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from samclip.dense_losses import DenseFeatureLoss, resample_to_grid
from samclip.models import SamClipModel, SamClipOutput
from samclip.models.feature_standardizer import FeatureStandardizer
from samclip.models.teachers import FrozenTeacher
from samclip.train.distributed import DistEnv, all_reduce_sum
from samclip.train.tasks.base import StreamLoss
from samclip.train.tasks.streams import Micro
from samclip.train.tasks.terms import TERM_KINDS, DistillTerm, RandomTensor, StudentRequest, head_module

STANDARDIZE = ("phi_s", "none")


class DenseTarget(NamedTuple):
    summary: torch.Tensor  # [B, D], standardized
    features: torch.Tensor  # [B, D, h, w] on the teacher's grid, standardized


@TERM_KINDS.register("dense")
class DenseFeatureTerm(DistillTerm):
    """An adaptor head (``head``, a key of the model's ``adaptors``) against the teacher's summary and patches."""

    kind = "dense"
    part_names = ("summary", "features")
    cache_outputs = ("summary", "patches")  # before PHI-S: the standardizer is fitted per stage

    def __init__(
        self,
        name: str,
        *,
        stream: str = "clip",
        weight: float = 1.0,
        teacher: FrozenTeacher | None = None,
        loss: nn.Module | None = None,
        head: str | None = None,
        standardize: str = "phi_s",
        fit_images: int = 256,
    ) -> None:
        if standardize not in STANDARDIZE:
            raise ValueError(f"terms.{name}.standardize must be one of {STANDARDIZE}, got {standardize!r}")
        if fit_images < 1:
            raise ValueError(f"terms.{name}.fit_images must be >= 1, got {fit_images}")
        super().__init__(name, stream=stream, weight=weight, teacher=teacher, loss=loss or DenseFeatureLoss())
        self.head = head or name
        self.standardize = standardize
        self.fit_images = int(fit_images)
        self.summary_standardizer: FeatureStandardizer | None = None
        self.feature_standardizer: FeatureStandardizer | None = None

    @property
    def student_module(self) -> str:
        return head_module(self.head)

    @property
    def needs_fit(self) -> bool:
        has_outputs = self.teacher is not None or self.cached
        return has_outputs and self.standardize == "phi_s" and self.summary_standardizer is None

    @classmethod
    def teacher_outputs(cls, teacher: FrozenTeacher, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = teacher.encode(images)
        return {"summary": out.summary, "patches": out.patches}

    def raw_outputs(self, micro: Micro) -> dict[str, torch.Tensor]:
        """The teacher's summary and patches of the micro-batch, from the cache or online (not standardized)."""
        cached = self.cached_outputs(micro)
        if cached is not None:
            return cached
        return self.teacher_outputs(self._require_teacher(micro), micro.images)

    def check_student(self, student: SamClipModel) -> None:
        if self.teacher is None:
            return
        width = student.config.adaptor_dim(self.head)
        if width != self.teacher.feature_dim:
            raise ValueError(
                f"the {self.name} teacher {getattr(self.teacher, 'model_name', '')} has {self.teacher.feature_dim}-d "
                f"features but the student's adaptor {self.head} has width {width} (model.adaptors.{self.head})"
            )

    def check_cached(self, shapes: Mapping[str, Sequence[int] | None], student: SamClipModel) -> None:
        shape = shapes.get("summary")
        width = student.config.adaptor_dim(self.head)
        if shape and shape[-1] != width:
            raise ValueError(
                f"holds {shape[-1]}-d features but the student's adaptor {self.head} has width {width} "
                f"(model.adaptors.{self.head})"
            )

    def request(self) -> StudentRequest:
        return StudentRequest(heads=(self.head,))

    @torch.no_grad()
    def fit(self, micros: Iterable[Micro], env: DistEnv) -> int:
        """PHI-S statistics of the teacher's summaries and patch tokens (cached or online) on up to
        ``fit_images`` images per rank, summed over ranks; the number of images used (all ranks)."""
        teacher = self.teacher
        dim = teacher.feature_dim if teacher is not None else None
        device = next(teacher.parameters()).device if teacher is not None else None

        def zeros(dim: int) -> list[torch.Tensor]:
            return [torch.zeros(1 + dim + dim * dim, dtype=torch.float64, device=device) for _ in range(2)]

        sums = zeros(dim) if dim is not None else []
        seen = 0
        for micro in micros:
            take = self.fit_images - seen
            cached = self.cached_outputs(micro)
            if cached is None:  # only the images it uses: the teacher's numerics as a batch of these
                cached = self.teacher_outputs(self._require_teacher(micro), micro.images[:take])
            summary, patches = cached["summary"][:take], cached["patches"][:take]
            if dim is None:  # cached outputs: the width and device from the first batch
                dim, device = summary.shape[-1], summary.device
                sums = zeros(dim)
            tokens = patches.flatten(2).transpose(1, 2).reshape(-1, dim)
            for total, values in zip(sums, (summary, tokens), strict=True):
                count, first, second = FeatureStandardizer.moments(values.float())
                total += torch.cat([torch.tensor([float(count)], dtype=torch.float64, device=device),
                                    first.to(device), second.to(device).flatten()])  # fmt: skip
            seen += summary.shape[0]
            if seen >= self.fit_images:
                break
        if dim is None:
            raise ValueError(f"terms.{self.name}: PHI-S needs at least 2 images to fit, the stream gave none")
        summary, features = (all_reduce_sum(total, env) for total in sums)
        if summary[0] < 2:
            raise ValueError(f"terms.{self.name}: PHI-S needs at least 2 images to fit, the stream gave {int(summary[0])}")
        self.summary_standardizer, self.feature_standardizer = (
            FeatureStandardizer.from_moments(t[0].item(), t[1 : 1 + dim], t[1 + dim :].view(dim, dim)).to(device)
            for t in (summary, features)
        )
        return int(summary[0].item())

    def target(self, micro: Micro) -> DenseTarget:
        if self.needs_fit:
            raise RuntimeError(f"terms.{self.name}: the PHI-S standardizer was not fitted before training")
        with torch.no_grad():
            out = self.raw_outputs(micro)
            summary, features = out["summary"].float(), out["patches"].float()
            if self.summary_standardizer is not None:
                summary = self.summary_standardizer(summary)
                features = self.feature_standardizer(features.movedim(1, -1)).movedim(-1, 1)
        return DenseTarget(summary, features)

    def loss(self, output: SamClipOutput, target: DenseTarget) -> StreamLoss:
        student = output.heads[self.head]
        features = resample_to_grid(target.features, tuple(student.features.shape[-2:]))
        dense = self.loss_fn(student, target.summary.to(student.summary.dtype), features.to(student.features.dtype))
        return StreamLoss(dense.total, {"summary": dense.summary, "features": dense.features})

    def probe(self, student: SamClipModel, rand: RandomTensor) -> torch.Tensor:
        side = 4 * student.config.patch_size
        out = self.request().run(student, Micro(rand(2, 3, side, side))).heads[self.head]
        return self.loss_fn(out, rand(*out.summary.shape) - 0.5, rand(*out.features.shape) - 0.5).total

    def to(self, device: Any) -> DenseFeatureTerm:
        super().to(device)
        for standardizer in (self.summary_standardizer, self.feature_standardizer):
            if standardizer is not None:
                standardizer.to(device)
        return self
