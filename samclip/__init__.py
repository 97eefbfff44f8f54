"""samclip: merge SAM and CLIP into one vision backbone by multi-task distillation (SAM-CLIP)."""

from samclip.inference import load
from samclip.models import SamClipConfig, SamClipModel, create_model

__version__ = "0.1.0"
__all__ = ["SamClipConfig", "SamClipModel", "__version__", "create_model", "load"]
