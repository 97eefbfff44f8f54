"""Shards in the real layouts, built member by member so tests can plant bad samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from samclip.data.synth import make_sa1b_files, make_web_image, write_tar


def web_members(shard: int, count: int, seed: int = 0, size: int = 40) -> list[tuple[str, bytes]]:
    """img2dataset members of ``count`` small JPEG samples with 9-digit keys."""
    rng = np.random.default_rng((seed, shard))
    members = []
    for index in range(count):
        key = f"{shard:05d}{index:04d}"
        members += [
            (f"{key}.jpg", make_web_image(size, size + 8, rng)),
            (f"{key}.txt", b"a caption"),
            (f"{key}.json", json.dumps({"key": key, "status": "success"}).encode()),
        ]
    return members


def write_web_shards(directory: Path, sizes: list[int], seed: int = 0, first_shard: int = 0) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, count in enumerate(sizes, first_shard):
        path = str(directory / f"{shard:05d}.tar")
        write_tar(path, web_members(shard, count, seed))
        paths.append(path)
    return paths


def sa1b_members(
    first_id: int, count: int, seed: int = 0, size: int = 48, num_masks: int = 4
) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng((seed, first_id))
    members = []
    for image_id in range(first_id, first_id + count):
        jpg, annotation = make_sa1b_files(image_id, size, size + 16, num_masks, rng)
        members += [(f"sa_{image_id}.jpg", jpg), (f"sa_{image_id}.json", annotation)]
    return members
