"""Box-prompted instance segmentation (SAM's protocol): detector boxes prompt the SAM head, mask AP is scored
by pycocotools' ``COCOeval`` (COCO) or the ``lvis`` package's ``LVISEval`` (LVIS)."""

from __future__ import annotations

import contextlib
import copy
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from samclip.eval.visualize import class_palette, overlay
from samclip.serve.merged import MergedSamClip

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """[N, H, W] bool -> COCO compressed RLEs with json-ready ``counts``."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def mask_results(
    image_id: int, masks: np.ndarray, category_ids: Sequence[int], scores: Sequence[float]
) -> list[dict[str, Any]]:
    """COCO result entries for one image. No ``bbox`` key: with one, pycocotools and lvis take box areas."""
    return [
        {"image_id": int(image_id), "category_id": int(category), "segmentation": rle, "score": float(score)}
        for rle, category, score in zip(encode_masks(masks), category_ids, scores, strict=True)
    ]


def coco_mask_ap(
    gt: Any, results: list[dict[str, Any]], image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """Mask AP (in %) with pycocotools' ``COCOeval(iouType="segm")``; ``gt`` is a ``COCO`` object."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        raise ValueError("no predicted masks to evaluate")
    # loadRes adds ``bbox``/``area``/``id`` to the entries it is given: keep the caller's list intact.
    evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="segm")
    if image_ids is not None:
        evaluator.params.imgIds = list(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {name: 100.0 * float(value) for name, value in zip(COCO_STATS, evaluator.stats[:6], strict=True)}


def lvis_mask_ap(
    gt: Any, results: list[dict[str, Any]], image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """Mask AP (in %) with ``lvis.LVISEval(iou_type="segm")``; ``gt`` is an ``LVIS`` object (300 dets/image)."""
    from lvis import LVISEval, LVISResults

    if not results:
        raise ValueError("no predicted masks to evaluate")
    evaluator = LVISEval(gt, LVISResults(gt, copy.deepcopy(results), max_dets=300), iou_type="segm")
    if image_ids is not None:
        evaluator.params.img_ids = list(image_ids)
    with _numpy_float_alias():
        evaluator.run()
    return {name: 100.0 * float(value) for name, value in evaluator.get_results().items()}


@contextlib.contextmanager
def _numpy_float_alias() -> Iterator[None]:
    """lvis 0.5.3 (the latest release) calls ``np.float``, which NumPy 1.24 removed; alias it while it runs."""
    missing = not hasattr(np, "float")
    if missing:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if missing:
            del np.float  # type: ignore[attr-defined]


def evaluate_instseg(
    model: MergedSamClip | None,
    run_dir: Path,
    *,
    annotations: str,
    detections: str,
    images_root: str,
    evaluator: str = "coco",
    max_detections_per_image: int = 100,
    prompt_batch_size: int = 64,
    max_images: int | None = None,
    num_visualize: int = 4,
) -> dict[str, Any]:
    """Prompt the SAM head with each detection box; a mask's score is its detection's score."""
    if model is None:
        raise ValueError("instance segmentation needs checkpoint=FILE")
    gt = _load_ground_truth(annotations, evaluator)
    by_image = _read_detections(detections, gt, max_detections_per_image)
    image_ids = sorted(by_image)[:max_images] if max_images is not None else sorted(by_image)
    if not image_ids:
        raise ValueError(f"{detections} has no detections on the images of {annotations}")
    results: list[dict[str, Any]] = []
    palette = class_palette(256)
    for count, image_id in enumerate(tqdm(image_ids, desc="instance segmentation")):
        info = gt.imgs[image_id]
        path = Path(images_root) / _file_name(info)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} (id {image_id} in {annotations}) does not exist")
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        detections_here = by_image[image_id]
        boxes = np.array([_xywh_to_xyxy(d["bbox"]) for d in detections_here], dtype=np.float64)
        embedding = model.model.embed_image(pixels)
        masks = np.concatenate(
            [
                model.model.segment(embedding, boxes=boxes[start : start + prompt_batch_size])
                .masks.cpu()
                .numpy()
                for start in range(0, len(boxes), prompt_batch_size)
            ]
        )
        results += mask_results(
            image_id,
            masks,
            [d["category_id"] for d in detections_here],
            [d["score"] for d in detections_here],
        )
        if count < num_visualize:
            _save_instances(Path(run_dir) / "qualitative" / f"{image_id}.png", pixels, masks, palette)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "predictions.json").write_text(json.dumps(results))
    metrics = (
        coco_mask_ap(gt, results, image_ids) if evaluator == "coco" else lvis_mask_ap(gt, results, image_ids)
    )
    return {"evaluator": evaluator, **metrics, "num_images": len(image_ids), "num_masks": len(results)}


def _load_ground_truth(annotations: str, evaluator: str) -> Any:
    if not Path(annotations).is_file():
        raise FileNotFoundError(f"annotation file {annotations} does not exist")
    if evaluator == "coco":
        from pycocotools.coco import COCO

        return COCO(annotations)
    if evaluator == "lvis":
        from lvis import LVIS

        return LVIS(annotations)
    raise ValueError(f"unknown evaluator {evaluator!r}; use 'coco' or 'lvis'")


def _read_detections(path: str, gt: Any, max_per_image: int) -> dict[int, list[dict[str, Any]]]:
    """Detections json (a list of ``{image_id, category_id, bbox: xywh, score}``), best first, per image."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"detections file {path} does not exist")
    detections = json.loads(Path(path).read_text())
    if not isinstance(detections, list):
        raise ValueError(f"{path} must hold a list of detections (COCO results format)")
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for index, detection in enumerate(detections):
        missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in detection]
        if missing:
            raise ValueError(f"{path}: detection {index} lacks {missing}")
        if detection["image_id"] in gt.imgs:
            by_image[detection["image_id"]].append(detection)
    return {
        image_id: sorted(items, key=lambda d: -d["score"])[:max_per_image]
        for image_id, items in by_image.items()
    }


def _file_name(info: dict[str, Any]) -> str:
    """COCO images carry ``file_name``; LVIS v1 images only a ``coco_url`` whose basename is the file."""
    if "file_name" in info:
        return info["file_name"]
    if "coco_url" in info:
        return info["coco_url"].rsplit("/", 1)[-1]
    raise ValueError(f"image entry {info.get('id')} has neither file_name nor coco_url")


def _xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _save_instances(path: Path, image: np.ndarray, masks: np.ndarray, palette: np.ndarray) -> None:
    canvas = image.copy()
    for index, mask in enumerate(masks):
        color = np.broadcast_to(palette[1 + index % 255], image.shape)
        canvas = overlay(canvas, color, mask)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([image, canvas], axis=1)).save(path)
