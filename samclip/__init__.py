"""samclip: merge SAM and CLIP into one vision backbone by multi-task distillation (SAM-CLIP)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from samclip.models import SamClipConfig, SamClipModel, create_model

if TYPE_CHECKING:
    from samclip.inference import MergedSamClip

__version__ = "0.1.0"
__all__ = ["SamClipConfig", "SamClipModel", "__version__", "create_model", "load"]


def load(path: str | Path) -> MergedSamClip:
    """The merged model (image encoder, both heads, CLIP text tower) from a stage's ``final.pt`` or an export.

    Imported on call: open_clip's import alone takes seconds, and ``import samclip`` should not pay it.
    """
    from samclip.inference import load as load_merged

    return load_merged(path)
