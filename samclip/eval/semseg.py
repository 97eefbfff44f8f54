"""Zero-shot semantic segmentation: CLIP-head patches at 448 px (``mode=clip``) or CLIP head prompting the
SAM head in SAM's frame (``mode=composed``); mIoU and per-class IoU from one confusion matrix."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from samclip.eval.datasets.semseg import open_segmentation_dataset
from samclip.eval.metrics import ConfusionMatrix
from samclip.eval.visualize import class_palette, save_segmentation_panel
from samclip.serve.merged import MergedSamClip
from samclip.serve.zeroshot import segment_with_both_heads, segment_with_clip_head

MODES = ("clip", "composed")
MAX_LISTED_FALLBACKS = 50  # results.json names at most this many fallback images (all are counted)

log = logging.getLogger(__name__)


def evaluate_semseg(
    model: MergedSamClip | None,
    run_dir: Path,
    *,
    layout: str,
    root: str,
    split: str | None = None,
    mode: str = "clip",
    resolution: int = 448,
    threshold: float = 0.5,
    num_points: int = 3,
    composed_protocol: str = "paper",
    seed: int = 0,
    max_images: int | None = None,
    num_visualize: int = 4,
) -> dict[str, Any]:
    """``root`` is the dataset root as distributed (see ``samclip.eval.datasets.semseg`` for the layouts).

    ``composed_protocol`` (mode=composed): ``paper`` (appendix C) or ``weighted``; see
    ``samclip.serve.zeroshot.segment_with_both_heads``.
    """
    if model is None:
        raise ValueError("semantic segmentation needs checkpoint=FILE")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    dataset = open_segmentation_dataset(layout, root, split)
    classifier = model.text_classifier(dataset.prompts)
    generator = torch.Generator().manual_seed(seed)
    confusion = ConfusionMatrix(len(dataset.classnames))
    palette = class_palette(len(dataset.classnames))
    pairs = dataset.pairs[:max_images] if max_images is not None else dataset.pairs
    fallbacks = []  # composed mode: images where no class passed the threshold
    for index, (image_path, label_path) in enumerate(tqdm(pairs, desc=f"{dataset.name} {mode}")):
        sample = dataset.load(image_path, label_path)
        if mode == "clip":
            prediction = segment_with_clip_head(model.model, sample.image, classifier, resolution)
        else:
            prediction = segment_with_both_heads(
                model.model,
                sample.image,
                classifier,
                logit_scale=model.text.logit_scale,
                threshold=threshold,
                num_points=num_points,
                background_index=dataset.background_index,
                generator=generator,
                protocol=composed_protocol,
            )
        if prediction.fell_back:
            fallbacks.append(sample.name)
        label_map = prediction.label_map.cpu().numpy()
        confusion.update(label_map, sample.label)
        if index < num_visualize:
            save_segmentation_panel(
                Path(run_dir) / "qualitative" / f"{sample.name}.png",
                sample.image,
                label_map,
                sample.label,
                palette,
                classnames=dataset.classnames,
            )
    iou = confusion.iou()
    composed = {}
    if mode == "composed":
        if fallbacks:
            log.warning(
                "%s composed: on %d of %d images no class passed threshold %g; those maps are the %s",
                dataset.name, len(fallbacks), len(pairs), threshold,
                "CLIP head's" if composed_protocol == "paper" else "fallback (background or CLIP head)",
            )  # fmt: skip
        composed = {
            "composed_protocol": composed_protocol,
            "threshold": threshold,
            "num_fallback_images": len(fallbacks),  # no class passed the threshold: no SAM prompt at all
            "fallback_images": fallbacks[:MAX_LISTED_FALLBACKS],
        }
    return {
        "dataset": dataset.name,
        "mode": mode,
        **composed,
        "resolution": resolution if mode == "clip" else model.config.image_size,
        "mIoU": 100.0 * confusion.miou(),
        "pixel_accuracy": 100.0 * confusion.pixel_accuracy(),
        "num_images": len(pairs),
        "per_class": {
            name: None if math.isnan(value) else 100.0 * float(value)
            for name, value in zip(dataset.classnames, iou, strict=True)
        },
    }
