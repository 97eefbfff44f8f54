"""``samclip-data cache-teacher NAME``: run a frozen teacher once over the data and store its named outputs.

Runs as one process or under ``torchrun`` (rank r writes the shards r, r + world, ...). A finished
sidecar is recorded in ``DIR/done/``; a rerun skips those, so an interrupted run resumes. ``verify``
recomputes random cached entries with the teacher online and reports the largest deviation. What the
teacher reads comes from :mod:`samclip.data.cache_inputs` (by stream kind); what it outputs is ``encode``
(by the kind of the term that reads it, ``samclip.train.teacher_cache_plan``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from samclip.data.bad_samples import BadSample
from samclip.data.cache_inputs import CacheInputs, cache_inputs, inputs_of_manifest
from samclip.data.manifest import read_manifest
from samclip.data.shards import expand_urls, iter_shard
from samclip.data.teacher_cache import (
    DONE_DIR,
    FORMAT1_MEMBER,
    FORMAT1_STREAM_KINDS,
    FORMAT_VERSION,
    MANIFEST,
    VIEWS_MEMBER,
    CacheManifest,
    SidecarShard,
    StaleCacheError,
    bf16_bits,
    describe_teacher,
    from_bf16_bits,
    npy_bytes,
    shard_names,
    shard_size,
)

logger = logging.getLogger(__name__)

# A teacher's named outputs of a batch of its inputs [N, 3, S, S] -> {name: [N, ...]}.
TeacherOutputs = Callable[[torch.Tensor], dict[str, torch.Tensor]]
OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The outputs of the two teachers of format 1, for a writer built by hand with kind clip or sam.
FORMAT1_OUTPUTS: dict[str, Callable[[torch.nn.Module], TeacherOutputs]] = {
    "clip": lambda teacher: lambda x: {"embedding": teacher.encode_image(x)},
    "sam": lambda teacher: lambda x: {"embedding": teacher.image_embeddings(x)},
}


@dataclass
class ShardRecord:
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    bytes: int = 0

    def skip(self, kind: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1


def output_member(name: str) -> str:
    """The sidecar member of an output: ``<name>.npy``; ``embedding`` keeps format 1's ``embeds.npy``, so the
    sidecars of a CLIP or SAM cache are the bytes format 1 wrote."""
    return FORMAT1_MEMBER if name == "embedding" else f"{name}.npy"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


class CacheWriter:
    """Writes the cache of teacher ``kind`` (its name) over ``urls`` into ``out``; ``run()`` does this rank's share.

    ``encode`` gives the teacher's named outputs of a batch of its inputs, ``inputs`` what it reads; both
    default to format 1's for a ``kind`` of ``clip`` or ``sam`` (the settings below then configure ``inputs``).
    """

    def __init__(
        self,
        kind: str,
        teacher: torch.nn.Module,
        urls: str | Sequence[str],
        out: str,
        *,
        identity: dict,
        encode: TeacherOutputs | None = None,
        inputs: CacheInputs | None = None,
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
        if (encode is None or inputs is None) and kind not in FORMAT1_OUTPUTS:
            raise ValueError(
                f"a teacher cache writer of {kind!r} needs encode and inputs (built in: {sorted(FORMAT1_OUTPUTS)})"
            )
        self.kind = kind
        self.teacher = teacher
        self.encode = encode or FORMAT1_OUTPUTS[kind](teacher)
        self.inputs = inputs or cache_inputs(
            FORMAT1_STREAM_KINDS[kind],
            input_size=lambda: int(teacher.image_size),
            num_views=num_views,
            crop_scale=(float(crop_scale[0]), float(crop_scale[1])),
            view_seed=view_seed,
            image_size=image_size,
            keep_ids=keep_ids,
        )
        self.shards = expand_urls(urls)
        self.names = shard_names(self.shards)
        self.out = out
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.autocast = autocast
        self.rank, self.world_size = rank, world_size
        self.identity = identity

    def build_manifest(self) -> CacheManifest:
        """The manifest, its outputs' names and shapes from one forward of the teacher on a blank input."""
        side = self.inputs.side
        probe = self._encode(torch.zeros(1, 3, side, side))
        for name in probe:
            if not OUTPUT_NAME.fullmatch(name):
                raise ValueError(
                    f"teacher {self.kind}: output name {name!r} is not an identifier (a member name)"
                )
        outputs = {
            name: {"member": output_member(name), "shape": list(v.shape[1:])} for name, v in probe.items()
        }
        embedding = outputs.get("embedding") if self.inputs.stream_kind == "images" else None
        return CacheManifest(
            kind=self.kind,
            teacher=self.identity,
            shards=[{"name": n, "size": shard_size(u)} for n, u in zip(self.names, self.shards, strict=True)],
            embed_dim=embedding["shape"][-1] if embedding else None,
            stream_kind=self.inputs.stream_kind,
            outputs=outputs,
            **self.inputs.manifest_fields(),
        )

    def prepare_manifest(self) -> None:
        """Rank 0: write the manifest, or check that an existing one (a resumed run) describes the same cache."""
        path = Path(self.out)
        ours = self.build_manifest()
        if (path / MANIFEST).is_file():
            read = CacheManifest.read(path)
            if read.version != FORMAT_VERSION:
                raise StaleCacheError(
                    f"{path / MANIFEST}: a format-{read.version} cache (still readable for training) cannot be "
                    f"extended by this samclip (format {FORMAT_VERSION}): use another --out"
                )
            existing, wanted = read.to_json(), ours.to_json()
            differing = sorted(k for k in wanted if existing.get(k) != wanted[k])
            if differing:
                raise StaleCacheError(
                    f"{path} already holds a cache of other settings ({', '.join(differing)} differ; "
                    f"it was written by {describe_teacher(existing['teacher'])}): use another --out"
                )
            return
        ours.write(path)

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
            for samples, inputs in self._batches(url, record):
                outputs = self._encode(inputs)
                start = 0
                for sample in samples:
                    count = len(sample.inputs)
                    if sample.views is not None:
                        _add_member(tar, f"{sample.key}.{VIEWS_MEMBER}", npy_bytes(sample.views))
                    for output, values in outputs.items():
                        rows = values[start : start + count] if sample.views is not None else values[start]
                        _add_member(tar, f"{sample.key}.{output_member(output)}", npy_bytes(bf16_bits(rows)))
                    start += count
                    record.samples += 1
        partial.replace(sidecar)
        record.bytes = sidecar.stat().st_size
        done = self.done_path(name)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(record.__dict__) + "\n")
        return record

    def _batches(self, url: str, record: ShardRecord) -> Iterator[tuple[list, torch.Tensor]]:
        """(samples, their teacher inputs stacked) of about ``batch_size`` inputs, bad samples counted."""
        samples: list = []
        inputs: list[torch.Tensor] = []
        for _, raw in iter_shard(url, 0, 1, 0):
            try:
                sample = self.inputs.sample(raw)
            except BadSample as bad:
                record.skip(bad.kind)
                logger.warning("%s: skipped %s (%s: %s)", url, raw["__key__"], bad.kind, bad.detail)
                continue
            if sample is None:
                continue
            samples.append(sample)
            inputs.extend(sample.inputs)
            if len(inputs) >= self.batch_size:
                yield samples, torch.stack(inputs)
                samples, inputs = [], []
        if samples:
            yield samples, torch.stack(inputs)

    @torch.no_grad()
    def _encode(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = inputs.to(self.device)
        with torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            return {name: value.float() for name, value in self.encode(inputs).items()}


@dataclass
class Verification:
    checked: int
    max_deviation: float  # max |cached - online| over the largest |online| of the same embedding


def verify_cache(
    encode: TeacherOutputs,
    directory: str,
    urls: str | Sequence[str],
    num_checks: int,
    *,
    input_size: Callable[[], int],
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Verification:
    """Recompute ``num_checks`` random cached entries online (a stored view for crop views) and compare
    every output (``input_size``: the teacher's input side, for crop views)."""
    manifest = CacheManifest.read(directory)
    inputs = inputs_of_manifest(manifest, input_size)
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
            pixels, row = inputs.input_of(raw, sidecar, key, rng)
            with torch.no_grad():
                online = encode(pixels[None].to(device))
            for name, spec in (manifest.outputs or {}).items():
                if name not in online:
                    raise StaleCacheError(
                        f"teacher cache {directory}: holds the output {name!r}, the teacher gives {sorted(online)}"
                    )
                cached = from_bf16_bits(sidecar.read(key, spec["member"], row))
                value = online[name][0].float().cpu()
                if cached.shape != value.shape:
                    raise StaleCacheError(
                        f"teacher cache {directory}: {url} {key} holds a {tuple(cached.shape)} {name}, "
                        f"the teacher gives {tuple(value.shape)}"
                    )
                scale = float(value.abs().max()) or 1.0
                worst = max(worst, float((cached - value).abs().max()) / scale)
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
