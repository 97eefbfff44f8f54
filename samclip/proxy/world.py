"""The proxy world: coloured shapes on textured backgrounds, written in every layout samclip reads.

A scene has one large *main* object and up to two small distractors, each one of ``SHAPES`` in one of
``COLOURS``. The class of an image (what CLIP zero-shot must recognise) is its main object's shape;
colour is a nuisance the captions name but the classes do not. Captions name every object, main first,
wrapped in one of the OpenAI templates the zero-shot classifier averages over, so the text tower sees
the templates' words in training and the class prompts are in-distribution.

Splits (``(seed, split, index)`` seeds every random stream, so each split is deterministic per seed and
no two splits share a scene): D_CLIP shards and SA-1B tars for training; a held-out ImageFolder, VOC
tree and SA-1B tar for evaluation.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from samclip.data.synth import _encode, write_tar

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 215),
    "yellow": (230, 205, 40),
}
TEMPLATES = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)
SPLITS = {
    "clip": 0, "sam": 1, "classification": 2, "semseg": 3, "sam_val": 4, "semseg_train": 5, "dense": 6,
    "instances_train": 7, "instances_val": 8,  # COCO-layout instances (samclip.proxy.instances)
}  # fmt: skip
# SA-1B image ids of the held-out tar start here, so train and held-out ids never collide.
VAL_ID_OFFSET = 1_000_000
BOUNDARY = 255  # VOC's ignore label on object outlines


@dataclass(frozen=True)
class WorldSize:
    """How many images each split holds (the proxy study's ``--size``)."""

    clip_images: int
    sam_images: int
    classification_images: int
    semseg_images: int
    sam_val_images: int
    images_per_shard: int = 250


# D_CLIP is the large split: contrastive training from scratch memorises a few thousand captioned images
# (2000 images x 40 epochs: train loss 0.5, held-out zero-shot 30 %) where more images at the same step
# count generalise (docs/proxy/README.md).
WORLD_SIZES = {
    "test": WorldSize(6000, 160, 200, 16, 24),
    "quick": WorldSize(8000, 400, 200, 40, 50),
    "full": WorldSize(20000, 1000, 400, 80, 100),
}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]  # main object first
    instances: np.ndarray  # [H, W] int32: 0 background, i + 1 visible pixels of objects[i]

    @property
    def label(self) -> int:
        return SHAPES.index(self.objects[0].shape)

    def caption(self, rng: np.random.Generator) -> str:
        """Half the captions name colours too; shape-only ones are what the class prompts look like."""
        with_colour = rng.random() < 0.5
        names = [f"{o.colour} {o.shape}" if with_colour else o.shape for o in self.objects]
        phrase = names[0] if len(names) == 1 else ", a ".join(names[:-1]) + f" and a {names[-1]}"
        return TEMPLATES[int(rng.integers(len(TEMPLATES)))](phrase)

    def semantic_map(self) -> np.ndarray:
        """[H, W] uint8: 0 background, 1 + shape index, 255 on a thin band along every object outline."""
        lookup = np.array([0] + [1 + SHAPES.index(o.shape) for o in self.objects], dtype=np.uint8)
        label = lookup[self.instances]
        label[_outline(self.instances)] = BOUNDARY
        return label


def _outline(instances: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another instance id (about 2 px wide, as VOC's 5 px at 500 px)."""
    edge = np.zeros(instances.shape, dtype=bool)
    vertical = instances[1:] != instances[:-1]
    horizontal = instances[:, 1:] != instances[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        points = [(x * radius * 0.8, y * radius * 0.8) for x, y in corners]
    elif shape == "triangle":
        points = [
            (radius * math.cos(a), radius * math.sin(a))
            for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        ]
    else:  # cross: a plus sign with arms a third of its width
        w, r = radius / 3, radius
        points = [
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
        ]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A muted gradient, oriented stripes of random frequency, and pixel noise (float HxWx3)."""
    top, bottom = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    ys, xs = np.mgrid[0:height, 0:width]
    theta, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
    stripes = np.sin((xs * np.cos(theta) + ys * np.sin(theta)) * 2 * np.pi / period)[..., None]
    pixels = top * (1 - ramp) + bottom * ramp + rng.uniform(5, 30) * stripes * rng.uniform(0.5, 1.0, 3)
    return pixels + rng.normal(0, 6, (height, width, 3))


def make_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Distractors first, the main object last (so it is never occluded), colours jittered per object."""
    side = min(height, width)
    main = SceneObject(SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))])
    distractors = [
        SceneObject(SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))])
        for _ in range(int(rng.integers(0, 3)))
    ]
    image = Image.fromarray(np.clip(_background(height, width, rng), 0, 255).astype(np.uint8))
    labels = Image.new("I", (width, height), 0)
    draw, label_draw = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    order = [*distractors, main]
    for index, obj in enumerate(order):
        is_main = obj is main
        radius = side * (rng.uniform(0.22, 0.34) if is_main else rng.uniform(0.08, 0.15))
        margin = radius if is_main else radius * 0.5
        cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[obj.colour])
        # Instance ids follow the caption order: main object = 1, distractors after it.
        instance = 1 if is_main else index + 2
        if obj.shape == "circle":
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            draw.ellipse(box, fill=fill)
            label_draw.ellipse(box, fill=instance)
        else:
            points = _polygon(obj.shape, cx, cy, radius, rng.uniform(0, 2 * np.pi))
            draw.polygon(points, fill=fill)
            label_draw.polygon(points, fill=instance)
    objects = [main, *distractors]
    return Scene(image, objects, np.asarray(labels, dtype=np.int32))


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng((seed, SPLITS[split], index))


def _size(rng: np.random.Generator, low: int, high: int) -> tuple[int, int]:
    height, width = (int(v) for v in rng.integers(low, high + 1, 2))
    return height, width


def write_clip_split(out_dir: Path, seed: int, num_images: int, per_shard: int) -> list[Path]:
    """img2dataset layout: ``NNNNN.tar`` of ``<key>.jpg/.txt/.json`` plus ``NNNNN_stats.json``."""
    paths = []
    for shard in range(math.ceil(num_images / per_shard)):
        members = []
        count = min(per_shard, num_images - shard * per_shard)
        for offset in range(count):
            index = shard * per_shard + offset
            rng = _rng(seed, "clip", index)
            height, width = _size(rng, 96, 144)
            scene = make_scene(rng, height, width)
            key = f"{shard:05d}{offset:04d}"
            caption = scene.caption(rng)
            meta = {"url": f"https://proxy.invalid/{key}.jpg", "caption": caption, "key": key, "status": "success",
                    "error_message": None, "width": width, "height": height, "original_width": width,
                    "original_height": height}  # fmt: skip
            members += [
                (f"{key}.jpg", _encode(scene.image, "JPEG")),
                (f"{key}.txt", caption.encode()),
                (f"{key}.json", json.dumps(meta).encode()),
            ]
        path = out_dir / f"{shard:05d}.tar"
        write_tar(str(path), members)
        stats = {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0,
                 "status_dict": {"success": count}}  # fmt: skip
        (out_dir / f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=4))
        paths.append(path)
    return paths


def sa1b_files(scene: Scene, image_id: int) -> tuple[bytes, bytes]:
    """(``sa_<id>.jpg``, ``sa_<id>.json``) in Meta's format: every object's visible mask as compressed RLE."""
    height, width = scene.instances.shape
    annotations = []
    for index in range(1, len(scene.objects) + 1):
        mask = np.asfortranarray(scene.instances == index, dtype=np.uint8)
        if not mask.any():
            continue
        rle = mask_utils.encode(mask)
        ys, xs = np.nonzero(mask)
        centre = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
        annotations.append(
            {
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": int(mask_utils.area(rle)),
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "predicted_iou": 1.0,
                "point_coords": [[float(xs[centre]), float(ys[centre])]],
                "crop_box": [0.0, 0.0, float(width), float(height)],
                "id": image_id * 10 + index,
                "stability_score": 1.0,
            }
        )
    document = {
        "image": {"image_id": image_id, "width": width, "height": height, "file_name": f"sa_{image_id}.jpg"},
        "annotations": annotations,
    }
    return _encode(scene.image, "JPEG"), json.dumps(document).encode()


def write_sa1b_split(out_dir: Path, seed: int, split: str, num_images: int, per_shard: int) -> list[Path]:
    """SA-1B layout: ``sa_NNNNNN.tar`` of ``sa_<id>.jpg`` + ``sa_<id>.json``."""
    first_id = 1 + (VAL_ID_OFFSET if split == "sam_val" else 0)
    paths = []
    for shard in range(math.ceil(num_images / per_shard)):
        members = []
        for index in range(shard * per_shard, min((shard + 1) * per_shard, num_images)):
            rng = _rng(seed, split, index)
            height, width = _size(rng, 128, 192)
            jpg, annotation = sa1b_files(make_scene(rng, height, width), first_id + index)
            members += [(f"sa_{first_id + index}.jpg", jpg), (f"sa_{first_id + index}.json", annotation)]
        path = out_dir / f"sa_{shard:06d}.tar"
        write_tar(str(path), members)
        paths.append(path)
    return paths


def write_classification_split(out_dir: Path, seed: int, num_images: int) -> None:
    """ImageFolder: ``<shape>/<index>.jpg``; folder names are the class names, in ``SHAPES`` order."""
    for shape in SHAPES:
        (out_dir / shape).mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        rng = _rng(seed, "classification", index)
        scene = make_scene(rng, *_size(rng, 96, 144))
        scene.image.save(out_dir / scene.objects[0].shape / f"{index:06d}.jpg", quality=90)


def write_semseg_split(out_dir: Path, seed: int, num_images: int, split: str = "semseg") -> None:
    """VOC2012 layout: ``JPEGImages/``, ``SegmentationClass/`` palette PNGs, ``ImageSets/Segmentation/<set>.txt``
    and ``classnames.txt`` (background first, then ``SHAPES``).

    ``split="semseg"`` is the held-out ``val`` set; ``"semseg_train"`` the ``train`` set a k-NN probe's
    memory bank (or a trained head) reads, written beside it into the same tree."""
    from samclip.eval.visualize import class_palette

    image_set, prefix = SEMSEG_SETS[split]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    palette = class_palette(256).astype(np.uint8).flatten().tolist()
    names = []
    for index in range(num_images):
        rng = _rng(seed, split, index)
        scene = make_scene(rng, *_size(rng, 128, 192))
        name = f"{prefix}_{index:06d}"
        scene.image.save(out_dir / "JPEGImages" / f"{name}.jpg", quality=90)
        label = Image.fromarray(scene.semantic_map(), mode="P")
        label.putpalette(palette)
        label.save(out_dir / "SegmentationClass" / f"{name}.png")
        names.append(name)
    (out_dir / "ImageSets" / "Segmentation" / f"{image_set}.txt").write_text("\n".join(names) + "\n")
    (out_dir / "classnames.txt").write_text("\n".join(("background", *SHAPES)) + "\n")


# world split -> (VOC image set, file-name prefix)
SEMSEG_SETS = {"semseg": ("val", "proxy"), "semseg_train": ("train", "proxy_train")}


def dense_scenes(seed: int, num_images: int) -> list[Scene]:
    """Scenes of their own split (``dense``) at D_CLIP's sizes: the dense proxy teacher's training set."""
    scenes = []
    for index in range(num_images):
        rng = _rng(seed, "dense", index)
        scenes.append(make_scene(rng, *_size(rng, 96, 144)))
    return scenes


@dataclass(frozen=True)
class ProxyWorld:
    """Where each split of a written world lies (all paths absolute)."""

    root: Path

    @property
    def clip_shards(self) -> list[str]:
        return sorted(str(p) for p in (self.root / "clip").glob("*.tar"))

    @property
    def sam_shards(self) -> list[str]:
        return sorted(str(p) for p in (self.root / "sam").glob("*.tar"))

    @property
    def sam_val_shards(self) -> list[str]:
        return sorted(str(p) for p in (self.root / "sam_val").glob("*.tar"))

    @property
    def classification_root(self) -> Path:
        return self.root / "classification"

    @property
    def semseg_root(self) -> Path:
        return self.root / "voc"


def write_world(out_dir: str | os.PathLike, size: str | WorldSize = "quick", seed: int = 0) -> ProxyWorld:
    """Write every split under ``out_dir`` (clip/, sam/, sam_val/, classification/, voc/VOC2012/)."""
    if isinstance(size, str):
        if size not in WORLD_SIZES:
            raise ValueError(f"unknown proxy world size {size!r}; available: {sorted(WORLD_SIZES)}")
        size = WORLD_SIZES[size]
    root = Path(out_dir).absolute()
    for folder in ("clip", "sam", "sam_val"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    write_clip_split(root / "clip", seed, size.clip_images, size.images_per_shard)
    write_sa1b_split(root / "sam", seed, "sam", size.sam_images, size.images_per_shard)
    write_sa1b_split(root / "sam_val", seed, "sam_val", size.sam_val_images, size.images_per_shard)
    write_classification_split(root / "classification", seed, size.classification_images)
    write_semseg_split(root / "voc" / "VOC2012", seed, size.semseg_images)
    return ProxyWorld(root)
