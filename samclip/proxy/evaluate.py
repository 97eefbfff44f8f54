"""What the proxy study measures that ``samclip-eval`` has no task for: prompted mask IoU against the
ground truth, plus the proxy VOC tree registered as a ``samclip-eval`` segmentation layout."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils

from samclip.data.sa1b import parse_annotation_file
from samclip.eval.datasets.semseg import LAYOUTS, SegmentationDataset, voc
from samclip.models import SamClipModel
from samclip.serve.merged import MergedSamClip

PROXY_LAYOUT = "proxy_shapes"


def proxy_shapes(root: str | Path, split: str = "val") -> SegmentationDataset:
    """The proxy world's VOC tree: VOC's reader, with the class names of ``classnames.txt`` beside it."""
    dataset = voc(root, split)
    names_file = Path(root) / "VOC2012" / "classnames.txt"
    if not names_file.is_file():
        names_file = Path(root) / "classnames.txt"
    if not names_file.is_file():
        raise FileNotFoundError(f"{root} has no classnames.txt: not a proxy world's VOC tree")
    names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
    return dataclasses.replace(dataset, name=PROXY_LAYOUT, classnames=names)


# samclip-eval's semantic segmentation reads layouts from this registry (`eval.layout=proxy_shapes`).
LAYOUTS.setdefault(PROXY_LAYOUT, proxy_shapes)


def _mask_iou(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N, H, W] bool x [N, H, W] bool -> [N] IoU."""
    inter = (predicted & target).reshape(len(target), -1).sum(1)
    union = (predicted | target).reshape(len(target), -1).sum(1)
    return inter / np.maximum(union, 1)


def prompted_ious(
    sam_model: SamClipModel,
    shards: str | Sequence[str],
    *,
    min_mask_area: float = 100.0,
    max_images: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-instance (box IoU, point IoU) of ``sam_model``'s single-mask output against the ground truth: every
    instance of area >= ``min_mask_area`` of SA-1B-layout ``shards`` prompted once by its box and once by its
    annotation's point (SA-1B's ``point_coords``). Rank r scores images r, r + W, ..."""
    urls = [shards] if isinstance(shards, str) else list(shards)
    box_ious, point_ious = [], []
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    for count, sample in enumerate(dataset):
        if max_images is not None and count >= max_images:
            break
        if count % world_size != rank:
            continue
        record = parse_annotation_file(sample["json"])
        annotations = [a for a in record.annotations if a["area"] >= min_mask_area]
        if not annotations:
            continue
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            pixels = np.asarray(image.convert("RGB"))
        targets = np.stack([mask_utils.decode(a["segmentation"]).astype(bool) for a in annotations])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)])
        points = np.array([a["point_coords"][:1] for a in annotations], dtype=np.float64)
        embedding = sam_model.embed_image(pixels)
        by_box = sam_model.segment(embedding, boxes=boxes).masks.cpu().numpy()
        labels = np.ones(points.shape[:2], dtype=np.int64)
        by_point = sam_model.segment(embedding, points=points, point_labels=labels).masks.cpu().numpy()
        box_ious.append(_mask_iou(by_box, targets))
        point_ious.append(_mask_iou(by_point, targets))
    empty = np.zeros(0)
    return (np.concatenate(box_ious), np.concatenate(point_ious)) if box_ious else (empty, empty)


def evaluate_prompted_miou(
    model: MergedSamClip | SamClipModel | None,
    run_dir: Path,
    *,
    shards: str | Sequence[str],
    min_mask_area: float = 100.0,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Mean box- and point-prompted IoU (%) against the ground truth (``prompted_ious``) of every instance."""
    if model is None:
        raise ValueError("prompted mIoU needs checkpoint=FILE")
    sam_model = model.model if isinstance(model, MergedSamClip) else model
    box, point = prompted_ious(sam_model, shards, min_mask_area=min_mask_area, max_images=max_images)
    if not box.size:
        raise ValueError(f"no instance of area >= {min_mask_area} in {shards}")
    return {
        "box_mIoU": 100.0 * float(box.mean()),
        "point_mIoU": 100.0 * float(point.mean()),
        "num_instances": int(box.size),
    }


class HeldOutBoxMiou:
    """``val/box_miou``: a trainer validation evaluator (``configs/validation/proxy.yaml``): the student's
    box-prompted mIoU (%) against the ground truth of held-out SA-1B-layout ``shards``, for the study's
    per-stage curves. Needs no teacher."""

    teachers: tuple[str, ...] = ()

    def __init__(
        self, shards: str | Sequence[str], min_mask_area: float = 100.0, max_images: int | None = None,
        rank: int = 0, world_size: int = 1,
    ) -> None:  # fmt: skip
        self.shards = _shard_list(shards)
        self.min_mask_area, self.max_images = min_mask_area, max_images
        self.rank, self.world_size = rank, world_size

    def local_sums(self, task: Any, device: Any) -> tuple[float, float]:
        box, _ = prompted_ious(
            task.student, self.shards, min_mask_area=self.min_mask_area, max_images=self.max_images,
            rank=self.rank, world_size=self.world_size,
        )  # fmt: skip
        return 100.0 * float(box.sum()), float(box.size)


def _shard_list(shards: str | Sequence[str]) -> list[str]:
    """A folder stands for its tars (as ``data.*.urls`` in the configs); a file or list is kept."""
    if isinstance(shards, str):
        folder = Path(shards)
        return sorted(str(p) for p in folder.glob("*.tar")) if folder.is_dir() else [shards]
    return list(shards)


def box_baselines(shards: str | Sequence[str], min_mask_area: float = 100.0) -> dict[str, float]:
    """What a box prompt gives without any image: the box itself filled as the mask (mIoU against the
    ground truth, %, on the instances ``evaluate_prompted_miou`` prompts). A SAM that scores below it has
    learned less than its prompt already says; the study reports both."""
    urls = [shards] if isinstance(shards, str) else list(shards)
    ious = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        record = parse_annotation_file(sample["json"])
        for annotation in record.annotations:
            if annotation["area"] < min_mask_area:
                continue
            target = mask_utils.decode(annotation["segmentation"]).astype(bool)
            x, y, w, h = annotation["bbox"]
            box = np.zeros_like(target)
            box[round(y) : round(y + h), round(x) : round(x + w)] = True
            ious.append(_mask_iou(box[None], target[None])[0])
    if not ious:
        raise ValueError(f"no instance of area >= {min_mask_area} in {urls}")
    return {"box_as_mask_miou": 100.0 * float(np.mean(ious)), "num_instances": len(ious)}


def majority_top1(root: str | Path) -> float:
    """Top-1 (%) of always answering the held-out ImageFolder's most frequent class: the floor a collapsed
    classifier reaches (the head probe on the frozen SAM backbone answers one class for every image)."""
    counts = [
        sum(1 for p in folder.iterdir() if p.is_file()) for folder in Path(root).iterdir() if folder.is_dir()
    ]
    if not counts or not sum(counts):
        raise ValueError(f"{root}: no class folders with images")
    return 100.0 * max(counts) / sum(counts)
