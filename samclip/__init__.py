"""samclip: merge SAM and CLIP into one vision backbone by multi-task distillation (SAM-CLIP)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from samclip.models import SamClipConfig, SamClipModel, create_model
from samclip.serve.automatic import generate_masks
from samclip.serve.predictor import Predictor
from samclip.serve.pretrained import (
    create_model_and_transforms,
    from_pretrained,
    get_tokenizer,
    list_models,
    push_to_hub,
)

if TYPE_CHECKING:
    from samclip.serve.merged import MergedSamClip

__version__ = "0.1.0"
__all__ = [
    "Predictor",
    "SamClipConfig",
    "SamClipModel",
    "__version__",
    "create_model",
    "create_model_and_transforms",
    "from_pretrained",
    "generate_masks",
    "get_tokenizer",
    "list_models",
    "load",
    "push_to_hub",
]


def load(path: str | Path, *, allow_hub: bool = False) -> MergedSamClip:
    """The merged model (image encoder, both heads, CLIP text tower) from a stage's ``final.pt`` or an export.

    An export's ``config.json`` is validated first; a text model on a hub is fetched only with ``allow_hub``.

    Imported on call: open_clip's import alone takes seconds, and ``import samclip`` should not pay it.
    """
    from samclip.serve.merged import load as load_merged

    return load_merged(path, allow_hub=allow_hub)
