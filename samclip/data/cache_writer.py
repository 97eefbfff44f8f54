"""``samclip-data cache-teacher``: run a frozen teacher once over the data and store its outputs.

Runs as one process or under ``torchrun`` (rank r writes the shards r, r + world, ...). A finished
sidecar is recorded in ``DIR/done/``; a rerun skips those, so an interrupted run resumes. ``verify``
recomputes random cached entries with the teacher online and reports the largest deviation.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from samclip.data.bad_samples import BadSample
from samclip.data.clip_stream import CropView, decode_clip_sample, draw_crop_view, render_crop_view
from samclip.data.images import decode_image, to_tensor
from samclip.data.manifest import read_manifest
from samclip.data.sa1b import image_id_from_key
from samclip.data.shards import expand_urls, iter_shard
from samclip.data.teacher_cache import (
    DONE_DIR,
    CacheManifest,
    SidecarShard,
    StaleCacheError,
    bf16_bits,
    describe_teacher,
    from_bf16_bits,
    npy_bytes,
    shard_names,
    shard_size,
    view_generator,
)
from samclip.models.preprocess import SAM_PAD_VALUE, pad_to_square, resized_longest_side_shape

logger = logging.getLogger(__name__)


@dataclass
class ShardRecord:
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    bytes: int = 0

    def skip(self, kind: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1


def sam_frame_image(jpg: bytes, image_size: int) -> torch.Tensor:
    """An SA-1B image as D_SAM frames it for the teacher: longest side to ``image_size``, padded; [3, S, S]."""
    image = decode_image(jpg)
    height, width = resized_longest_side_shape(image.height, image.width, image_size)
    resized = to_tensor(image.resize((width, height), Image.Resampling.BILINEAR))
    return pad_to_square(resized[None], image_size, SAM_PAD_VALUE)[0]


def clip_views(
    image: Image.Image, key: str, num_views: int, crop_scale: tuple[float, float], seed: int
) -> list[CropView]:
    rng = view_generator(key, seed)
    return [draw_crop_view(image.width, image.height, crop_scale, rng) for _ in range(num_views)]


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


class CacheWriter:
    """Writes a cache of ``kind`` for ``teacher`` over ``urls`` into ``out``; ``run()`` does this rank's share."""

    def __init__(
        self,
        kind: str,
        teacher: torch.nn.Module,
        urls: str | Sequence[str],
        out: str,
        *,
        identity: dict,
        num_views: int = 1,
        crop_scale: Sequence[float] = (0.9, 1.0),
        view_seed: int = 0,
        image_size: int = 1024,
        batch_size: int = 16,
        keep_ids: frozenset[int] | None = None,
        device: torch.device | str = "cpu",
        autocast: torch.dtype | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.kind = kind
        self.teacher = teacher
        self.shards = expand_urls(urls)
        self.names = shard_names(self.shards)
        self.out = out
        self.batch_size = batch_size
        self.keep_ids = keep_ids
        self.device = torch.device(device)
        self.autocast = autocast
        self.rank, self.world_size = rank, world_size
        scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.manifest = CacheManifest(
            kind=kind,
            teacher=identity,
            shards=[{"name": n, "size": shard_size(u)} for n, u in zip(self.names, self.shards, strict=True)],
            views_per_sample=num_views if kind == "clip" else None,
            crop_scale=scale if kind == "clip" else None,
            view_seed=view_seed,
            embed_dim=int(teacher.embed_dim) if kind == "clip" else None,
            image_size=image_size if kind == "sam" else None,
        )

    def prepare_manifest(self) -> None:
        """Rank 0: write the manifest, or check that an existing one (a resumed run) describes the same cache."""
        path = Path(self.out)
        if (path / "manifest.json").is_file():
            existing = CacheManifest.read(path).to_json()
            ours = self.manifest.to_json()
            differing = sorted(k for k in ours if existing.get(k) != ours[k])
            if differing:
                raise StaleCacheError(
                    f"{path} already holds a cache of other settings ({', '.join(differing)} differ; "
                    f"it was written by {describe_teacher(existing['teacher'])}): use another --out"
                )
            return
        self.manifest.write(path)

    def my_shards(self) -> list[tuple[str, str]]:
        return [
            (url, name)
            for i, (url, name) in enumerate(zip(self.shards, self.names, strict=True))
            if i % self.world_size == self.rank and not self.done_path(name).is_file()
        ]

    def done_path(self, name: str) -> Path:
        return Path(self.out) / DONE_DIR / f"{name}.json"

    def run(self) -> list[ShardRecord]:
        todo = self.my_shards()
        records = []
        progress = tqdm(
            total=len(todo), unit="shard", disable=self.rank != 0, desc=f"{self.kind} teacher cache"
        )
        for url, name in todo:
            records.append(self._write_shard(url, name))
            progress.update(1)
            progress.set_postfix(samples=sum(r.samples for r in records))
        progress.close()
        return records

    def _write_shard(self, url: str, name: str) -> ShardRecord:
        sidecar = Path(self.out) / name
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        partial = sidecar.with_name(sidecar.name + ".partial")
        record = ShardRecord()
        with tarfile.open(partial, "w") as tar:
            for keys, inputs, extras in self._batches(url, record):
                outputs = self._encode(inputs)
                start = 0
                for key, extra in zip(keys, extras, strict=True):
                    if self.kind == "clip":
                        count = len(extra)
                        _add_member(tar, f"{key}.views.npy", npy_bytes(extra))
                        _add_member(
                            tar, f"{key}.embeds.npy", npy_bytes(bf16_bits(outputs[start : start + count]))
                        )
                        start += count
                    else:
                        _add_member(tar, f"{key}.embeds.npy", npy_bytes(bf16_bits(outputs[start])))
                        start += 1
                    record.samples += 1
        partial.replace(sidecar)
        record.bytes = sidecar.stat().st_size
        done = self.done_path(name)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(record.__dict__) + "\n")
        return record

    def _batches(self, url: str, record: ShardRecord) -> Iterator[tuple[list[str], torch.Tensor, list]]:
        """(keys, teacher inputs, per-key extras) of about ``batch_size`` images, bad samples counted."""
        keys: list[str] = []
        inputs: list[torch.Tensor] = []
        extras: list = []
        for _, raw in iter_shard(url, 0, 1, 0):
            key = raw["__key__"]
            try:
                if self.kind == "clip":
                    key, image = decode_clip_sample(raw)
                    views = clip_views(
                        image,
                        key,
                        self.manifest.views_per_sample,
                        self.manifest.crop_scale,
                        self.manifest.view_seed,
                    )
                    inputs.extend(render_crop_view(image, v, self.teacher.image_size) for v in views)
                    extras.append(
                        np.array([[v.left, v.top, v.width, v.height, int(v.flip)] for v in views], np.int32)
                    )
                else:
                    if self.keep_ids is not None and image_id_from_key(key) not in self.keep_ids:
                        continue
                    if "jpg" not in raw:
                        raise BadSample("no_image", f"files: {sorted(raw)}")
                    inputs.append(sam_frame_image(raw["jpg"], self.manifest.image_size))
                    extras.append(None)
            except BadSample as bad:
                record.skip(bad.kind)
                logger.warning("%s: skipped %s (%s: %s)", url, key, bad.kind, bad.detail)
                continue
            keys.append(key)
            if len(inputs) >= self.batch_size:
                yield keys, torch.stack(inputs), extras
                keys, inputs, extras = [], [], []
        if keys:
            yield keys, torch.stack(inputs), extras

    @torch.no_grad()
    def _encode(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.device)
        with torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            if self.kind == "clip":
                return self.teacher.encode_image(inputs).float()
            return self.teacher.image_embeddings(inputs).float()


@dataclass
class Verification:
    checked: int
    max_deviation: float  # max |cached - online| over the largest |online| of the same embedding


def verify_cache(
    kind: str,
    teacher: torch.nn.Module,
    directory: str,
    urls: str | Sequence[str],
    num_checks: int,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Verification:
    """Recompute ``num_checks`` random cached entries online (the stored view for clip) and compare."""
    manifest = CacheManifest.read(directory)
    shards = expand_urls(urls)
    names = shard_names(shards)
    rng = np.random.default_rng(seed)
    sidecars = {
        url: SidecarShard(os.path.join(directory, name))
        for url, name in zip(shards, names, strict=True)
        if (Path(directory) / DONE_DIR / f"{name}.json").is_file()
    }
    if not sidecars:
        raise StaleCacheError(f"teacher cache {directory}: no finished sidecar of the given shards to verify")
    picks: dict[str, set[str]] = {}
    for _ in range(num_checks):
        url = list(sidecars)[int(rng.integers(len(sidecars)))]
        keys = sorted(sidecars[url].index)
        if keys:
            picks.setdefault(url, set()).add(keys[int(rng.integers(len(keys)))])
    worst, checked = 0.0, 0
    for url, wanted in picks.items():
        for _, raw in iter_shard(url, 0, 1, 0):
            key = raw["__key__"]
            if key not in wanted:
                continue
            sidecar = sidecars[url]
            cached = from_bf16_bits(sidecar.read(key, "embeds.npy"))
            with torch.no_grad():
                if kind == "clip":
                    _, image = decode_clip_sample(raw)
                    views = sidecar.read(key, "views.npy")
                    k = int(rng.integers(len(views)))
                    left, top, width, height, flip = (int(v) for v in views[k])
                    pixels = render_crop_view(
                        image, CropView(left, top, width, height, bool(flip)), teacher.image_size
                    )
                    online = teacher.encode_image(pixels[None].to(device))[0].float().cpu()
                    cached = cached[k]
                else:
                    framed = sam_frame_image(raw["jpg"], manifest.image_size)
                    online = teacher.image_embeddings(framed[None].to(device))[0].float().cpu()
            if cached.shape != online.shape:
                raise StaleCacheError(
                    f"teacher cache {directory}: {url} {key} holds a {tuple(cached.shape)} embedding, "
                    f"the teacher gives {tuple(online.shape)}"
                )
            scale = float(online.abs().max()) or 1.0
            worst = max(worst, float((cached - online).abs().max()) / scale)
            checked += 1
    return Verification(checked, worst)


def bytes_per_sample(directory: str) -> tuple[int, float]:
    """(samples, mean sidecar bytes per sample) over the finished shards' records."""
    samples = total = 0
    for path in (Path(directory) / DONE_DIR).rglob("*.json"):
        record = json.loads(path.read_text())
        samples += int(record["samples"])
        total += int(record["bytes"])
    return samples, total / max(samples, 1)


def manifest_ids(path: str | None) -> frozenset[int] | None:
    return None if path is None else frozenset(read_manifest(path))
