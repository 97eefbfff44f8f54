"""Each kind of bad sample is skipped and counted; only a broken shard list or a high skip rate stops a run."""

from __future__ import annotations

import json
import logging
import tarfile

import pytest
from sample_layouts import sa1b_members, web_members, write_web_shards

from samclip.data.bad_samples import SkipRateExceeded
from samclip.data.clip_stream import ClipStream
from samclip.data.sam_stream import SamStream
from samclip.data.synth import write_tar


def cut_inside_member(path: str, member_name: str) -> None:
    """Truncate a tar in the middle of ``member_name``'s data, as an interrupted copy would."""
    with tarfile.open(path) as tar:
        member = tar.getmember(member_name)
    with open(path, "r+b") as f:
        f.truncate(member.offset_data + member.size // 2)


def test_clip_bad_samples_are_skipped_and_counted(tmp_path, caplog) -> None:
    members = web_members(0, 6)
    jpg = dict(members)["000000001.jpg"]
    members += [
        ("000000100.txt", b"a caption without its image"),
        ("000000100.json", b"{}"),
        ("000000101.jpg", jpg[: len(jpg) // 2]),
        ("000000102.jpg", b"<html>404 not found</html>"),
    ]
    write_tar(str(tmp_path / "00000.tar"), members)
    write_tar(str(tmp_path / "00001.tar"), web_members(1, 6))
    cut_inside_member(str(tmp_path / "00001.tar"), "000010003.json")  # samples 0..2 of it survive

    stream = ClipStream(
        [str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")],
        resolutions=[32],
        base_batch_size=1,
        base_resolution=32,
        num_workers=0,
        steps_per_epoch=10,
        max_skip_fraction=0.5,
    )
    with caplog.at_level(logging.WARNING, logger="samclip.data"):
        keys = [k for batch in stream for k in batch.keys]
    assert any(
        "'000000101'" in r.message and "00000.tar" in r.message and "truncated_image" in r.message
        for r in caplog.records
    )
    good = {f"00000{i:04d}" for i in range(6)} | {f"00001{i:04d}" for i in range(3)}
    assert set(keys[:9]) == good and keys[9] in good
    assert dict(stream.skipped) == {
        "skipped/no_image": 1,
        "skipped/truncated_image": 1,
        "skipped/undecodable_image": 1,
        "skipped/unreadable_shard": 1,
    }


def test_sam_bad_samples_are_skipped_and_counted(tmp_path) -> None:
    members = dict(sa1b_members(1, 9))
    annotation = json.loads(members["sa_5.json"])
    annotation["annotations"][0]["segmentation"]["counts"] = annotation["annotations"][0]["segmentation"][
        "counts"
    ][:-3]
    empty = json.loads(members["sa_6.json"])
    empty["annotations"] = []
    jpg = members["sa_8.jpg"]
    broken = {
        "sa_2.json": None,  # missing json
        "sa_3.jpg": None,  # json without image
        "sa_4.json": b'{"image": {"image_id": 4}',  # malformed json
        "sa_5.json": json.dumps(annotation).encode(),  # malformed RLE
        "sa_6.json": json.dumps(empty).encode(),  # no usable annotation
        "sa_7.jpg": b"\x00" * 100,  # undecodable
        "sa_8.jpg": jpg[: len(jpg) // 2],  # truncated
    }
    members.update(broken)
    write_tar(str(tmp_path / "sa_000000.tar"), [(k, v) for k, v in members.items() if v is not None])

    stream = SamStream(
        str(tmp_path / "sa_000000.tar"),
        global_batch_size=1,
        image_size=64,
        masks_per_image=32,
        min_mask_area=0,
        num_workers=0,
        steps_per_epoch=2,
        max_skip_fraction=0.9,
    )
    assert [k for batch in stream for k in batch.keys] == ["sa_1", "sa_9"]
    assert dict(stream.skipped) == {
        f"skipped/{kind}": 1
        for kind in (
            "missing_json",
            "no_image",
            "malformed_json",
            "malformed_rle",
            "no_usable_annotation",
            "undecodable_image",
            "truncated_image",
        )
    }
    assert stream.state_dict()["skipped"] == dict(stream.skipped)  # counts survive a resume


def test_skip_rate_above_the_limit_stops_the_run_naming_the_shard(tmp_path) -> None:
    members = web_members(0, 5) + [(f"00000{i:04d}.jpg", b"not a jpeg") for i in range(10, 15)]
    write_tar(str(tmp_path / "00000.tar"), members)
    write_tar(str(tmp_path / "00001.tar"), web_members(1, 10))
    stream = ClipStream(
        str(tmp_path / "{00000..00001}.tar"),
        resolutions=[32],
        base_batch_size=2,
        base_resolution=32,
        num_workers=2,
        max_skip_fraction=0.2,
        skip_rate_min_samples=5,
    )
    with pytest.raises(SkipRateExceeded, match=r"in shard .*00000\.tar .*undecodable_image"):
        list(stream)


def test_missing_shard_is_a_configuration_error(tmp_path) -> None:
    write_web_shards(tmp_path, [2])
    with pytest.raises(FileNotFoundError, match=r"1 of 2 shards not found, e\.g\. .*00001\.tar"):
        ClipStream(str(tmp_path / "{00000..00001}.tar"), num_samples=2)


def test_a_shard_list_with_nothing_readable_stops_the_run(tmp_path) -> None:
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"this is not a tar file" * 40)
    stream = ClipStream(
        str(tmp_path / "{00000..00002}.tar"),
        resolutions=[32],
        base_batch_size=1,
        base_resolution=32,
        num_workers=0,
        num_samples=3,
    )
    with pytest.raises(RuntimeError, match=r"no usable sample .* is unreadable"):
        next(iter(stream))
    assert stream.skipped == {}  # nothing was consumed
