"""COCO/LVIS instance stream: open-vocabulary split membership, prompts and targets, resumable order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools import mask as mask_utils

from samclip.data.instances import (
    COCO_BASE_CLASSES,
    COCO_NOVEL_CLASSES,
    InstanceStream,
    load_instances,
    open_vocabulary_split,
)
from samclip.data.synth_instances import SYNTH_BASE_CLASSES, SYNTH_NOVEL_CLASSES, make_synthetic_instances


def _write_categories(path: Path, categories: list[dict]) -> str:
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    return str(path)


def test_coco_split_follows_zareian_class_lists(tmp_path: Path) -> None:
    names = [*COCO_BASE_CLASSES, *COCO_NOVEL_CLASSES, "traffic light", "hair drier"]
    categories = [{"id": 100 + i, "name": n} for i, n in enumerate(names)]
    split = open_vocabulary_split(
        load_instances(_write_categories(tmp_path / "c.json", categories)), split="coco_48_17"
    )
    assert len(split.base_ids) == 48 and len(split.novel_ids) == 17
    assert {split.names[i] for i in split.base_ids} == set(COCO_BASE_CLASSES)
    assert {split.names[i] for i in split.novel_ids} == set(COCO_NOVEL_CLASSES)
    # The 15 COCO classes outside Zareian's 65 are in neither vocabulary.
    assert "traffic light" not in {split.names[i] for i in split.all_ids}
    assert {"cat", "dog", "airplane"} <= {split.names[i] for i in split.novel_ids}


def test_lvis_split_is_frequent_and_common_vs_rare(tmp_path: Path) -> None:
    categories = [{"id": i + 1, "name": f"c{i}", "frequency": f} for i, f in enumerate("frcfrrc")]
    split = open_vocabulary_split(
        load_instances(_write_categories(tmp_path / "l.json", categories)), split="lvis_frequency"
    )
    assert split.base_ids == (1, 3, 4, 7) and split.novel_ids == (2, 5, 6)


def test_split_errors_name_the_offending_classes(tmp_path: Path) -> None:
    dataset = load_instances(
        _write_categories(tmp_path / "c.json", [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}])
    )
    with pytest.raises(ValueError, match="zebra"):
        open_vocabulary_split(dataset, base_classes=["cat", "zebra"])
    with pytest.raises(ValueError, match="both base and novel"):
        open_vocabulary_split(dataset, base_classes=["cat"], novel_classes=["cat"])
    assert open_vocabulary_split(dataset, novel_classes=["dog"]).base_ids == (1,)
    assert open_vocabulary_split(dataset, base_classes=["cat"]).novel_ids == (2,)


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("instances")
    make_synthetic_instances(str(root), seed=0, num_train=8, num_val=4)
    return root


def _stream(root: Path, **kwargs) -> InstanceStream:
    return InstanceStream(
        str(root / "annotations" / "instances_train.json"),
        str(root / "train"),
        global_batch_size=2,
        max_instances=3,
        image_size=128,
        novel_classes=list(SYNTH_NOVEL_CLASSES),
        **kwargs,
    )


def test_stream_trains_only_on_base_instances_with_box_and_point_prompts(instances: Path) -> None:
    stream = _stream(instances)
    assert stream.class_names == tuple(sorted(SYNTH_BASE_CLASSES, key=stream.class_names.index))
    assert set(stream.class_names) == set(SYNTH_BASE_CLASSES)
    raw = json.loads((instances / "annotations" / "instances_train.json").read_text())
    names = {c["id"]: c["name"] for c in raw["categories"]}
    batch = next(iter(stream))
    assert batch.images.shape == (2, 3, 128, 128)
    assert len(batch.prompts) == 4 and [p.image_index for p in batch.prompts] == [0, 0, 1, 1]
    for image_index, key in enumerate(batch.keys):
        info = next(i for i in raw["images"] if i["id"] == int(key))
        base = [
            a
            for a in raw["annotations"]
            if a["image_id"] == info["id"] and names[a["category_id"]] in SYNTH_BASE_CLASSES
        ]
        boxes, points = batch.prompts[2 * image_index], batch.prompts[2 * image_index + 1]
        target = batch.targets[2 * image_index]
        assert boxes.num_prompts == points.num_prompts == min(3, len(base)) == target.labels.numel()
        assert target.masks.shape[-2:] == (32, 32)  # the decoder's low-res logits: frame / 4
        scale = batch.input_sizes[image_index, 0].item() / info["height"]
        by_box = {
            tuple(round(v * scale, 3) for v in (x, y, x + w, y + h)): a
            for a, (x, y, w, h) in ((a, a["bbox"]) for a in base)
        }
        for box, point, label in zip(boxes.boxes, points.point_coords[:, 0], target.labels, strict=True):
            annotation = by_box[tuple(round(v, 3) for v in box.tolist())]
            assert stream.class_names[int(label)] == names[annotation["category_id"]]
            mask = mask_utils.decode(annotation["segmentation"])  # the point lies on its own object
            x, y = (point / scale).tolist()
            near = mask[max(int(y) - 1, 0) : int(y) + 2, max(int(x) - 1, 0) : int(x) + 2]
            assert near.any()  # within a pixel: the point was drawn from the resized mask
            assert box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_stream_resumes_its_order_and_ranks_split_the_global_batch(instances: Path) -> None:
    stream = _stream(instances, seed=3)
    full = [b.keys for _, b in zip(range(6), _forever(stream), strict=False)]
    resumed = _stream(instances, seed=3)
    for _, _ in zip(range(3), _forever(resumed), strict=False):
        pass
    state = resumed.state_dict()
    again = _stream(instances, seed=3)
    again.load_state_dict(state)
    assert [b.keys for _, b in zip(range(3), _forever(again), strict=False)] == full[3:]
    ranks = [_stream(instances, seed=3, rank=r, world_size=2) for r in (0, 1)]
    first = [next(iter(s)).keys for s in ranks]
    assert first[0] + first[1] == full[0] and len(first[0]) == 1


def _forever(stream: InstanceStream):
    while True:
        yield from stream
