"""The proxy world: readable by the project's own readers, consistent across layouts, deterministic, disjoint."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from proxy_sizes import TINY_WORLD
from pycocotools import mask as mask_utils

from samclip.data import ClipStream, SamStream
from samclip.data.sa1b import parse_annotation_file
from samclip.data.transforms import classification_transform
from samclip.eval.datasets.classification import image_folder_loader
from samclip.eval.datasets.semseg import open_segmentation_dataset
from samclip.proxy.evaluate import PROXY_LAYOUT
from samclip.proxy.world import SHAPES, ProxyWorld, make_scene, sa1b_files, write_world


def _tar_members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _image_ids(shards: list[str]) -> set[int]:
    return {
        parse_annotation_file(data).image_id
        for shard in shards
        for name, data in _tar_members(shard).items()
        if name.endswith(".json")
    }


def _all_image_hashes(world: ProxyWorld) -> dict[str, set[str]]:
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    splits = {}
    for name, shards in (
        ("clip", world.clip_shards),
        ("sam", world.sam_shards),
        ("sam_val", world.sam_val_shards),
    ):
        splits[name] = {digest(d) for s in shards for k, d in _tar_members(s).items() if k.endswith(".jpg")}
    splits["classification"] = {digest(p.read_bytes()) for p in world.classification_root.rglob("*.jpg")}
    splits["semseg"] = {digest(p.read_bytes()) for p in world.semseg_root.rglob("*.jpg")}
    return splits


def test_clip_shards_read_by_clip_stream_with_captions_naming_the_objects(world: ProxyWorld) -> None:
    stream = ClipStream(
        world.clip_shards, resolutions=[64], base_batch_size=8, base_resolution=64, num_workers=0
    )
    batch = next(iter(stream))
    assert batch.images.shape == (8, 3, 64, 64)
    captions = [
        d.decode() for s in world.clip_shards for k, d in _tar_members(s).items() if k.endswith(".txt")
    ]
    assert len(captions) == TINY_WORLD.clip_images
    for caption in captions:
        named = [shape for shape in SHAPES if shape in caption]
        assert named, caption


def test_sam_tars_read_by_sam_stream(world: ProxyWorld) -> None:
    stream = SamStream(world.sam_shards, global_batch_size=2, masks_per_image=4, image_size=256,
                       return_gt_masks=True, num_workers=0, min_mask_area=30)  # fmt: skip
    batch = next(iter(stream))
    assert batch.images.shape == (2, 3, 256, 256)
    assert sum(p.num_prompts for p in batch.prompts) == sum(len(m) for m in batch.gt_masks) > 0


def test_sa1b_masks_are_the_scene_instances_and_agree_with_the_semantic_map() -> None:
    scene = make_scene(np.random.default_rng(3), 120, 150)
    _, annotation = sa1b_files(scene, image_id=7)
    record = parse_annotation_file(annotation)
    decoded = [mask_utils.decode(a["segmentation"]).astype(bool) for a in record.annotations]
    assert len(decoded) == int((np.unique(scene.instances) > 0).sum())
    union = np.any(decoded, axis=0)
    semantic = scene.semantic_map()
    inside = semantic != 255
    # Background in the semantic map exactly where no instance mask is.
    np.testing.assert_array_equal((semantic == 0)[inside], ~union[inside])
    for a, mask in zip(record.annotations, decoded, strict=True):
        x, y = (int(v) for v in a["point_coords"][0])
        assert mask[y, x], "the annotation's point lies inside its mask"
        assert a["area"] == int(mask.sum())


def test_main_object_is_the_largest_and_the_class() -> None:
    for seed in range(20):
        scene = make_scene(np.random.default_rng(seed), 128, 128)
        areas = [int((scene.instances == i).sum()) for i in range(1, len(scene.objects) + 1)]
        assert areas[0] == max(areas)
        caption = scene.caption(np.random.default_rng(seed))
        first = min((caption.find(s), s) for s in SHAPES if s in caption)[1]
        assert first == scene.objects[0].shape == SHAPES[scene.label]


def test_classification_split_read_by_image_folder(world: ProxyWorld) -> None:
    loader, folders = image_folder_loader(world.classification_root, classification_transform(64), 8, 0)
    assert sorted(folders) == sorted(SHAPES)
    images, labels = next(iter(loader))
    assert images.shape[1:] == (3, 64, 64)
    assert labels.max() < len(SHAPES)


def test_semseg_split_read_as_voc_with_the_proxy_classes(world: ProxyWorld) -> None:
    dataset = open_segmentation_dataset(PROXY_LAYOUT, world.semseg_root)
    assert dataset.classnames == ("background", *SHAPES)
    assert len(dataset) == TINY_WORLD.semseg_images
    values = set()
    for sample in dataset:
        values |= set(np.unique(sample.label).tolist())
    assert values <= {0, 1, 2, 3, 4, 255} and 255 in values and 0 in values
    # The VOC reader itself (the same files, VOC's 21 names) reads the tree too.
    assert len(open_segmentation_dataset("voc", world.semseg_root)) == TINY_WORLD.semseg_images


def test_same_seed_same_bytes_other_seed_other_world(world: ProxyWorld, tmp_path: Path) -> None:
    again = write_world(tmp_path / "again", TINY_WORLD, seed=0)
    other = write_world(tmp_path / "other", TINY_WORLD, seed=1)
    for a, b, c in zip(world.clip_shards + world.sam_shards, again.clip_shards + again.sam_shards,
                       other.clip_shards + other.sam_shards, strict=True):  # fmt: skip
        assert Path(a).read_bytes() == Path(b).read_bytes()
        assert Path(a).read_bytes() != Path(c).read_bytes()


def test_splits_are_disjoint(world: ProxyWorld) -> None:
    splits = _all_image_hashes(world)
    names = list(splits)
    for i, a in enumerate(names):
        assert len(splits[a]) > 0
        for b in names[i + 1 :]:
            assert not splits[a] & splits[b], f"{a} and {b} share images"
    assert not _image_ids(world.sam_shards) & _image_ids(world.sam_val_shards)


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown proxy world size"):
        write_world(tmp_path, "huge")
