"""Zero-shot classification with a CLIP text tower: prompt templates, the [D, C] text classifier and its
top-k hits. Training's validation, serving and evaluation all classify through these."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import open_clip
import torch

Template = str | Callable[[str], str]
OPENAI_TEMPLATES: tuple[Template, ...] = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)  # the 80 templates


class TextModel(Protocol):
    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...


def build_text_classifier(
    text_model: TextModel,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template] = OPENAI_TEMPLATES,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[D, C] unit-norm class embeddings: each class's template embeddings averaged (open_clip's helper)."""
    return open_clip.build_zero_shot_classifier(
        text_model,
        tokenizer=tokenizer,
        classnames=[name.strip() for name in classnames],
        templates=list(templates),
        num_classes_per_batch=10,
        device=device,
    )


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows have their target among the ``k`` highest logits, for each k (capped at C)."""
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices
    hits = top == targets[:, None]
    return {k: int(hits[:, : min(k, max_k)].any(dim=1).sum()) for k in ks}
