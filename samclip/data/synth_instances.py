"""Synthetic COCO-layout instance data (``annotations/instances_<split>.json`` + ``<split>/*.jpg``) with named classes.

Each class is a colour and a shape ("red ellipse"), so a model can in principle learn to name it; the
masks are the visible parts of the drawn shapes, as compressed RLE, the boxes and areas pycocotools'.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

SYNTH_COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220)}
SYNTH_SHAPES = ("ellipse", "rectangle")
SYNTH_CLASSES = tuple(f"{c} {s}" for s in SYNTH_SHAPES for c in SYNTH_COLOURS)
# The smoke run's open-vocabulary split: two of the six classes are never trained.
SYNTH_NOVEL_CLASSES = ("blue ellipse", "green rectangle")
SYNTH_BASE_CLASSES = tuple(c for c in SYNTH_CLASSES if c not in SYNTH_NOVEL_CLASSES)


def write_instance_split(
    root: str, split: str, num_images: int, seed: int, size_range: tuple[int, int] = (160, 320)
) -> str:
    """Write ``num_images`` images with 1-3 shapes each; returns the annotations path."""
    rng = np.random.default_rng((seed, 7, len(split), num_images))
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        gray = rng.integers(90, 170)
        canvas = Image.new("RGB", (width, height), (int(gray), int(gray), int(gray)))
        labels = Image.new("I", (width, height), 0)
        draw, label_draw = ImageDraw.Draw(canvas), ImageDraw.Draw(labels)
        classes = []
        for index in range(1, int(rng.integers(1, 4)) + 1):
            category = int(rng.integers(len(SYNTH_CLASSES)))
            colour, shape = SYNTH_CLASSES[category].split(" ")
            cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
            rx, ry = rng.uniform(0.08, 0.22) * width, rng.uniform(0.08, 0.22) * height
            box = (cx - rx, cy - ry, cx + rx, cy + ry)
            paint = draw.ellipse if shape == "ellipse" else draw.rectangle
            paint(box, fill=SYNTH_COLOURS[colour])
            (label_draw.ellipse if shape == "ellipse" else label_draw.rectangle)(box, fill=index)
            classes.append(category)
        label_array = np.asarray(labels)
        for index, category in enumerate(classes, start=1):
            mask = np.asfortranarray(label_array == index, dtype=np.uint8)
            if mask.sum() < 16:
                continue
            rle = mask_utils.encode(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category + 1,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
        file_name = f"{image_id:012d}.jpg"
        canvas.save(os.path.join(root, split, file_name), quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SYNTH_CLASSES)
    ]
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(path, "w") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, handle)
    return path


def make_synthetic_instances(
    root: str, seed: int = 0, num_train: int = 12, num_val: int = 6
) -> dict[str, str]:
    """The train and val splits under ``root``; returns their annotation paths."""
    return {
        "train": write_instance_split(root, "train", num_train, seed),
        "val": write_instance_split(root, "val", num_val, seed + 1),
    }
