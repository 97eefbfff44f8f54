"""Small deterministic data in both real layouts (img2dataset shards, SA-1B tars) for the smoke run and tests."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from samclip.data.manifest import split_subset, write_manifest

SHAPES = ("ellipse", "rectangle", "polygon")


def _draw_shape(
    draws: list[ImageDraw.ImageDraw],
    fills: list,
    height: int,
    width: int,
    rng: np.random.Generator,
    max_radius: float = 0.3,
) -> None:
    """One random ellipse, rectangle or polygon, drawn identically on each canvas with its fill."""
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
    rx, ry = (rng.uniform(max_radius / 4, max_radius) * side for side in (width, height))
    if kind == "polygon":
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
        radii = rng.uniform(0.5, 1.0, angles.size)
        points = [
            (cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radii, strict=True)
        ]
    for draw, fill in zip(draws, fills, strict=True):
        if kind == "ellipse":
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
        elif kind == "rectangle":
            draw.rectangle((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
        else:
            draw.polygon(points, fill=fill)


def _background(height: int, width: int, rng: np.random.Generator, noise_std: float) -> Image.Image:
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) + rng.normal(0, noise_std, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def make_web_image(
    height: int, width: int, rng: np.random.Generator, fmt: str = "JPEG", noise_std: float = 6.0
) -> bytes:
    """A web-like image of a few shapes, encoded as ``fmt`` (more ``noise_std``: larger, slower JPEGs)."""
    image = _background(height, width, rng, noise_std)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        _draw_shape([draw], [tuple(int(c) for c in rng.integers(0, 256, 3))], height, width, rng)
    return _encode(image, fmt)


def make_sa1b_files(
    image_id: int,
    height: int,
    width: int,
    num_masks: int,
    rng: np.random.Generator,
    noise_std: float = 6.0,
    max_radius: float = 0.3,
) -> tuple[bytes, bytes]:
    """(``sa_<id>.jpg``, ``sa_<id>.json``) in Meta's format: visible masks of drawn shapes as compressed RLE.

    ``max_radius`` (a fraction of the image side) bounds the shapes; smaller shapes occlude fewer masks.
    """
    image = _background(height, width, rng, noise_std)
    draw = ImageDraw.Draw(image)
    labels = Image.new("I", (width, height), 0)  # which shape is visible at each pixel
    label_draw = ImageDraw.Draw(labels)
    for index in range(1, num_masks + 1):
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        _draw_shape([draw, label_draw], [fill, index], height, width, rng, max_radius)
    label_array = np.asarray(labels)
    annotations = []
    for index in range(1, num_masks + 1):
        mask = np.asfortranarray(label_array == index, dtype=np.uint8)
        if not mask.any():
            continue
        rle = mask_utils.encode(mask)
        ys, xs = np.nonzero(mask)
        pick = int(rng.integers(xs.size))
        annotations.append(
            {
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": int(mask_utils.area(rle)),
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "predicted_iou": round(float(rng.uniform(0.8, 1.0)), 6),
                "point_coords": [[float(xs[pick]), float(ys[pick])]],
                "crop_box": [0.0, 0.0, float(width), float(height)],
                "id": image_id * 1000 + index,
                "stability_score": round(float(rng.uniform(0.85, 1.0)), 6),
            }
        )
    document = {
        "image": {"image_id": image_id, "width": width, "height": height, "file_name": f"sa_{image_id}.jpg"},
        "annotations": annotations,
    }
    return _encode(image, "JPEG"), json.dumps(document).encode()


SA1B_SIZE = (1500, 2250)  # (height, width) of a typical SA-1B image as Meta ships it
WEB_SIZE = (384, 512)


def make_sa1b_sized_files(
    image_id: int, rng: np.random.Generator, num_masks: int = 128, size: tuple[int, int] = SA1B_SIZE
) -> tuple[bytes, bytes]:
    """(``sa_<id>.jpg``, ``sa_<id>.json``) at SA-1B's size and mask count, for throughput benchmarks.

    SA-1B's masks overlap (parts and wholes from the automatic mask generator) and have ragged outlines,
    so each mask here is its own polygon of 24-64 jittered vertices, drawn on its own canvas: every mask
    stays in the file at its full size, and its RLE string has the many runs of a ragged outline.
    """
    height, width = size
    image = _background(height, width, rng, noise_std=5)
    draw = ImageDraw.Draw(image)
    annotations = []
    for index in range(1, num_masks + 1):
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        radius = rng.uniform(0.02, 0.3) * min(height, width)
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(24, 65))))
        radii = radius * rng.uniform(0.6, 1.0, angles.size)
        points = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii, strict=True)]
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon(points, fill=1)
        draw.polygon(points, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        rle = mask_utils.encode(np.asfortranarray(np.asarray(canvas)))
        annotations.append(
            {
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": int(mask_utils.area(rle)),
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "predicted_iou": round(float(rng.uniform(0.8, 1.0)), 6),
                "point_coords": [[float(cx), float(cy)]],
                "crop_box": [0.0, 0.0, float(width), float(height)],
                "id": image_id * 1000 + index,
                "stability_score": round(float(rng.uniform(0.85, 1.0)), 6),
            }
        )
    document = {
        "image": {"image_id": image_id, "width": width, "height": height, "file_name": f"sa_{image_id}.jpg"},
        "annotations": annotations,
    }
    return _encode(image, "JPEG"), json.dumps(document).encode()


def write_throughput_data(
    out_dir: str, seed: int, num_sam_images: int, num_web_images: int
) -> tuple[str, str]:
    """``out_dir/sam/sa_000000.tar`` of SA-1B-sized samples and ``out_dir/clip/00000.tar`` of 512x384 JPEGs."""
    rng = np.random.default_rng((seed, 2))
    sam_members = []
    for image_id in range(1, num_sam_images + 1):
        jpg, annotation = make_sa1b_sized_files(image_id, rng)
        sam_members += [(f"sa_{image_id}.jpg", jpg), (f"sa_{image_id}.json", annotation)]
    web_members = []
    for index in range(num_web_images):
        key = f"{index:09d}"
        web_members += [
            (f"{key}.jpg", make_web_image(*WEB_SIZE, rng, noise_std=10)),
            (f"{key}.txt", b"caption"),
        ]
    sam_tar, web_tar = (
        os.path.join(out_dir, "sam", "sa_000000.tar"),
        os.path.join(out_dir, "clip", "00000.tar"),
    )
    write_tar(sam_tar, sam_members)
    write_tar(web_tar, web_members)
    return sam_tar, web_tar


def write_tar(path: str, members: Iterable[tuple[str, bytes]]) -> None:
    """A tar with fixed metadata (mtime 0, root owner), so the same members give the same bytes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tarfile.open(f"{path}.tmp", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(f"{path}.tmp", path)


@dataclass
class SyntheticData:
    root: str
    clip_shards: list[str]
    sam_shards: list[str]
    sam_train_manifest: str | None = None  # ``samclip-data sa1b-manifest``'s train.txt / val.txt
    sam_val_manifest: str | None = None

    @property
    def clip_pattern(self) -> str:
        return os.path.join(self.root, "clip", f"{{00000..{len(self.clip_shards) - 1:05d}}}.tar")

    @property
    def sam_pattern(self) -> str:
        return os.path.join(self.root, "sam", f"sa_{{000000..{len(self.sam_shards) - 1:06d}}}.tar")


def write_clip_shards(
    out_dir: str, seed: int, num_shards: int, samples_per_shard: int, size_range: tuple[int, int]
) -> list[str]:
    """img2dataset layout: ``NNNNN.tar`` of ``<9-digit key>.{jpg,png,webp}/.txt/.json`` + ``NNNNN_stats.json``."""
    paths = []
    for shard in range(num_shards):
        rng = np.random.default_rng((seed, 0, shard))
        members = []
        for index in range(samples_per_shard):
            key = f"{shard:05d}{index:04d}"
            height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
            ext, fmt = {1: ("png", "PNG"), 2: ("webp", "WEBP")}.get(index, ("jpg", "JPEG"))
            caption = f"a synthetic picture number {index} of shard {shard}"
            meta = {
                "url": f"https://example.invalid/{key}.{ext}",
                "caption": caption,
                "key": key,
                "status": "success",
                "error_message": None,
                "width": width,
                "height": height,
                "original_width": width,
                "original_height": height,
            }
            members += [
                (f"{key}.{ext}", make_web_image(height, width, rng, fmt)),
                (f"{key}.txt", caption.encode()),
                (f"{key}.json", json.dumps(meta).encode()),
            ]
        path = os.path.join(out_dir, f"{shard:05d}.tar")
        write_tar(path, members)
        stats = {
            "count": samples_per_shard,
            "successes": samples_per_shard,
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "status_dict": {"success": samples_per_shard},
        }
        with open(os.path.join(out_dir, f"{shard:05d}_stats.json"), "w") as f:
            json.dump(stats, f, indent=4)
        _write_parquet_sidecar(os.path.join(out_dir, f"{shard:05d}.parquet"), members)
        paths.append(path)
    return paths


def _write_parquet_sidecar(path: str, members: list[tuple[str, bytes]]) -> None:
    # img2dataset writes a parquet of the shard's metadata; it is only written when pyarrow is installed
    # (it is not a samclip dependency), and the streams never read it.
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    rows = [json.loads(data) for name, data in members if name.endswith(".json")]
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_sa1b_shards(
    out_dir: str,
    seed: int,
    num_shards: int,
    images_per_shard: int,
    size_range: tuple[int, int],
    num_masks: int,
) -> list[str]:
    """SA-1B layout: ``sa_NNNNNN.tar`` of ``sa_<id>.jpg`` + ``sa_<id>.json`` (ids unique across tars)."""
    paths = []
    for shard in range(num_shards):
        rng = np.random.default_rng((seed, 1, shard))
        members = []
        for index in range(images_per_shard):
            image_id = 1 + shard * images_per_shard + index
            height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
            jpg, annotation = make_sa1b_files(image_id, height, width, num_masks, rng)
            members += [(f"sa_{image_id}.jpg", jpg), (f"sa_{image_id}.json", annotation)]
        path = os.path.join(out_dir, f"sa_{shard:06d}.tar")
        write_tar(path, members)
        paths.append(path)
    return paths


def make_synthetic_data(
    out_dir: str,
    seed: int = 0,
    num_clip_shards: int = 4,
    clip_samples_per_shard: int = 12,
    clip_size_range: tuple[int, int] = (64, 160),
    num_sam_shards: int = 2,
    sam_images_per_shard: int = 6,
    sam_size_range: tuple[int, int] = (96, 192),
    sam_masks_per_image: int = 6,
    sam_val_fraction: float = 0.25,
) -> SyntheticData:
    """Write ``out_dir/clip/{00000..}.tar`` and ``out_dir/sam/sa_{000000..}.tar``; same seed, same bytes.

    ``sam/train.txt`` and ``sam/val.txt`` split the SA-1B images as ``samclip-data sa1b-manifest`` does,
    ``sam_val_fraction`` of them held out (D_CLIP is split by key hash in the stream, nothing to write).
    """
    clip = write_clip_shards(
        os.path.join(out_dir, "clip"), seed, num_clip_shards, clip_samples_per_shard, clip_size_range
    )
    sam = write_sa1b_shards(
        os.path.join(out_dir, "sam"),
        seed,
        num_sam_shards,
        sam_images_per_shard,
        sam_size_range,
        sam_masks_per_image,
    )
    num_images = num_sam_shards * sam_images_per_shard
    train_ids, val_ids = split_subset(range(1, num_images + 1), 1.0, sam_val_fraction, seed)
    train_manifest, val_manifest = (os.path.join(out_dir, "sam", n) for n in ("train.txt", "val.txt"))
    write_manifest(train_manifest, train_ids)
    write_manifest(val_manifest, val_ids)
    return SyntheticData(
        os.path.abspath(out_dir),
        clip,
        sam,
        os.path.abspath(train_manifest),
        os.path.abspath(val_manifest),
    )
