"""Subset manifests of SA-1B: text files of image ids selecting a deterministic subset (e.g. the paper's 5.7%)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterable, Sequence

import webdataset as wds
from tqdm import tqdm

from samclip.data.sa1b import image_id_from_key
from samclip.data.shards import list_directory_samples


def read_manifest(path: str) -> frozenset[int]:
    """Image ids, one per line (``123`` or ``sa_123``); blank lines and ``#`` comments ignored."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} not found")
    ids = set()
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            image_id = (
                image_id_from_key(text) if text.startswith("sa_") else (int(text) if text.isdigit() else None)
            )
            if image_id is None:
                raise ValueError(f"{path}:{line_number}: {text!r} is not an SA-1B image id (123 or sa_123)")
            ids.add(image_id)
    if not ids:
        raise ValueError(f"manifest {path} lists no image ids")
    return frozenset(ids)


def write_manifest(path: str, image_ids: Iterable[int]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(f"{i}\n" for i in sorted(image_ids))
    os.replace(tmp, path)


def scan_image_ids(urls: Sequence[str]) -> list[int]:
    """Ids of the SA-1B images in local tars (headers only) or directories that have both jpg and json."""
    ids: list[int] = []
    for url in tqdm(urls, desc="scanning SA-1B shards", unit="shard"):
        if os.path.isdir(url):
            names = {
                key: {n.rsplit(".", 1)[-1].lower() for n in files}
                for key, files in list_directory_samples(url)
            }
        else:
            names = {}
            try:
                with tarfile.open(url, "r:") as tar:
                    for member in tar:
                        key, ext = wds.tariterators.base_plus_ext(member.name)
                        if member.isreg() and key is not None:
                            names.setdefault(key, set()).add(ext.lower())
            except (tarfile.TarError, OSError) as exn:
                raise ValueError(f"cannot read SA-1B shard {url}: {exn}") from exn
        for key, exts in names.items():
            image_id = image_id_from_key(key)
            if image_id is not None and {"jpg", "json"} <= exts:
                ids.append(image_id)
    return ids


def _rank_key(seed: int, image_id: int) -> bytes:
    # A keyed hash (not Python's salted hash()) so the subset is the same on every machine and run.
    return hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()


def split_subset(
    image_ids: Iterable[int], fraction: float, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, val) ids: the ``fraction`` of images with the smallest keyed hash, ``val_fraction`` of them held out.

    Depends only on the set of ids and the seed, not on the order shards were scanned in.
    """
    if not 0 < fraction <= 1 or not 0 <= val_fraction < 1:
        raise ValueError(f"need 0 < fraction <= 1 and 0 <= val_fraction < 1, got {fraction}, {val_fraction}")
    ranked = sorted(set(image_ids), key=lambda i: _rank_key(seed, i))
    subset = ranked[: round(fraction * len(ranked))]
    num_val = round(val_fraction * len(subset))
    return sorted(subset[num_val:]), sorted(subset[:num_val])
