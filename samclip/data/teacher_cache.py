"""Teacher-embedding caches: the frozen teachers' outputs computed once, stored beside the data, replayed.

Layout of a cache directory (written by ``samclip-data cache-teacher``)::

    DIR/manifest.json         kind (clip | sam), the teacher's identity, the data shards (name, size),
                              and for clip: views_per_sample (K), crop_scale, view_seed, embed_dim
    DIR/<shard name>          one webdataset tar per data shard, the same relative name, with per sample
                              <key>.views.npy   int32 [K, 5]: left, top, width, height, flip  (clip only)
                              <key>.embeds.npy  int16 [K, D] (clip) or [256, 64, 64] (sam): bf16 bits
    DIR/done/<shard name>.json  the record of a finished sidecar (samples, skipped, bytes); resume skips it

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
FORMAT_VERSION = 1
KINDS = ("clip", "sam")


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

    def read(self, key: str, ext: str) -> np.ndarray:
        entry = self.index.get(key, {}).get(ext)
        if entry is None:
            raise StaleCacheError(
                f"teacher cache sidecar {self.path} has no {ext} for sample {key!r} "
                "(the cache was written for other data: regenerate it with samclip-data cache-teacher)"
            )
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - held for the worker's life
        self._file.seek(entry[0])
        return read_npy(self._file.read(entry[1]))


@dataclass
class CacheManifest:
    kind: str
    teacher: dict[str, Any]
    shards: list[dict[str, Any]]  # name, size
    views_per_sample: int | None = None
    crop_scale: tuple[float, float] | None = None
    view_seed: int = 0
    embed_dim: int | None = None
    image_size: int | None = None  # the D_SAM frame the SAM embeddings were computed in
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
        if manifest.version != FORMAT_VERSION or manifest.kind not in KINDS:
            raise StaleCacheError(
                f"teacher cache {path}: format {manifest.version} of kind {manifest.kind!r} is not "
                f"format {FORMAT_VERSION} of {KINDS}"
            )
        if manifest.crop_scale is not None:
            manifest.crop_scale = (float(manifest.crop_scale[0]), float(manifest.crop_scale[1]))
        return manifest

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
    """A cache directory opened for training: checks it against the teacher and the stream's shards."""

    def __init__(self, directory: str | os.PathLike, kind: str) -> None:
        self.directory = str(directory)
        self.manifest = CacheManifest.read(directory)
        if self.manifest.kind != kind:
            raise StaleCacheError(
                f"teacher cache {directory} holds {self.manifest.kind} teacher outputs, not {kind}'s"
            )
        self.kind = kind
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

    def clip_entry(self, url: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(views int32 [K, 5], embeddings as bf16 bits [K, D]) of sample ``key`` of data shard ``url``."""
        sidecar = self._sidecar(url)
        return sidecar.read(key, "views.npy"), sidecar.read(key, "embeds.npy")

    def sam_entry(self, url: str, key: str) -> torch.Tensor:
        """The SAM image embedding [256, h, w] (float32 of the stored bf16) of sample ``key`` of ``url``."""
        return from_bf16_bits(self._sidecar(url).read(key, "embeds.npy"))


def open_sam_cache(directory: str, shards: Sequence[str], image_size: int) -> TeacherCache:
    """The SAM teacher cache for these shards, refused if it misses one or framed the images otherwise."""
    cache = TeacherCache(directory, "sam")
    if cache.manifest.image_size != image_size:
        raise StaleCacheError(
            f"teacher cache {directory} holds embeddings of a {cache.manifest.image_size} frame, "
            f"the stream's is {image_size}"
        )
    cache.check_shards(shards)
    return cache
