"""The proxy world's objects as COCO-layout instances: what Open-Vocabulary SAM trains (CLIP2SAM) and is
evaluated on (Table 1), in the layout ``samclip.data.synth_instances`` writes for the OV-SAM smoke run.

``<root>/annotations/instances_<split>.json`` + ``<root>/<split>/<id>.jpg``; every visible object of a
scene is an instance (compressed RLE, pycocotools' box and area), its category the object's shape, so the
classes are the world's ``SHAPES`` (ids 1..4 in that order). Scenes come from the world's own generator
with splits of their own (``instances_train``, ``instances_val`` in ``world.SPLITS``), at SA-1B's sizes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from samclip.proxy.world import SHAPES, Scene, _rng, _size, make_scene

log = logging.getLogger(__name__)

INSTANCE_SPLITS = {"train": "instances_train", "val": "instances_val"}
# As the proxy's prompted mIoU (samclip.proxy.evaluate): slivers of occluded distractors are not objects.
MIN_INSTANCE_AREA = 100
# OV-SAM's open-vocabulary split of the world: CLIP2SAM never sees a cross.
PROXY_NOVEL_CLASSES = ("cross",)
PROXY_BASE_CLASSES = tuple(s for s in SHAPES if s not in PROXY_NOVEL_CLASSES)


def scene_annotations(scene: Scene, image_id: int, first_id: int) -> list[dict]:
    """COCO annotations of a scene's objects (main first) whose visible area is at least ``MIN_INSTANCE_AREA``."""
    height, width = scene.instances.shape
    annotations = []
    for index, obj in enumerate(scene.objects, start=1):
        mask = np.asfortranarray(scene.instances == index, dtype=np.uint8)
        rle = mask_utils.encode(mask)
        area = float(mask_utils.area(rle))
        if area < MIN_INSTANCE_AREA:
            continue
        annotations.append(
            {
                "id": first_id + len(annotations),
                "image_id": image_id,
                "category_id": SHAPES.index(obj.shape) + 1,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "area": area,
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return annotations


def write_instance_split(root: str | Path, split: str, num_images: int, seed: int) -> Path:
    """``num_images`` scenes of the world's ``instances_<split>`` stream; returns the annotations path."""
    if split not in INSTANCE_SPLITS:
        raise ValueError(f"instance split must be one of {sorted(INSTANCE_SPLITS)}, got {split!r}")
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = _rng(seed, INSTANCE_SPLITS[split], index)
        height, width = _size(rng, 128, 192)
        scene = make_scene(rng, height, width)
        image_id = index + 1
        file_name = f"{image_id:012d}.jpg"
        scene.image.save(root / split / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        annotations += scene_annotations(scene, image_id, len(annotations) + 1)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    path = root / "annotations" / f"instances_{split}.json"
    document = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(document))
    return path


def world_seed(proxy_dir: str | Path) -> int:
    """The seed a proxy world was written from (its ``world/DONE`` marker, ``size=... seed=S``)."""
    marker = Path(proxy_dir) / "world" / "DONE"
    if not marker.is_file():
        raise FileNotFoundError(f"proxy world marker {marker} does not exist (samclip-proxy writes it)")
    fields = dict(item.split("=", 1) for item in marker.read_text().split())
    if "seed" not in fields:
        raise ValueError(f"{marker} names no seed: {marker.read_text()!r}")
    return int(fields["seed"])


def prepare_proxy_instances(instances_dir: str, proxy_dir: str, num_train: int, num_val: int) -> None:
    """``experiment=proxy_ovsam``'s ``prepare``: the train and val instances, from the world's seed, unless
    ``instances_dir`` already holds them (written for the same seed and sizes: ``DONE`` records both)."""
    root = Path(instances_dir)
    seed = world_seed(proxy_dir)
    record = f"seed={seed} num_train={num_train} num_val={num_val}\n"
    marker = root / "DONE"
    if marker.is_file():
        if marker.read_text() != record:
            raise ValueError(
                f"{root} holds other instances ({marker.read_text().strip()}), not {record.strip()}"
            )
        return
    log.info("proxy instances: writing %d train and %d val scenes (world seed %d) to %s", num_train,
             num_val, seed, root)  # fmt: skip
    write_instance_split(root, "train", num_train, seed)
    write_instance_split(root, "val", num_val, seed)
    marker.write_text(record)
