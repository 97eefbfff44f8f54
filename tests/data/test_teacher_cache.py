"""Teacher caches: what ``samclip-data cache-teacher`` stores equals the teachers online, replays exactly,
and is refused when it belongs to other data or another teacher."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from constructed import write_tiny_assets
from omegaconf import OmegaConf

from samclip.cli.data import main as data_cli
from samclip.data.clip_stream import ClipStream, draw_crop_view
from samclip.data.sam_stream import SamStream
from samclip.data.teacher_cache import (
    StaleCacheError,
    TeacherCache,
    from_bf16_bits,
    npy_bytes,
    read_npy,
    view_generator,
)
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.train import builder

VIEWS = 3
CLIP_SIDE = 64  # samclip-tiny-clip's input size: the online teacher then sees exactly the student's pixels
SAM_FRAME = 256  # samclip_tiny's frame
BF16_REL = 2.0**-7  # two bf16 roundings (the cache's and the comparison's) relative to the largest value


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache_assets")
    write_tiny_assets(root)
    clip_cache(root / "data/clip/{00000..00003}.tar", root / "clip_cache", root / "clip_tiny.pt")
    sam_cache(root / "data/sam/sa_{000000..000001}.tar", root / "sam_cache", root / "sam_tiny.pth")
    return root


def clip_cache(urls: Path, out: Path, pretrained: Path, *extra: str) -> None:
    args = ["cache-teacher", "clip", str(urls), "--out", str(out), "--model-name", "samclip-tiny-clip"]
    data_cli([*args, "--pretrained", str(pretrained), "--views", str(VIEWS), "--verify", "4", *extra])


def sam_cache(urls: Path, out: Path, checkpoint: Path, *extra: str) -> None:
    args = ["cache-teacher", "sam", str(urls), "--out", str(out), "--model-name", "samclip_tiny"]
    data_cli(
        [*args, "--pretrained", str(checkpoint), "--image-size", str(SAM_FRAME), "--verify", "2", *extra]
    )


def clip_stream(
    assets: Path, cache: Path | None, urls: str | list | None = None, **kwargs: object
) -> ClipStream:
    return ClipStream(
        urls or str(assets / "data/clip/{00000..00003}.tar"),
        resolutions=[CLIP_SIDE],
        base_batch_size=6,
        base_resolution=CLIP_SIDE,
        num_workers=0,
        seed=3,
        shuffle_buffer=4,
        teacher_cache=None if cache is None else str(cache),
        # The cache holds the teacher's view of the fully decoded image; the online comparison decodes so too.
        draft_decode=False,
        **kwargs,
    )


def sam_stream(assets: Path, cache: Path | None) -> SamStream:
    return SamStream(
        str(assets / "data/sam/sa_{000000..000001}.tar"),
        global_batch_size=2,
        image_size=SAM_FRAME,
        masks_per_image=4,
        num_workers=0,
        seed=5,
        teacher_cache=None if cache is None else str(cache),
    )


def assert_bf16_close(cached: torch.Tensor, online: torch.Tensor) -> None:
    scale = online.abs().amax(dim=tuple(range(1, online.dim())), keepdim=True)
    assert ((cached - online).abs() <= BF16_REL * scale).all(), float((cached - online).abs().max())


def test_cached_clip_embeddings_are_the_teachers_of_the_replayed_views(assets: Path) -> None:
    teacher = ClipTeacher("samclip-tiny-clip", str(assets / "clip_tiny.pt"))
    stream = clip_stream(assets, assets / "clip_cache")
    batches = [b for _, b in zip(range(3), stream, strict=False)]
    for batch in batches:
        assert batch.teacher_embeds.shape == (6, teacher.embed_dim)
        assert_bf16_close(batch.teacher_embeds, teacher.encode_image(batch.to("cpu").images))
    # The stored views are the stream's own crop rule drawn from the (view seed, key) generator.
    cache = TeacherCache(assets / "clip_cache", "clip")
    url = stream.sources[0][0]
    key = sorted(cache._sidecar(url).index)[0]
    views, _ = cache.clip_entry(url, key)
    with tarfile.open(url) as tar:
        from PIL import Image

        image = Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read()))
        width, height = image.size
    rng = view_generator(key, 0)
    expected = [draw_crop_view(width, height, (0.9, 1.0), rng) for _ in range(VIEWS)]
    assert views.tolist() == [[v.left, v.top, v.width, v.height, int(v.flip)] for v in expected]


def test_each_epoch_replays_another_view_and_the_choice_is_reproducible(assets: Path) -> None:
    stream = clip_stream(assets, assets / "clip_cache")
    cached = stream.builder.cached
    url = stream.sources[0][0]
    keys = sorted(cached.cache._sidecar(url).index)
    spe = stream.steps_per_epoch
    for key in keys:
        views, embeds = cached.cache.clip_entry(url, key)
        picked = [cached.index(key, epoch * spe, VIEWS) for epoch in range(VIEWS)]
        assert sorted(picked) == list(range(VIEWS)), key  # K epochs, K different views
        assert cached.index(key, VIEWS * spe + 1, VIEWS) == picked[0]
        view, embedding = cached.view(url, key, 2 * spe)
        left, top, width, height, flip = views[picked[2]].tolist()
        assert (view.left, view.top, view.width, view.height, view.flip) == (
            left,
            top,
            width,
            height,
            bool(flip),
        )
        assert torch.equal(embedding, from_bf16_bits(embeds[picked[2]]))
    offsets = {cached.index(key, 0, VIEWS) for key in keys}
    assert len(offsets) > 1  # samples start at different views
    again = clip_stream(assets, assets / "clip_cache")
    first = next(iter(stream))
    assert torch.equal(next(iter(again)).images, first.images)
    online = next(iter(clip_stream(assets, None)))  # the cache changes the crops, not the samples read
    assert online.teacher_embeds is None and online.keys == first.keys


def test_cached_sam_stream_keeps_its_images_and_prompts_and_adds_the_teachers_embeddings(
    assets: Path,
) -> None:
    online = next(iter(sam_stream(assets, None)))
    cached = next(iter(sam_stream(assets, assets / "sam_cache")))
    assert online.teacher_embeds is None and cached.keys == online.keys
    assert torch.equal(cached.images, online.images)
    for a, b in zip(cached.prompts, online.prompts, strict=True):
        assert a.image_index == b.image_index and torch.equal(
            a.boxes if a.boxes is not None else a.point_coords,
            b.boxes if b.boxes is not None else b.point_coords,
        )
    teacher = SamTeacher(assets / "sam_tiny.pth", "samclip_tiny")
    assert_bf16_close(cached.teacher_embeds, teacher.image_embeddings(online.to("cpu").images))


def test_a_changed_or_missing_shard_is_refused_naming_the_shard(assets: Path, tmp_path: Path) -> None:
    data = tmp_path / "clip"
    shutil.copytree(assets / "data/clip", data)
    with open(data / "00002.tar", "ab") as f:
        f.write(b"\0" * 1024)  # still a valid tar, but not the data the cache was written from
    with pytest.raises(StaleCacheError, match=r"00002\.tar changed since the cache was written"):
        clip_stream(assets, assets / "clip_cache", urls=str(data / "{00000..00003}.tar"))
    shutil.copy(data / "00000.tar", data / "00004.tar")
    with pytest.raises(StaleCacheError, match=r"00004\.tar is not in the cache"):
        clip_stream(
            assets,
            assets / "clip_cache",
            urls=[str(data / "00000.tar"), str(data / "00004.tar")],
        )
    with pytest.raises(StaleCacheError, match="crop_scale"):
        clip_stream(assets, assets / "clip_cache", crop_scale=(0.5, 1.0))
    with pytest.raises(StaleCacheError, match="holds clip teacher outputs"):
        TeacherCache(assets / "clip_cache", "sam")


def test_a_cache_of_another_teacher_is_refused(assets: Path, tmp_path: Path) -> None:
    other = tmp_path / "other_clip.pt"
    teacher = ClipTeacher("samclip-tiny-clip", str(assets / "clip_tiny.pt"))
    state = {k: v + 1e-3 for k, v in teacher.model.state_dict().items()}
    torch.save(state, other)

    def cfg(pretrained: Path) -> object:
        return OmegaConf.create(
            {
                "model": {"name": "samclip_tiny"},
                "teacher": {
                    "clip": {
                        "model_name": "samclip-tiny-clip",
                        "pretrained": str(pretrained),
                        "cache": str(assets / "clip_cache"),
                    }
                },
            }
        )

    assert builder.open_teacher_cache(cfg(assets / "clip_tiny.pt"), "clip") == str(assets / "clip_cache")
    with pytest.raises(
        StaleCacheError,
        match=r"teacher.clip.cache: .* written by the teacher samclip-tiny-clip \(clip_tiny.pt",
    ):
        builder.open_teacher_cache(cfg(other), "clip")


def _rewrite_embeddings(sidecar: Path, change: object) -> None:
    with tarfile.open(sidecar) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    with tarfile.open(sidecar, "w") as tar:
        for name, data in members:
            if name.endswith(".embeds.npy"):
                data = npy_bytes(change(read_npy(data)))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_verify_catches_a_corrupted_embedding(
    assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(assets / "clip_cache", cache)

    def corrupt(bits: np.ndarray) -> np.ndarray:
        values = from_bf16_bits(bits)
        values[:, :4] += 0.5 * values.abs().max()  # a few channels of every view
        return values.to(torch.bfloat16).view(torch.int16).numpy()

    for sidecar in sorted(cache.glob("*.tar")):
        _rewrite_embeddings(sidecar, corrupt)
    urls = assets / "data/clip/{00000..00003}.tar"
    # The finished shards are skipped (resume), so this run only verifies.
    with pytest.raises(SystemExit) as exit_info:
        clip_cache(urls, cache, assets / "clip_tiny.pt")
    assert exit_info.value.code != 0
    assert "verify found a deviation" in capsys.readouterr().err


def test_interrupted_generation_resumes_and_writes_the_same_bytes(assets: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(assets / "clip_cache", cache)
    (cache / "00001.tar").unlink()
    (cache / "done/00001.tar.json").unlink()
    kept = (cache / "00002.tar").stat().st_mtime_ns
    clip_cache(assets / "data/clip/{00000..00003}.tar", cache, assets / "clip_tiny.pt")
    assert (cache / "00002.tar").stat().st_mtime_ns == kept  # finished shards are not redone
    assert (cache / "00001.tar").read_bytes() == (assets / "clip_cache/00001.tar").read_bytes()
    with pytest.raises(SystemExit):  # other settings into the same directory
        clip_cache(
            assets / "data/clip/{00000..00003}.tar",
            cache,
            assets / "clip_tiny.pt",
            "--crop-scale",
            "0.5",
            "1",
        )


def test_views_default_to_the_most_epochs_a_stage_reads_d_clip() -> None:
    from samclip.data.cache_teacher_cli import recipe_clip_epochs

    assert recipe_clip_epochs() == 20  # head_probe: 20 epochs (multitask stops at 16, res_adapt runs 3)


def test_ranks_write_disjoint_shares_that_make_up_the_single_process_cache(
    assets: Path, tmp_path: Path
) -> None:
    from samclip.data.cache_writer import CacheWriter
    from samclip.data.teacher_cache import teacher_identity

    teacher = ClipTeacher("samclip-tiny-clip", str(assets / "clip_tiny.pt"))
    identity = teacher_identity("samclip-tiny-clip", str(assets / "clip_tiny.pt"))
    urls = str(assets / "data/clip/{00000..00003}.tar")
    written = []
    for rank in (0, 1):  # what torchrun's two ranks do, one after the other
        writer = CacheWriter(
            "clip", teacher, urls, str(tmp_path), identity=identity, num_views=VIEWS, rank=rank, world_size=2
        )
        if rank == 0:
            writer.prepare_manifest()
        written.append({name for _, name in writer.my_shards()})
        writer.run()
    assert written == [{"00000.tar", "00002.tar"}, {"00001.tar", "00003.tar"}]
    for name in ("00000.tar", "00001.tar", "00002.tar", "00003.tar", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (assets / "clip_cache" / name).read_bytes(), name
