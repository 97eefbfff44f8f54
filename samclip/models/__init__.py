"""Models: the SAM backbone, CLIP and SAM heads, the merged model and the frozen teachers."""

from samclip.models.backbone import BackboneFeatures, SamBackbone
from samclip.models.clip_head import ClipHead, ClipHeadOutput
from samclip.models.config import MODEL_CONFIGS, SamClipConfig, get_model_config
from samclip.models.factory import create_model, create_model_from_config, load_sam_weights
from samclip.models.prompts import SamPrompts
from samclip.models.sam_head import SamHead, SamHeadOutput
from samclip.models.samclip_model import ImageEmbedding, SamClipModel, SamClipOutput, Segmentation

__all__ = [
    "MODEL_CONFIGS",
    "BackboneFeatures",
    "ClipHead",
    "ClipHeadOutput",
    "ImageEmbedding",
    "SamBackbone",
    "SamClipConfig",
    "SamClipModel",
    "SamClipOutput",
    "SamHead",
    "SamHeadOutput",
    "SamPrompts",
    "Segmentation",
    "create_model",
    "create_model_from_config",
    "get_model_config",
    "load_sam_weights",
]
