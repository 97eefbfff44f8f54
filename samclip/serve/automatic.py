"""Segment everything: segment_anything's ``SamAutomaticMaskGenerator`` on the merged model, and, beyond SAM,
each mask named by the CLIP head against given class names (open-vocabulary automatic segmentation).

    masks = samclip.generate_masks(samclip.load("merged/"), image, labels=["cat", "sofa", "floor"])
    masks[0]["segmentation"], masks[0]["predicted_iou"], masks[0]["label"], masks[0]["label_prob"]

The grid of point prompts, batching, NMS, stability scores and crops are segment_anything's own code, run on
a ``Sam`` view of the merged model: with the same weights the masks are those of SAM's generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import rle_to_mask

from samclip.models.samclip_model import SamClipModel
from samclip.serve.predictor import Predictor

if TYPE_CHECKING:
    from samclip.serve.merged import MergedSamClip


@torch.no_grad()
def generate_masks(
    model: MergedSamClip | SamClipModel,
    image: np.ndarray,
    labels: Sequence[str] | None = None,
    **generator_options: Any,
) -> list[dict[str, Any]]:
    """``SamAutomaticMaskGenerator(**generator_options).generate(image)``; with ``labels``, each record also
    gets ``label`` (the most likely class), ``label_prob`` and ``label_probs`` (over ``labels``)."""
    predictor = Predictor(model)
    generator = SamAutomaticMaskGenerator(predictor.sam_predictor.model, **generator_options)
    records = generator.generate(image)
    if labels is None or not records:
        return records
    # The generator resets its predictor after each crop; the full image is encoded once more for the
    # CLIP head (with crop_n_layers=0 this pass equals the generator's own).
    predictor.set_image(image)
    masks = np.stack([_binary_mask(record["segmentation"]) for record in records])
    named = predictor.label(masks, labels)
    for record, label, probs in zip(records, named.labels, named.probs, strict=True):
        record["label"] = label
        record["label_prob"] = float(probs.max())
        record["label_probs"] = probs.tolist()
    return records


def _binary_mask(segmentation: np.ndarray | dict[str, Any]) -> np.ndarray:
    """The generator's ``segmentation`` in any ``output_mode`` as an HxW bool array."""
    if isinstance(segmentation, np.ndarray):
        return segmentation.astype(bool)
    if "counts" in segmentation and isinstance(segmentation["counts"], list):  # uncompressed_rle
        return rle_to_mask(segmentation).astype(bool)
    from pycocotools import mask as mask_utils  # coco_rle

    return mask_utils.decode(segmentation).astype(bool)
