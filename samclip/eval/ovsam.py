"""Open-Vocabulary SAM's Table 1: GT boxes and mask-centre points prompt the model; per-instance IoU over
base and novel classes (``iou_base``, ``iou_novel``) and recognition accuracy among all classes, per prompt kind.

    samclip-eval eval=ovsam_coco checkpoint=runs/ovsam/clip2sam/final.pt run_dir=evals/ovsam_coco \\
        eval.annotations=coco/annotations/instances_val2017.json eval.images_root=coco/val2017

The mask AP of Tables 2-3 (detector boxes as prompts) is ``eval=instseg_coco`` / ``instseg_lvis`` with
the same OV-SAM checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from samclip.data.instances import load_instances, open_vocabulary_split

PROMPT_KINDS = ("box", "point")
# (image, boxes [N, 4] xyxy or points [N, 1, 2] xy, kind, class names) -> (masks [N, H, W] bool, label index [N])
Predictor = Callable[[np.ndarray, np.ndarray, str, Sequence[str]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class InstanceResult:
    kind: str  # box or point
    novel: bool
    iou: float
    correct: bool


def mask_iou(prediction: np.ndarray, target: np.ndarray) -> float:
    union = np.logical_or(prediction, target).sum()
    return float(np.logical_and(prediction, target).sum() / union) if union else 1.0


def mask_centre(mask: np.ndarray) -> tuple[float, float]:
    """A pixel deepest inside the mask (inside even for non-convex masks), as pixel-centre (x, y).

    The mask is eroded (3x3) until one more step would empty it; of the pixels left, the one nearest
    their centroid.
    """
    core = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    if not core.any():
        raise ValueError("mask_centre of an empty mask")
    while True:
        eroded = -F.max_pool2d(-F.pad(core, (1, 1, 1, 1)), 3, stride=1)
        if not eroded.any():
            break
        core = eroded
    ys, xs = np.nonzero(core[0, 0].numpy())
    pick = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(xs[pick]) + 0.5, float(ys[pick]) + 0.5


def table1_metrics(results: Sequence[InstanceResult]) -> dict[str, Any]:
    """Per prompt kind: mean IoU (x100) over base and novel instances, accuracy (x100) over all and each group."""
    out: dict[str, Any] = {}
    for kind in PROMPT_KINDS:
        rows = [r for r in results if r.kind == kind]
        if not rows:
            continue
        metrics: dict[str, Any] = {}
        for name, group in (
            ("base", [r for r in rows if not r.novel]),
            ("novel", [r for r in rows if r.novel]),
        ):
            metrics[f"iou_{name}"] = 100.0 * float(np.mean([r.iou for r in group])) if group else None
            metrics[f"accuracy_{name}"] = (
                100.0 * float(np.mean([r.correct for r in group])) if group else None
            )
            metrics[f"num_{name}"] = len(group)
        metrics["accuracy"] = 100.0 * float(np.mean([r.correct for r in rows]))
        out[kind] = metrics
    return out


def evaluate_prompts(
    predict: Predictor,
    annotations: str,
    images_root: str,
    *,
    split: str | None = None,
    base_classes: Sequence[str] | None = None,
    novel_classes: Sequence[str] | None = None,
    max_images: int | None = None,
) -> tuple[dict[str, Any], list[InstanceResult]]:
    """Run ``predict`` on every GT instance of the base + novel vocabulary, once with boxes and once with points."""
    dataset = load_instances(annotations)
    vocabulary = open_vocabulary_split(dataset, base_classes, novel_classes, split)
    ids = vocabulary.all_ids
    names = [vocabulary.names[c] for c in ids]
    index_of = {cid: i for i, cid in enumerate(ids)}
    novel = set(vocabulary.novel_ids)
    results: list[InstanceResult] = []
    image_ids = (
        sorted(dataset.getImgIds())[:max_images] if max_images is not None else sorted(dataset.getImgIds())
    )
    for image_id in tqdm(image_ids, desc="ov-sam prompts"):
        annotations_here = [
            a
            for a in dataset.loadAnns(dataset.getAnnIds(imgIds=image_id, iscrowd=False))
            if a["category_id"] in index_of and a["area"] > 0
        ]
        if not annotations_here:
            continue
        info = dataset.loadImgs(image_id)[0]
        path = Path(images_root) / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {path} (id {image_id} in {annotations}) does not exist")
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        targets = np.stack([dataset.annToMask(a).astype(bool) for a in annotations_here])
        labels = np.array([index_of[a["category_id"]] for a in annotations_here])
        boxes = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations_here)], dtype=np.float64
        )
        points = np.array([[mask_centre(m)] for m in targets], dtype=np.float64)
        for kind, prompts in (("box", boxes), ("point", points)):
            masks, predicted = predict(pixels, prompts, kind, names)
            for mask, target, label, guess, annotation in zip(
                masks, targets, labels, predicted, annotations_here, strict=True
            ):
                results.append(
                    InstanceResult(
                        kind,
                        annotation["category_id"] in novel,
                        mask_iou(mask, target),
                        int(guess) == int(label),
                    )
                )
    if not results:
        raise ValueError(f"{annotations} has no instances of the evaluated classes")
    return table1_metrics(results), results


def evaluate_ovsam(
    model: Any,
    run_dir: Path,
    *,
    annotations: str,
    images_root: str,
    split: str | None = None,
    base_classes: Sequence[str] | None = None,
    novel_classes: Sequence[str] | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    """``samclip-eval eval=ovsam_coco|ovsam_lvis``: Table 1 for an OV-SAM checkpoint, box and point prompts."""
    if model is None or not hasattr(model, "ovsam"):
        raise ValueError("eval=ovsam_* needs checkpoint=an Open-Vocabulary SAM final.pt or export")

    def predict(
        image: np.ndarray, prompts: np.ndarray, kind: str, names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        frame = model.embed_image(image)
        given = {"boxes": prompts} if kind == "box" else {"points": prompts}
        out = model.segment(frame, labels=list(names), **given)
        return out.masks.cpu().numpy(), out.probs.argmax(-1).cpu().numpy()

    metrics, results = evaluate_prompts(
        predict,
        annotations,
        images_root,
        split=split,
        base_classes=base_classes,
        novel_classes=novel_classes,
        max_images=max_images,
    )
    flat = {f"{kind}/{key}": value for kind, values in metrics.items() for key, value in values.items()}
    return {**flat, **metrics, "num_instances": len(results) // len(PROMPT_KINDS)}
