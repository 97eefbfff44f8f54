from __future__ import annotations

import pytest

from samclip.data.clip_stream import ClipStream
from samclip.data.resolution import VariableResolutionSchedule, per_rank_batch_size


def test_batch_scales_with_pixel_count_as_in_the_paper() -> None:
    schedule = VariableResolutionSchedule(
        [224, 448, 1024], base_batch_size=2048, base_resolution=224, world_size=8
    )
    # 2048 * (224/448)^2 = 512; 2048 * (224/1024)^2 = 98.0 -> down to a multiple of 8 ranks = 96.
    assert schedule.global_batch_sizes == {224: 2048, 448: 512, 1024: 96}
    assert schedule.mean_global_batch_size == pytest.approx((2048 + 512 + 96) / 3)


def test_resolution_draw_is_a_function_of_seed_and_step_only() -> None:
    a = VariableResolutionSchedule([224, 448], 2048, 224, seed=3)
    b = VariableResolutionSchedule([224, 448], 2048, 224, seed=3, world_size=4)
    steps = [a.at(s)[0] for s in range(200)]
    assert steps == [b.at(s)[0] for s in reversed(range(200))][::-1]  # order of queries does not matter
    assert set(steps) == {224, 448}
    assert 60 < steps.count(224) < 140  # uniform draw
    assert steps != [VariableResolutionSchedule([224, 448], 2048, 224, seed=4).at(s)[0] for s in range(200)]


@pytest.mark.parametrize("bad", [[224, 450], [0], [100]])
def test_resolutions_must_be_multiples_of_16(bad: list[int]) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        VariableResolutionSchedule(bad, 2048, 224)


def test_per_rank_batch_must_divide() -> None:
    assert per_rank_batch_size(32, 8) == 4
    with pytest.raises(ValueError, match="not divisible by world_size 3"):
        per_rank_batch_size(32, 3)
    with pytest.raises(ValueError, match="smaller than world_size"):
        VariableResolutionSchedule([448], base_batch_size=8, base_resolution=224, world_size=4)


def test_two_ranks_see_the_same_resolution_sequence(synth) -> None:
    streams = [
        ClipStream(
            synth.clip_pattern,
            resolutions=[32, 48, 64],
            base_batch_size=8,
            base_resolution=32,
            seed=5,
            rank=rank,
            world_size=2,
            num_workers=0,
            num_samples=48,
            steps_per_epoch=6,
        )
        for rank in (0, 1)
    ]
    batches = [list(stream) for stream in streams]
    schedule = VariableResolutionSchedule([32, 48, 64], 8, 32, seed=5, world_size=2)
    expected = [schedule.at(step) for step in range(6)]
    for rank in (0, 1):
        assert [(b.resolution, 2 * b.images.shape[0]) for b in batches[rank]] == expected
        assert all(b.images.shape[-2:] == (b.resolution, b.resolution) for b in batches[rank])
    assert len({r for r, _ in expected}) > 1
    # Different ranks draw different samples for the same step.
    assert not set(batches[0][0].keys) & set(batches[1][0].keys)


def test_epoch_length_is_samples_over_the_mean_global_batch(synth) -> None:
    # 8 at 32 px, int(8 * (32/48)^2) = 3 at 48 px: 5.5 samples per step; the synthetic D_CLIP has 48.
    clip = ClipStream(synth.clip_pattern, resolutions=[32, 48], base_batch_size=8, base_resolution=32)
    assert (clip.steps_per_epoch, clip.num_samples) == (48 // 5.5, 48)
    assert ClipStream(synth.clip_pattern, resampled=True).steps_per_epoch is None
    with pytest.raises(ValueError, match=r"num_samples=4 is less than one global batch \(5.5\)"):
        ClipStream(
            synth.clip_pattern, resolutions=[32, 48], base_batch_size=8, base_resolution=32, num_samples=4
        )
