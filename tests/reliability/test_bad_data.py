"""Malformed SA-1B json of every kind that used to crash is a counted, logged bad sample; the stream goes on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from sample_layouts import sa1b_members, web_members

from samclip.data.bad_samples import SkipRateExceeded
from samclip.data.clip_stream import ClipStream
from samclip.data.sam_stream import SamStream
from samclip.data.synth import write_tar
from samclip.train.distributed import DistEnv
from samclip.train.loop import _skipped_samples


def _edit(members: dict[str, bytes], key: str, edit) -> bytes:
    doc = json.loads(members[f"{key}.json"])
    edit(doc)
    return json.dumps(doc).encode()


def _segmentation(doc: dict) -> dict:
    return doc["annotations"][0]["segmentation"]


# Each planted json and the kind it must be counted as (the exception it used to raise in a comment).
PLANTED = {
    "sa_2": (lambda m: b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed_json"),  # Recursion
    "sa_3": (
        lambda m: _edit(m, "sa_3", lambda d: d["image"].update(height=1e999)),
        "malformed_json",
    ),  # Overflow
    "sa_4": (lambda m: _edit(m, "sa_4", lambda d: _segmentation(d).update(size=0)), "malformed_rle"),  # Type
    "sa_5": (
        lambda m: _edit(m, "sa_5", lambda d: d["image"].update(width="wide")),
        "malformed_json",
    ),  # Value
    "sa_6": (lambda m: _edit(m, "sa_6", lambda d: d.update(image=None)), "malformed_json"),  # Type
    "sa_7": (
        lambda m: _edit(m, "sa_7", lambda d: d["annotations"][0].update(segmentation=None, area="x")),
        "malformed_rle",
    ),
    "sa_8": (lambda m: _edit(m, "sa_8", lambda d: _segmentation(d).update(counts=7)), "malformed_rle"),
    "sa_9": (lambda m: b"\xff\xfe not utf-8", "malformed_json"),
    "sa_10": (lambda m: _edit(m, "sa_10", lambda d: d.update(annotations={"a": 1})), "malformed_json"),
    "sa_11": (lambda m: _edit(m, "sa_11", lambda d: d["annotations"].append([1, 2])), "malformed_json"),
}


def test_malformed_sa1b_json_is_a_counted_bad_sample(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    members = dict(sa1b_members(1, 12))
    for key, (make, _) in PLANTED.items():
        members[f"{key}.json"] = make(members)
    shard = tmp_path / "sa_000000.tar"
    write_tar(str(shard), list(members.items()))
    stream = SamStream(
        str(shard),
        global_batch_size=1,
        image_size=64,
        masks_per_image=4,
        min_mask_area=0,
        num_workers=0,
        steps_per_epoch=2,
        max_skip_fraction=0.95,
    )
    with caplog.at_level(logging.WARNING, logger="samclip.data.bad_samples"):
        keys = [k for batch in stream for k in batch.keys]
    assert keys == ["sa_1", "sa_12"]
    expected: dict[str, int] = {}
    for _, kind in PLANTED.values():
        expected[f"skipped/{kind}"] = expected.get(f"skipped/{kind}", 0) + 1
    assert dict(stream.skipped) == expected
    for key in PLANTED:  # the log names the shard and the key of every bad sample
        assert any(f"'{key}' in shard {shard}" in record.getMessage() for record in caplog.records), key


def test_the_skip_rate_is_checked_over_the_whole_run_across_workers(tmp_path: Path) -> None:
    # 60 % bad samples, but each worker sees fewer than skip_rate_min_samples in any one epoch.
    for shard in range(2):
        good = web_members(shard, 4)  # 3 files per sample
        members = []
        for index in range(4):  # 1-2 bad samples before each good one: 6 of 10 bad
            bad = [(f"{shard:05d}{100 + 2 * index + j:04d}.jpg", b"not a jpeg") for j in range(1 + index % 2)]
            members += bad + good[3 * index : 3 * index + 3]
        write_tar(str(tmp_path / f"{shard:05d}.tar"), members)
    stream = ClipStream(
        str(tmp_path / "{00000..00001}.tar"),
        resolutions=[32],
        base_batch_size=2,
        base_resolution=32,
        num_workers=2,
        num_samples=8,
        max_skip_fraction=0.5,
        skip_rate_min_samples=30,
    )
    for _ in range(3):  # three epochs: no worker ever reaches 30 samples, so none stops the run
        assert len(list(stream)) == 4
    skipped = sum(stream.skipped.values())
    assert stream.num_seen == skipped + 3 * 8 and skipped > 0.5 * stream.num_seen
    assert stream.state_dict()["seen"] == stream.num_seen  # survives a resume
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(
        SkipRateExceeded, match=r"clip: \d+ of \d+ samples skipped over the run.*max_skip_fraction"
    ):
        _skipped_samples({"clip": stream}, env)
    stream.max_skip_fraction = 0.9
    assert _skipped_samples({"clip": stream}, env)["skipped_samples"] == skipped
