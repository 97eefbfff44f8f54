"""Zero-shot classification as in CLIP: OpenAI templates, top-1/top-5, at one or more resolutions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from samclip.data.classnames import read_classnames
from samclip.data.transforms import classification_transform
from samclip.eval.datasets.classification import image_folder_loader, webdataset_loader
from samclip.eval.encoders import resolve_encoder
from samclip.models.zeroshot_classifier import topk_correct
from samclip.serve.merged import MergedSamClip

log = logging.getLogger(__name__)


def evaluate_zeroshot_cls(
    model: MergedSamClip | None,
    run_dir: Path,
    *,
    layout: str,
    root: str | None = None,
    shards: str | Sequence[str] | None = None,
    classnames: str | Sequence[str] | None = None,
    resolutions: Sequence[int] = (224, 336),
    encoder: str = "student",
    teacher_model: str | None = None,
    teacher_pretrained: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    max_batches: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """``layout="imagefolder"`` reads ``root``; ``"webdataset"`` reads ``shards`` (image + ``cls``).

    The teacher is evaluated at its own input size only (CLIP models are reported at their training size).
    """
    clip = resolve_encoder(encoder, model, teacher_model, teacher_pretrained, device)
    sizes = [clip.native_resolution] if clip.native_resolution else list(resolutions)
    results: dict[str, Any] = {"encoder": clip.name}
    classifier = None
    for resolution in sizes:
        transform = classification_transform(resolution)
        if layout == "imagefolder":
            if root is None:
                raise ValueError("layout=imagefolder needs eval.root")
            loader, folders = image_folder_loader(root, transform, batch_size, num_workers)
            names = read_classnames(classnames, folders)
            if len(names) != len(folders):
                raise ValueError(
                    f"eval.classnames gives {len(names)} class names but eval.root {root} has {len(folders)} "
                    "class folders (leave eval.classnames null to name classes by their folders)"
                )
        elif layout == "webdataset":
            if shards is None:
                raise ValueError("layout=webdataset needs eval.shards")
            loader, names = (
                webdataset_loader(shards, transform, batch_size, num_workers),
                read_classnames(classnames),
            )
        else:
            raise ValueError(f"unknown classification layout {layout!r}; use 'imagefolder' or 'webdataset'")
        if classifier is None:
            classifier = clip.classifier(names).to(clip.device)
            results["num_classes"] = len(names)
        hits, total = {1: 0, 5: 0}, 0
        for step, (images, labels) in enumerate(tqdm(loader, desc=f"zero-shot cls {resolution}px")):
            if max_batches is not None and step >= max_batches:
                break
            if labels.max() >= len(names):
                raise ValueError(f"label {int(labels.max())} is out of range for {len(names)} class names")
            logits = clip.encode_image(images) @ classifier
            for k, count in topk_correct(logits, labels.to(logits.device), (1, 5)).items():
                hits[k] += count
            total += len(labels)
        if total == 0:
            raise ValueError("the classification data yielded no images")
        results[f"top1@{resolution}"] = 100.0 * hits[1] / total
        results[f"top5@{resolution}"] = 100.0 * hits[5] / total
        results["num_images"] = total
        log.info("zero-shot top-1 at %dpx: %.2f", resolution, results[f"top1@{resolution}"])
    return results
