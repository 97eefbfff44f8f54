"""What the CLIP tasks evaluate: the merged model's CLIP head, or the CLIP teacher itself for comparison."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from samclip.models.teachers import ClipTeacher
from samclip.models.zeroshot_classifier import OPENAI_TEMPLATES, Template, TextModel, build_text_classifier
from samclip.serve.merged import MergedSamClip


@dataclass
class ClipEncoder:
    """Unit-norm image and text embeddings in one space; images arrive as float [0, 1] at the eval size."""

    name: str
    image_fn: Callable[[torch.Tensor], torch.Tensor]
    text_model: TextModel
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    native_resolution: int | None  # a fixed input size (the teacher's), or None when any size works

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_fn(images.to(self.device)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.text_model.encode_text(tokens).float(), dim=-1)

    def classifier(
        self, classnames: Sequence[str], templates: Sequence[Template] = OPENAI_TEMPLATES
    ) -> torch.Tensor:
        return build_text_classifier(self.text_model, self.tokenizer, classnames, templates, self.device)


def student_encoder(model: MergedSamClip) -> ClipEncoder:
    return ClipEncoder(
        name="samclip",
        image_fn=model.model.encode_image,
        text_model=model.text.clip,
        tokenizer=model.text.tokenizer,
        device=model.device,
        native_resolution=None,
    )


def teacher_encoder(model_name: str, pretrained: str | None, device: torch.device | str) -> ClipEncoder:
    teacher = ClipTeacher(model_name, pretrained).to(device)
    return ClipEncoder(
        name=f"clip_teacher:{model_name}",
        image_fn=teacher.encode_image,
        text_model=teacher.model,
        tokenizer=teacher.tokenizer,
        device=torch.device(device),
        native_resolution=teacher.image_size,
    )


def resolve_encoder(
    encoder: str,
    model: MergedSamClip | None,
    teacher_model: str | None = None,
    teacher_pretrained: str | None = None,
    device: torch.device | str = "cpu",
) -> ClipEncoder:
    """``encoder="student"`` uses ``model``; ``"teacher"`` the CLIP teacher named here or recorded in ``model``."""
    if encoder == "student":
        if model is None:
            raise ValueError("encoder=student needs checkpoint=FILE")
        return student_encoder(model)
    if encoder == "teacher":
        if teacher_model is None:
            if model is None or model.clip_teacher is None:
                raise ValueError(
                    "encoder=teacher needs eval.teacher_model (or a checkpoint that records one)"
                )
            teacher_model = model.clip_teacher.model_name
            # The file as it is now (the run dir may have moved since training).
            teacher_pretrained = model.clip_teacher.resolve_pretrained(model.source.get("path"))
        return teacher_encoder(teacher_model, teacher_pretrained, device if model is None else model.device)
    raise ValueError(f"unknown encoder {encoder!r}; use 'student' or 'teacher'")
