from __future__ import annotations

import re
import tarfile
from pathlib import Path

from samclip.cli.data import main
from samclip.data.clip_stream import ClipStream
from samclip.data.manifest import read_manifest
from samclip.data.sam_stream import SamStream
from samclip.data.synth import make_synthetic_data


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_is_byte_identical_per_seed_and_via_the_cli(tmp_path, capsys) -> None:
    make_synthetic_data(str(tmp_path / "a"), seed=3)
    main(["synth", "--out", str(tmp_path / "b"), "--seed", "3"])
    assert "D_CLIP: 4 shards" in capsys.readouterr().out
    make_synthetic_data(str(tmp_path / "c"), seed=4)
    a, b, c = (tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_synth_writes_the_img2dataset_and_sa1b_layouts(synth) -> None:
    root = Path(synth.root)
    assert sorted(p.name for p in (root / "clip").iterdir() if p.suffix == ".json") == [
        f"{i:05d}_stats.json" for i in range(4)
    ]
    with tarfile.open(synth.clip_shards[0]) as tar:
        names = tar.getnames()
    assert all(re.fullmatch(r"\d{9}\.(jpg|png|webp|txt|json)", n) for n in names)
    assert {n.split(".")[1] for n in names} == {"jpg", "png", "webp", "txt", "json"}
    with tarfile.open(synth.sam_shards[1]) as tar:
        names = tar.getnames()
    assert names[:2] == ["sa_7.jpg", "sa_7.json"] and len(names) == 12


def test_both_streams_read_the_synthetic_data_without_skips(synth) -> None:
    clip = ClipStream(
        synth.clip_pattern, resolutions=[32, 64], base_batch_size=4, base_resolution=32, num_workers=0
    )
    sam = SamStream(synth.sam_pattern, global_batch_size=2, image_size=64, num_workers=0)
    clip_keys = [k for b in clip for k in b.keys]
    sam_keys = [k for b in sam for k in b.keys]
    assert len(set(clip_keys)) == len(clip_keys) > 0 and sorted(set(sam_keys)) == sorted(
        f"sa_{i}" for i in range(1, 13)
    )
    assert not clip.skipped and not sam.skipped


def test_sa1b_manifest_cli(synth, tmp_path, capsys) -> None:
    out = tmp_path / "manifest"
    main(
        [
            "sa1b-manifest",
            synth.sam_pattern,
            "--out-dir",
            str(out),
            "--fraction",
            "0.5",
            "--val-fraction",
            "0.2",
        ]
    )
    assert "12 images in 2 shards -> 5 train" in capsys.readouterr().out
    train, val = read_manifest(str(out / "train.txt")), read_manifest(str(out / "val.txt"))
    assert len(train) == 5 and len(val) == 1 and not train & val and train | val <= set(range(1, 13))
    stream = SamStream(
        synth.sam_pattern, global_batch_size=1, image_size=64, manifest=str(out / "train.txt"), num_workers=0
    )
    assert sorted(int(k[3:]) for b in stream for k in b.keys) == sorted(train)
