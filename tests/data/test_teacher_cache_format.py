"""The teacher-cache format: caches written before teachers were named (format 1) stay readable for training,
a view's row is read alone, and a manifest this samclip cannot read is a one-line error naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from constructed import write_tiny_assets

from samclip.cli.data import main as data_cli
from samclip.data.clip_stream import ClipStream
from samclip.data.sam_stream import SamStream
from samclip.data.teacher_cache import SidecarShard, StaleCacheError, TeacherCache, from_bf16_bits

VIEWS = 3
# The keys of format 1's manifest.json (its CacheManifest's fields), which format 2 extends.
FORMAT1_KEYS = (
    "kind", "teacher", "shards", "views_per_sample", "crop_scale", "view_seed", "embed_dim", "image_size", "version",
)  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache_format")
    write_tiny_assets(root)
    data_cli(
        ["cache-teacher", "clip", str(root / "data/clip/{00000..00003}.tar"), "--out", str(root / "clip_cache"),
         "--model-name", "samclip-tiny-clip", "--pretrained", str(root / "clip_tiny.pt"), "--views", str(VIEWS)]
    )  # fmt: skip
    data_cli(
        ["cache-teacher", "sam", str(root / "data/sam/sa_{000000..000001}.tar"), "--out", str(root / "sam_cache"),
         "--model-name", "samclip_tiny", "--pretrained", str(root / "sam_tiny.pth"), "--image-size", "256"]
    )  # fmt: skip
    return root


def as_format1(cache: Path, out: Path) -> Path:
    """``cache`` as format 1 wrote it: the same sidecars (its ``embeds.npy`` members), its manifest's keys."""
    shutil.copytree(cache, out)
    manifest = json.loads((out / "manifest.json").read_text())
    old = {key: manifest[key] for key in FORMAT1_KEYS}
    old["version"] = 1
    (out / "manifest.json").write_text(json.dumps(old, indent=1) + "\n")
    return out


def clip_batches(assets: Path, cache: Path) -> list:
    stream = ClipStream(
        str(assets / "data/clip/{00000..00003}.tar"), resolutions=[64], base_batch_size=6, base_resolution=64,
        num_workers=0, seed=3, teacher_cache=str(cache),
    )  # fmt: skip
    return [batch for _, batch in zip(range(3), stream, strict=False)]


def test_a_format1_cache_replays_the_same_views_and_embeddings(assets: Path, tmp_path: Path) -> None:
    old = as_format1(assets / "clip_cache", tmp_path / "clip_v1")
    assert TeacherCache(old, "clip").manifest.output_names == ["embedding"]
    for new_batch, old_batch in zip(
        clip_batches(assets, assets / "clip_cache"), clip_batches(assets, old), strict=True
    ):
        assert old_batch.keys == new_batch.keys
        assert torch.equal(old_batch.images, new_batch.images)
        assert torch.equal(old_batch.teacher_embeds, new_batch.teacher_embeds)
    old_sam = as_format1(assets / "sam_cache", tmp_path / "sam_v1")

    def sam_batch(cache: Path) -> object:
        stream = SamStream(
            str(assets / "data/sam/sa_{000000..000001}.tar"), global_batch_size=2, image_size=256,
            masks_per_image=4, num_workers=0, seed=5, teacher_cache=str(cache),
        )  # fmt: skip
        return next(iter(stream))

    assert torch.equal(sam_batch(old_sam).teacher_embeds, sam_batch(assets / "sam_cache").teacher_embeds)


def test_a_format1_cache_is_not_extended_and_an_unknown_format_is_refused(
    assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    old = as_format1(assets / "clip_cache", tmp_path / "clip_v1")
    with pytest.raises(SystemExit) as exit_info:
        data_cli(
            ["cache-teacher", "clip", str(assets / "data/clip/{00000..00003}.tar"), "--out", str(old),
             "--model-name", "samclip-tiny-clip", "--pretrained", str(assets / "clip_tiny.pt"), "--views", str(VIEWS)]
        )  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{old / 'manifest.json'}: a format-1 cache" in error
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "version": 7}))
    with pytest.raises(
        StaleCacheError, match=rf"{old / 'manifest.json'}: format 7 is not one this samclip reads"
    ):
        TeacherCache(old)


def test_one_row_read_alone_is_that_row_of_the_whole_member(assets: Path) -> None:
    sidecar = SidecarShard(str(assets / "clip_cache/00001.tar"))
    for key in sorted(sidecar.index)[:4]:
        whole = sidecar.read(key, "embeds.npy")
        assert whole.shape[0] == VIEWS
        for row in range(VIEWS):
            assert np.array_equal(sidecar.read(key, "embeds.npy", row), whole[row])
        assert torch.equal(from_bf16_bits(sidecar.read(key, "embeds.npy", 1)), from_bf16_bits(whole)[1])
        with pytest.raises(StaleCacheError, match=rf"{key}\.embeds\.npy of shape \(3, 32\) has no row 3"):
            sidecar.read(key, "embeds.npy", VIEWS)
