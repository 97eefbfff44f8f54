"""Sharding, equal batch counts, determinism and exact resume of both streams."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from sample_layouts import sa1b_members, write_web_shards

from samclip.data.clip_stream import ClipStream
from samclip.data.sam_stream import SamStream
from samclip.data.shards import iter_tar


def clip_stream(urls, **overrides) -> ClipStream:
    kwargs = dict(resolutions=[32, 48], base_batch_size=4, base_resolution=32, seed=1, num_workers=2)
    return ClipStream(urls, **{**kwargs, **overrides})


def take(stream, count: int) -> list:
    """The next ``count`` batches, going on into the next epoch as a training loop would."""
    batches: list = []
    while len(batches) < count:
        before = len(batches)
        batches += itertools.islice(iter(stream), count - len(batches))
        assert len(batches) > before, "stream yielded nothing"
    return batches


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys == y.keys
        assert torch.equal(x.images, y.images)


def test_equal_batch_counts_for_two_ranks_and_two_workers(tmp_path) -> None:
    shards = write_web_shards(tmp_path, [3, 11, 5, 9, 2, 7])  # unbalanced on purpose: 37 samples
    counts = []
    for rank in (0, 1):
        stream = clip_stream(shards, rank=rank, world_size=2, resolutions=[32], base_batch_size=4)
        assert stream.steps_per_epoch == 37 // 4
        for epoch in range(2):
            batches = list(stream)
            counts.append(len(batches))
            assert all(b.images.shape[0] == 2 for b in batches)
            assert stream.epoch == epoch + 1
    assert counts == [9, 9, 9, 9]


def test_one_epoch_reads_each_sample_once_across_ranks_and_workers(tmp_path) -> None:
    shards = write_web_shards(tmp_path, [6] * 8)  # balanced: 8 shards over 4 slots, 12 samples per slot
    keys = Counter()
    for rank in (0, 1):
        for batch in clip_stream(shards, rank=rank, world_size=2, resolutions=[32], base_batch_size=4):
            keys.update(batch.keys)
    assert len(keys) == 48 and set(keys.values()) == {1}


def test_fewer_shards_than_slots_split_by_sample(tmp_path) -> None:
    shards = write_web_shards(tmp_path, [16])
    keys = Counter()
    for rank in (0, 1):
        stream = clip_stream(
            shards, rank=rank, world_size=2, resolutions=[32], base_batch_size=4, num_samples=16
        )
        keys.update(k for batch in stream for k in batch.keys)
    assert len(keys) == 16 and set(keys.values()) == {1}


def test_same_seed_same_batches_other_seed_other_batches(synth) -> None:
    a = take(clip_stream(synth.clip_pattern), 4)
    b = take(clip_stream(synth.clip_pattern), 4)
    assert_same_batches(a, b)
    c = take(clip_stream(synth.clip_pattern, seed=2), 4)
    assert [x.keys for x in a] != [x.keys for x in c]


@pytest.mark.parametrize("shuffle_buffer", [0, 6])
@pytest.mark.parametrize("resampled", [False, True])
@pytest.mark.parametrize("stop", [3, 8, 11])  # mid-epoch, at the epoch end, in the second epoch
def test_clip_stream_resumes_exactly(synth, resampled: bool, stop: int, shuffle_buffer: int) -> None:
    options = dict(resampled=resampled, steps_per_epoch=8, shuffle_buffer=shuffle_buffer)
    expected = take(clip_stream(synth.clip_pattern, **options), 18)
    first = clip_stream(synth.clip_pattern, **options)
    seen = take(first, stop)
    resumed = clip_stream(synth.clip_pattern, **options)
    resumed.load_state_dict(first.state_dict())
    seen += take(resumed, 18 - stop)
    assert_same_batches(seen, expected)
    assert len({b.resolution for b in seen}) == 2


def test_sam_stream_resumes_exactly(synth) -> None:
    def make() -> SamStream:
        return SamStream(
            synth.sam_pattern,
            global_batch_size=2,
            image_size=64,
            masks_per_image=3,
            max_points=2,
            seed=4,
            num_workers=2,
            min_mask_area=0,
            return_gt_masks=True,
        )

    expected = take(make(), 5)
    first = make()
    seen = take(first, 2)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    seen += take(resumed, 3)
    for x, y in zip(seen, expected, strict=True):
        assert x.keys == y.keys and torch.equal(x.images, y.images)
        assert all(torch.equal(m, n) for m, n in zip(x.gt_masks, y.gt_masks, strict=True))
        for p, q in zip(x.prompts, y.prompts, strict=True):
            for field in ("boxes", "point_coords", "point_labels"):
                a, b = getattr(p, field), getattr(q, field)
                assert (a is None and b is None) or torch.equal(a, b)


def _shard_of_key(shards: list[str]) -> dict[str, int]:
    return {sample["__key__"]: n for n, url in enumerate(shards) for sample in iter_tar(url)}


def test_shuffle_buffer_mixes_class_sorted_shards(tmp_path) -> None:
    """Shards of one class each: without a buffer every batch is one shard (one class); with one, mixed."""
    shards = write_web_shards(tmp_path, [16] * 6)
    shard_of = _shard_of_key(shards)
    options = dict(resolutions=[32], base_batch_size=8, num_workers=1)

    def classes_per_batch(**extra) -> list[int]:
        return [len({shard_of[k] for k in b.keys}) for b in take(clip_stream(shards, **options, **extra), 12)]

    assert set(classes_per_batch()) == {1}
    mixed = classes_per_batch(shuffle_buffer=24)
    assert min(mixed) >= 2 and sum(mixed) / len(mixed) >= 2.5, mixed
    # A function of (seed, epoch, rank): the same seed gives the same order, another seed another.
    a, b = (take(clip_stream(shards, **options, shuffle_buffer=24), 6) for _ in range(2))
    assert_same_batches(a, b)
    c = take(clip_stream(shards, **options, shuffle_buffer=24, seed=2), 6)
    assert [x.keys for x in a] != [x.keys for x in c]


def test_resume_rereads_the_buffer_rather_than_refilling_it(synth) -> None:
    stream = clip_stream(synth.clip_pattern, shuffle_buffer=6, steps_per_epoch=8)
    take(stream, 3)
    state = stream.state_dict()
    assert state["shuffle_buffer"] == 6
    # One short of full after its last draw: a buffer refills before it draws.
    assert all(len(buffer) == 5 for worker in state["buffers"] for buffer in worker)
    with pytest.raises(ValueError, match=r"shuffle_buffer \(saved 6, now 0\)"):
        clip_stream(synth.clip_pattern, steps_per_epoch=8).load_state_dict(state)
    # A checkpoint from before the buffer existed resumes a buffer-less stream exactly as before.
    old = {k: v for k, v in clip_stream(synth.clip_pattern, steps_per_epoch=8).state_dict().items()}
    del old["shuffle_buffer"], old["buffers"]
    clip_stream(synth.clip_pattern, steps_per_epoch=8).load_state_dict(old)


def test_resume_refuses_a_different_layout(synth) -> None:
    stream = clip_stream(synth.clip_pattern)
    take(stream, 2)
    state = stream.state_dict()
    other = clip_stream(synth.clip_pattern, num_workers=3)
    with pytest.raises(ValueError, match=r"num_workers \(saved 2, now 3\)"):
        other.load_state_dict(state)
    other.load_state_dict(state, strict=False)
    assert (other.epoch, other.step) == (0, 2)


def test_weighted_sources_mix_in_proportion(tmp_path) -> None:
    a = write_web_shards(tmp_path / "a", [20, 20])
    b = write_web_shards(tmp_path / "b", [20, 20], first_shard=10)
    stream = clip_stream(
        [a, b], weights=[3, 1], resolutions=[32], base_batch_size=8, num_samples=400, num_workers=0
    )
    keys = [k for batch in stream for k in batch.keys]
    assert len(keys) == 400
    from_a = sum(k < "00010" for k in keys)
    assert 300 - 30 < from_a < 300 + 30  # binomial(400, 3/4): 3 standard deviations
    with pytest.raises(ValueError, match="must be a list of 3 sources"):
        clip_stream([a, b], weights=[1, 1, 1])


def test_sam_manifest_selects_its_images(tmp_path) -> None:
    from samclip.data.synth import write_tar

    write_tar(str(tmp_path / "sa_000000.tar"), sa1b_members(1, 8))
    (tmp_path / "train.txt").write_text("2\n5\nsa_7\n")
    stream = SamStream(
        str(tmp_path / "sa_000000.tar"),
        global_batch_size=1,
        image_size=64,
        manifest=str(tmp_path / "train.txt"),
        num_workers=0,
        min_mask_area=0,
    )
    assert stream.steps_per_epoch == 3
    assert sorted(k for b in stream for k in b.keys) == ["sa_2", "sa_5", "sa_7"]


def test_sam_reads_a_plain_directory_like_its_tar(tmp_path, synth) -> None:
    import tarfile

    directory = tmp_path / "extracted"
    with tarfile.open(synth.sam_shards[0]) as tar:
        tar.extractall(directory, filter="data")
    options = dict(global_batch_size=2, image_size=64, num_workers=0, min_mask_area=0, num_samples=6)
    from_dir = list(SamStream(str(directory), **options))
    from_tar = list(SamStream(synth.sam_shards[0], **options))
    assert [b.keys for b in from_dir] == [b.keys for b in from_tar]
    assert all(torch.equal(x.images, y.images) for x, y in zip(from_dir, from_tar, strict=True))


def test_pipe_urls_read_like_local_paths(synth) -> None:
    local = take(clip_stream(synth.clip_shards, num_workers=0, steps_per_epoch=6), 6)
    piped = take(
        clip_stream([f"pipe:cat {p}" for p in synth.clip_shards], num_workers=0, steps_per_epoch=6), 6
    )
    assert_same_batches(local, piped)
    with pytest.raises(ValueError, match="give num_samples for non-local shards"):
        clip_stream(f"pipe:cat {synth.clip_shards[0]}")


def test_an_epoch_depends_on_seed_epoch_and_rank_only(synth) -> None:
    sequential = clip_stream(synth.clip_pattern, rank=1, world_size=2, base_batch_size=8, steps_per_epoch=4)
    take(sequential, 4)
    second_epoch = take(sequential, 4)
    jumped = clip_stream(synth.clip_pattern, rank=1, world_size=2, base_batch_size=8, steps_per_epoch=4)
    jumped.set_epoch(1)
    assert_same_batches(take(jumped, 4), second_epoch)


def test_resampled_mode_runs_past_the_data(synth) -> None:
    stream = clip_stream(synth.clip_pattern, resampled=True, resolutions=[32], base_batch_size=8)
    assert stream.steps_per_epoch is None
    batches = list(itertools.islice(iter(stream), 10))  # 80 samples from 48: shards drawn with replacement
    assert len(batches) == 10 and all(len(b.keys) == 8 for b in batches)
