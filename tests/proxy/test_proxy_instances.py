"""The proxy world's COCO-layout instances: the scenes' own objects and shapes, deterministic, readable by
OV-SAM's instance stream with cross held out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from samclip.data.instances import InstanceStream, load_instances
from samclip.proxy.instances import (
    MIN_INSTANCE_AREA,
    PROXY_BASE_CLASSES,
    PROXY_NOVEL_CLASSES,
    prepare_proxy_instances,
    world_seed,
    write_instance_split,
)
from samclip.proxy.world import SHAPES, SPLITS, _rng, _size, make_scene


def test_instance_splits_have_seed_indices_of_their_own() -> None:
    assert len(set(SPLITS.values())) == len(SPLITS)
    # The existing splits keep their indices (changing one would change every world already written).
    assert SPLITS["clip"] == 0 and SPLITS["sam_val"] == 4 and SPLITS["dense"] == 6


def test_annotations_are_the_scenes_objects_and_shapes(tmp_path: Path) -> None:
    path = write_instance_split(tmp_path, "val", 12, seed=3)
    dataset = load_instances(str(path))
    assert [c["name"] for c in dataset.loadCats(dataset.getCatIds())] == list(SHAPES)
    total = 0
    for index in range(12):
        # The scene again, from the world's generator with the split's stream: independent of the writer.
        rng = _rng(3, "instances_val", index)
        scene = make_scene(rng, *_size(rng, 128, 192))
        info = dataset.loadImgs(index + 1)[0]
        assert (info["height"], info["width"]) == scene.instances.shape
        expected = [
            (SHAPES.index(o.shape) + 1, scene.instances == k)
            for k, o in enumerate(scene.objects, start=1)
            if (scene.instances == k).sum() >= MIN_INSTANCE_AREA
        ]
        annotations = dataset.loadAnns(dataset.getAnnIds(imgIds=index + 1))
        assert [a["category_id"] for a in annotations] == [c for c, _ in expected]
        for annotation, (_, mask) in zip(annotations, expected, strict=True):
            assert np.array_equal(dataset.annToMask(annotation).astype(bool), mask)
            x, y, w, h = annotation["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        total += len(annotations)
    assert total >= 12  # every scene's main object is large: at least one instance per image
    # Every shape occurs, so base and novel both have instances.
    assert {a["category_id"] for a in dataset.dataset["annotations"]} == {1, 2, 3, 4}


def test_splits_are_deterministic_and_distinct(tmp_path: Path) -> None:
    first = write_instance_split(tmp_path / "a", "train", 6, seed=0)
    again = write_instance_split(tmp_path / "b", "train", 6, seed=0)
    assert first.read_text() == again.read_text()
    for name in ("000000000001.jpg", "000000000006.jpg"):
        a, b = tmp_path / "a" / "train" / name, tmp_path / "b" / "train" / name
        assert a.read_bytes() == b.read_bytes()
    other_seed = write_instance_split(tmp_path / "c", "train", 6, seed=1)
    val = write_instance_split(tmp_path / "a", "val", 6, seed=0)
    assert other_seed.read_text() != first.read_text()
    assert json.loads(val.read_text())["annotations"] != json.loads(first.read_text())["annotations"]
    with pytest.raises(ValueError, match="instance split"):
        write_instance_split(tmp_path, "test", 1, seed=0)


def test_stream_trains_on_base_shapes_only(tmp_path: Path) -> None:
    path = write_instance_split(tmp_path, "train", 16, seed=0)
    stream = InstanceStream(
        str(path), str(tmp_path / "train"), global_batch_size=4, max_instances=3, image_size=256,
        novel_classes=list(PROXY_NOVEL_CLASSES),
    )  # fmt: skip
    assert stream.class_names == PROXY_BASE_CLASSES == ("circle", "square", "triangle")
    batch = next(iter(stream))
    labels = {int(label) for target in batch.targets for label in target.labels}
    assert labels <= {0, 1, 2}
    # Images whose only instances are crosses are not in the training set.
    dataset = load_instances(str(path))
    cross_only = [
        i for i in dataset.getImgIds()
        if {a["category_id"] for a in dataset.loadAnns(dataset.getAnnIds(imgIds=i))} == {4}
    ]  # fmt: skip
    assert not set(cross_only) & set(stream.image_ids)


def test_prepare_uses_the_worlds_seed_and_refuses_other_instances(tmp_path: Path) -> None:
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "DONE").write_text("size=test seed=5\n")
    assert world_seed(tmp_path) == 5
    prepare_proxy_instances(str(tmp_path / "inst"), str(tmp_path), 3, 2)
    reference = write_instance_split(tmp_path / "ref", "val", 2, seed=5)
    assert (tmp_path / "inst" / "annotations" / "instances_val.json").read_text() == reference.read_text()
    prepare_proxy_instances(str(tmp_path / "inst"), str(tmp_path), 3, 2)  # already there: reused
    with pytest.raises(ValueError, match="other instances"):
        prepare_proxy_instances(str(tmp_path / "inst"), str(tmp_path), 4, 2)
    with pytest.raises(FileNotFoundError, match="DONE"):
        world_seed(tmp_path / "nowhere")


def test_rle_round_trip_matches_area(tmp_path: Path) -> None:
    dataset = load_instances(str(write_instance_split(tmp_path, "val", 4, seed=0)))
    for annotation in dataset.dataset["annotations"]:
        assert annotation["area"] == float(mask_utils.area(annotation["segmentation"]))
        assert annotation["area"] >= MIN_INSTANCE_AREA
