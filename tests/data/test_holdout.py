"""Held-out splits: D_CLIP by key hash (train and held_out partition the keys), SA-1B by the synthetic val.txt."""

from __future__ import annotations

import hashlib

import pytest

from samclip.data.clip_stream import ClipStream
from samclip.data.holdout import KeyHoldout
from samclip.data.manifest import read_manifest
from samclip.data.sam_stream import SamStream
from samclip.data.synth import SyntheticData

SYNTH_CLIP_KEYS = [f"{shard:05d}{index:04d}" for shard in range(4) for index in range(12)]


def _reference_held_out(key: str, fraction: float, seed: int) -> bool:
    """The rule, written from its definition: blake2b-64 of "seed:key" as a fraction of 2**64."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def test_train_and_held_out_partition_the_keys_by_the_keyed_hash() -> None:
    keys = [f"{i:09d}" for i in range(4000)]
    train, held_out = KeyHoldout(0.1, 7, "train"), KeyHoldout(0.1, 7, "held_out")
    kept = {k for k in keys if held_out.keep(k)}
    assert kept == {k for k in keys if _reference_held_out(k, 0.1, 7)}
    assert {k for k in keys if train.keep(k)} == set(keys) - kept
    assert 0.08 < len(kept) / len(keys) < 0.12
    assert kept != {k for k in keys if KeyHoldout(0.1, 8, "held_out").keep(k)}  # the seed matters
    assert all(KeyHoldout(0.1, 7, "all").keep(k) for k in keys)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.0, "split": "held_out"}, "split=held_out needs holdout_fraction > 0"),
        ({"fraction": 1.0, "split": "train"}, "holdout_fraction must be in [0, 1)"),
        ({"fraction": 0.1, "split": "val"}, "split must be one of"),
    ],
)
def test_bad_holdout_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        KeyHoldout(**kwargs)


def test_clip_stream_splits_read_disjoint_keys_and_count_only_their_own(synth: SyntheticData) -> None:
    held_out_keys = {k for k in SYNTH_CLIP_KEYS if _reference_held_out(k, 0.25, 0)}
    common = dict(
        resolutions=[32], base_batch_size=1, base_resolution=32, num_workers=0, holdout_fraction=0.25
    )
    train = ClipStream(synth.clip_pattern, split="train", **common)
    held_out = ClipStream(synth.clip_pattern, split="held_out", train=False, **common)
    assert (train.num_samples, held_out.num_samples) == (48 - len(held_out_keys), len(held_out_keys))
    train_keys = [k for batch in train for k in batch.keys]
    val_keys = [k for batch in held_out for k in batch.keys]
    assert sorted(val_keys) == sorted(held_out_keys)  # one epoch reads each held-out sample once
    assert sorted(train_keys) == sorted(set(SYNTH_CLIP_KEYS) - held_out_keys)


def test_synthetic_sa1b_manifests_split_the_images_and_streams_follow_them(synth: SyntheticData) -> None:
    train, val = read_manifest(synth.sam_train_manifest), read_manifest(synth.sam_val_manifest)
    assert train | val == set(range(1, 13)) and not train & val and len(val) == 3
    stream = SamStream(
        synth.sam_pattern, global_batch_size=1, image_size=64, manifest=synth.sam_val_manifest, num_workers=0
    )
    assert {k for batch in stream for k in batch.keys} == {f"sa_{i}" for i in val}
