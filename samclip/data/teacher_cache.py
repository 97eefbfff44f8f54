"""Teacher-embedding caches: the frozen teachers' outputs computed once, stored beside the data, replayed.

Layout of a cache directory (written by ``samclip-data cache-teacher NAME``)::

    DIR/manifest.json         kind (the teacher's name, ``teacher.<kind>``), the teacher's identity, the data
                              shards (name, size), stream_kind (what the teacher read: ``images``, D_CLIP crop
                              views, or ``prompted_images``, D_SAM frames), outputs (name -> member, shape),
                              for images: views_per_sample (K), crop_scale, view_seed, input_size (the
                              teacher's side); for frames: image_size
    DIR/<shard name>          one webdataset tar per data shard, the same relative name, with per sample
                              <key>.views.npy   int32 [K, 5]: left, top, width, height, flip  (images only)
                              <key>.<output>.npy  int16 bf16 bits per named output: [K, ...] for images
                                                (``embedding`` [K, D], member ``embeds.npy`` as in format 1;
                                                a dense teacher's ``summary`` [K, D] and ``patches``
                                                [K, D, h, w]), [...] for frames (SAM: [256, 64, 64])
    DIR/done/<shard name>.json  the record of a finished sidecar (samples, skipped, bytes); resume skips it

Format 1 (kind ``clip`` or ``sam``, one output in ``<key>.embeds.npy``, no stream_kind or outputs) is read
as format 2 with that one output named ``embedding``; its sidecars are format 2's.

A D_CLIP sample's K views are drawn by the stream's own rule (``draw_crop_view``) from a generator of
(view_seed, key); in epoch ``e`` training replays view ``(e + offset(key)) % K``, so K epochs never
repeat a view and the choice is a function of (key, epoch): exact resume holds. Shard names are paths
relative to the common folder of the cached shards; a training shard matches the entry its path ends with.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from webdataset.tariterators import base_plus_ext

from samclip.data.shards import is_local

MANIFEST = "manifest.json"
DONE_DIR = "done"
FORMAT_VERSION = 2
# What a cached teacher read, by the kind of the stream its term reads (samclip.train.tasks.STREAM_KINDS).
CACHE_STREAM_KINDS = ("images", "prompted_images")
# Format 1: a kind (the teacher then named clip or sam), its stream kind, and its one output's member.
FORMAT1_STREAM_KINDS = {"clip": "images", "sam": "prompted_images"}
FORMAT1_MEMBER = "embeds.npy"
VIEWS_MEMBER = "views.npy"
CachedOutputs = torch.Tensor | dict[str, torch.Tensor]


class StaleCacheError(ValueError):
    """The cache does not belong to this teacher or this data (or lacks an entry): never a silent fallback."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_identity(model_name: str, weights: str | None) -> dict[str, Any]:
    """What names a teacher: its model name and its weights (a file by content hash, else the tag).

    ``weights=None`` (random weights: benchmarks only) cannot be told apart from another random teacher.
    """
    identity: dict[str, Any] = {"model_name": str(model_name), "weights": None, "sha256": None}
    if weights is None:
        return identity
    identity["weights"] = os.path.basename(str(weights)) if os.path.isfile(str(weights)) else str(weights)
    if os.path.isfile(str(weights)):
        identity["sha256"] = file_sha256(weights)
    return identity


def shard_size(url: str) -> int:
    """Bytes of a local tar, or of the files of a sample directory (what a changed shard changes)."""
    if not is_local(url):
        raise ValueError(f"teacher cache: {url} is not a local shard (caches index local tars and folders)")
    if os.path.isdir(url):
        return sum(os.path.getsize(os.path.join(url, n)) for n in os.listdir(url))
    return os.path.getsize(url)


def shard_names(urls: Sequence[str]) -> list[str]:
    """Each shard's path relative to the folder all of them share (unique names, kept subfolders)."""
    paths = [os.path.abspath(u) for u in urls]
    root = os.path.dirname(paths[0]) if len(paths) == 1 else os.path.commonpath(paths)
    if root in paths:  # a single folder-of-samples shard
        root = os.path.dirname(root)
    return [os.path.relpath(p, root) for p in paths]


def stable_hash(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def view_index(key: str, epoch: int, num_views: int, view_seed: int) -> int:
    """Which of a sample's cached views epoch ``epoch`` reads: all K differ over K consecutive epochs."""
    return (epoch + stable_hash(view_seed, key)) % num_views


def view_generator(key: str, view_seed: int) -> np.random.Generator:
    return np.random.default_rng(stable_hash("views", view_seed, key))


def bf16_bits(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy()


def from_bf16_bits(array: np.ndarray) -> torch.Tensor:
    """bf16 values stored as int16 -> float32 (exactly the stored values)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int16)).view(torch.bfloat16).float()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def read_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class SidecarShard:
    """Random access to one sidecar tar by sample key (an index of member offsets; files open lazily).

    Picklable without its open file, so DataLoader workers each open their own.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.index: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isreg():
                        continue
                    key, ext = base_plus_ext(member.name)
                    if key is None:
                        continue
                    self.index.setdefault(key, {})[ext] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError) as exn:
            raise StaleCacheError(f"teacher cache sidecar {path} is unreadable: {exn}") from exn
        self._file: io.BufferedReader | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}

    def read(self, key: str, ext: str, row: int | None = None) -> np.ndarray:
        """The member ``<key>.<ext>``, or only its row ``row`` (a view of a dense output is a small part of it)."""
        entry = self.index.get(key, {}).get(ext)
        if entry is None:
            raise StaleCacheError(
                f"teacher cache sidecar {self.path} has no {ext} for sample {key!r} "
                "(the cache was written for other data: regenerate it with samclip-data cache-teacher)"
            )
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - held for the worker's life
        self._file.seek(entry[0])
        if row is None:
            return read_npy(self._file.read(entry[1]))
        return self._read_row(key, ext, entry, row)

    def _read_row(self, key: str, ext: str, entry: tuple[int, int], row: int) -> np.ndarray:
        file = self._file
        assert file is not None
        version = np.lib.format.read_magic(file)
        header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = header(file)
        if not shape or not 0 <= row < shape[0]:
            raise StaleCacheError(
                f"teacher cache sidecar {self.path}: {key}.{ext} of shape {tuple(shape)} has no row {row}"
            )
        if fortran_order:  # np.save writes C order; another writer's file is read whole
            file.seek(entry[0])
            return read_npy(file.read(entry[1]))[row]
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        file.seek(file.tell() + row * row_bytes)
        return np.frombuffer(bytearray(file.read(row_bytes)), dtype=dtype).reshape(shape[1:])


@dataclass
class CacheManifest:
    kind: str  # the teacher's name in the train config (teacher.<kind>): clip, sam, dino, ...
    teacher: dict[str, Any]
    shards: list[dict[str, Any]]  # name, size
    views_per_sample: int | None = None
    crop_scale: tuple[float, float] | None = None
    view_seed: int = 0
    embed_dim: int | None = None  # the width of an images cache's `embedding` (the CLIP head's check)
    image_size: int | None = None  # the D_SAM frame the teacher's outputs were computed in
    stream_kind: str | None = None  # images | prompted_images (CACHE_STREAM_KINDS)
    input_size: int | None = None  # the side the teacher saw the crop views at (its configured image_size)
    outputs: dict[str, dict[str, Any]] | None = None  # name -> {member: "<name>.npy", shape: per image}
    version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def read(cls, directory: str | os.PathLike) -> CacheManifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"teacher cache {directory}: no {MANIFEST} (write one with samclip-data cache-teacher)"
            )
        try:
            values = json.loads(path.read_text())
            manifest = cls(**values)
        except (json.JSONDecodeError, TypeError) as exn:
            raise StaleCacheError(f"teacher cache {path} is not a cache manifest: {exn}") from exn
        if manifest.version == 1 and manifest.kind in FORMAT1_STREAM_KINDS:
            manifest.stream_kind = FORMAT1_STREAM_KINDS[manifest.kind]
            shape = [manifest.embed_dim] if manifest.embed_dim is not None else None
            manifest.outputs = {"embedding": {"member": FORMAT1_MEMBER, "shape": shape}}
        elif manifest.version == 1:
            raise StaleCacheError(
                f"teacher cache {path}: a format-1 manifest of kind {manifest.kind!r}, "
                f"not one of {sorted(FORMAT1_STREAM_KINDS)}"
            )
        elif manifest.version != FORMAT_VERSION:
            raise StaleCacheError(
                f"teacher cache {path}: format {manifest.version} is not one this samclip reads (1, {FORMAT_VERSION})"
            )
        if manifest.stream_kind not in CACHE_STREAM_KINDS or not manifest.outputs:
            raise StaleCacheError(
                f"teacher cache {path}: stream_kind {manifest.stream_kind!r} is not one of {CACHE_STREAM_KINDS} "
                f"or its outputs ({manifest.outputs!r}) are empty"
            )
        if manifest.crop_scale is not None:
            manifest.crop_scale = (float(manifest.crop_scale[0]), float(manifest.crop_scale[1]))
        return manifest

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs or {})

    def write(self, directory: str | os.PathLike) -> None:
        path = Path(directory) / MANIFEST
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.partial")
        temporary.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        temporary.replace(path)


def describe_teacher(identity: dict[str, Any]) -> str:
    weights = identity.get("weights")
    digest = identity.get("sha256")
    return f"{identity.get('model_name')} ({weights or 'random weights'}{', sha256 ' + digest[:12] if digest else ''})"


class TeacherCache:
    """A cache directory opened for training: checks it against the teacher and the stream's shards.

    ``kind``: the teacher's name the cache must hold (None: any; a stream checks ``stream_kind`` instead,
    the teacher's name is the task's business).
    """

    def __init__(
        self, directory: str | os.PathLike, kind: str | None = None, *, stream_kind: str | None = None
    ) -> None:
        self.directory = str(directory)
        self.manifest = CacheManifest.read(directory)
        if kind is not None and self.manifest.kind != kind:
            raise StaleCacheError(
                f"teacher cache {directory} holds {self.manifest.kind} teacher outputs, not {kind}'s"
            )
        if stream_kind is not None and self.manifest.stream_kind != stream_kind:
            raise StaleCacheError(
                f"teacher cache {Path(directory) / MANIFEST}: its {self.manifest.kind} teacher read "
                f"{self.manifest.stream_kind} (stream kind), this stream is of kind {stream_kind}"
            )
        self.kind = self.manifest.kind
        self._sidecars: dict[str, SidecarShard] = {}
        self._sidecar_of_url: dict[str, str] = {}

    def check_teacher(self, identity: dict[str, Any]) -> None:
        cached = self.manifest.teacher
        fields = ("model_name", "sha256") if identity.get("sha256") else ("model_name", "weights")
        if any(cached.get(f) != identity.get(f) for f in fields):
            raise StaleCacheError(
                f"teacher cache {self.directory} was written by the teacher {describe_teacher(cached)}, "
                f"not by the configured {describe_teacher(identity)}"
            )

    def check_shards(self, urls: Sequence[str]) -> None:
        """Every shard of the stream has a finished sidecar of the same data; the error names the shard."""
        entries = self.manifest.shards
        for url in urls:
            path = os.path.abspath(url)
            matches = [e for e in entries if path == e["name"] or path.endswith(os.sep + e["name"])]
            if len(matches) != 1:
                raise StaleCacheError(
                    f"teacher cache {self.directory}: data shard {url} is "
                    f"{'not in the cache' if not matches else 'ambiguous in the cache'} "
                    f"(it holds {len(entries)} shards, e.g. {entries[0]['name'] if entries else 'none'})"
                )
            entry = matches[0]
            size = shard_size(url)
            if size != entry["size"]:
                raise StaleCacheError(
                    f"teacher cache {self.directory}: data shard {url} changed since the cache was written "
                    f"({size} bytes, the cache's is of {entry['size']})"
                )
            if not (Path(self.directory) / DONE_DIR / f"{entry['name']}.json").is_file():
                raise StaleCacheError(
                    f"teacher cache {self.directory}: the sidecar of data shard {url} is unfinished "
                    "(resume samclip-data cache-teacher)"
                )
            self._sidecar_of_url[url] = os.path.join(self.directory, entry["name"])

    def _sidecar(self, url: str) -> SidecarShard:
        path = self._sidecar_of_url.get(url)
        if path is None:
            self.check_shards([url])
            path = self._sidecar_of_url[url]
        if path not in self._sidecars:
            self._sidecars[path] = SidecarShard(path)
        return self._sidecars[path]

    def views(self, url: str, key: str) -> np.ndarray:
        """The crop views int32 [K, 5] (left, top, width, height, flip) of sample ``key`` of an images cache."""
        return self._sidecar(url).read(key, VIEWS_MEMBER)

    def clip_entry(self, url: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(views int32 [K, 5], the first output's bf16 bits [K, ...]) of sample ``key`` of data shard ``url``."""
        first = next(iter(self.manifest.outputs or {}))
        return self.views(url, key), self._sidecar(url).read(key, self.manifest.outputs[first]["member"])

    def entry(self, url: str, key: str, row: int | None = None) -> CachedOutputs:
        """The teacher's outputs of sample ``key`` (of view ``row`` in an images cache), float32 of the stored
        bf16: the tensor of a cache of one output, else a dict by output name."""
        sidecar = self._sidecar(url)
        outputs = {
            name: from_bf16_bits(sidecar.read(key, spec["member"], row))
            for name, spec in (self.manifest.outputs or {}).items()
        }
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def stack_outputs(entries: Sequence[CachedOutputs]) -> CachedOutputs | None:
    """Per-sample cached outputs -> the batch's (stacked per output name); None for no entries."""
    if not entries:
        return None
    if isinstance(entries[0], torch.Tensor):
        return torch.stack(list(entries))  # type: ignore[arg-type]
    return {name: torch.stack([e[name] for e in entries]) for name in entries[0]}  # type: ignore[index]


def map_outputs(outputs: CachedOutputs | None, fn: Any) -> CachedOutputs | None:
    """``fn`` applied to the tensor, or to each tensor of a dict of outputs (device moves, pinning)."""
    if outputs is None:
        return None
    if isinstance(outputs, torch.Tensor):
        return fn(outputs)
    return {name: fn(value) for name, value in outputs.items()}


def open_sam_cache(directory: str, shards: Sequence[str], image_size: int) -> TeacherCache:
    """The D_SAM-frame teacher cache for these shards, refused if it misses one or framed the images otherwise."""
    cache = TeacherCache(directory, stream_kind="prompted_images")
    if cache.manifest.image_size != image_size:
        raise StaleCacheError(
            f"teacher cache {directory} holds embeddings of a {cache.manifest.image_size} frame, "
            f"the stream's is {image_size}"
        )
    cache.check_shards(shards)
    return cache
