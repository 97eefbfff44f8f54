"""COCO panoptic as semantic segmentation: RGB segment ids decoded through the json, end to end via the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samclip.cli.eval import main
from samclip.data.classnames import coco_panoptic_prompt_names
from samclip.eval.datasets.semseg import open_segmentation_dataset
from samclip.eval.metrics import IGNORE_INDEX

# In the json's order, which is not id order: class indices follow the json (0..4), not the ids.
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 187, "name": "sky-other-merged", "isthing": 0},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 199, "name": "wall-other-merged", "isthing": 0},
    {"id": 128, "name": "house", "isthing": 0},
]
PERSON, SKY, CAR, WALL, HOUSE = range(5)
# Segment ids chosen to need all three channels: id = R + 256 G + 256^2 B.
SKY_ID, PERSON_ID, CROWD_ID, CAR_ID = 7, 300, 2 + 5 * 256 + 3 * 65536, 65536


def _id_png(ids: np.ndarray, path: Path) -> None:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(path)


def _write_panoptic(root: Path) -> dict[str, np.ndarray]:
    """Two 24x32 images; returns the hand-built semantic label map of each (crowd kept as its class)."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations" / "panoptic_val2017").mkdir(parents=True)
    first = np.zeros((24, 32), dtype=np.int64)  # 0: unlabelled
    first[:8] = SKY_ID
    first[8:, :10] = PERSON_ID
    first[8:, 10:20] = CROWD_ID
    second = np.full((24, 32), CAR_ID, dtype=np.int64)
    second[:, :4] = 0
    segments = {
        "000000000139.png": [
            {"id": SKY_ID, "category_id": 187, "iscrowd": 0},
            {"id": PERSON_ID, "category_id": 1, "iscrowd": 0},
            {"id": CROWD_ID, "category_id": 1, "iscrowd": 1},
        ],
        "000000000285.png": [{"id": CAR_ID, "category_id": 3, "iscrowd": 0}],
    }
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, (png, ids) in enumerate(zip(segments, (first, second), strict=True)):
        _id_png(ids, root / "annotations" / "panoptic_val2017" / png)
        jpg = png.replace(".png", ".jpg")
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / "val2017" / jpg)
        images.append({"id": image_id, "file_name": jpg, "height": 24, "width": 32})
        annotations.append({"image_id": image_id, "file_name": png, "segments_info": segments[png]})
    spec = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / "panoptic_val2017.json").write_text(json.dumps(spec))

    expected_first = np.full((24, 32), IGNORE_INDEX, dtype=np.int64)
    expected_first[:8] = SKY
    expected_first[8:, :20] = PERSON
    expected_second = np.full((24, 32), CAR, dtype=np.int64)
    expected_second[:, :4] = IGNORE_INDEX
    return {"000000000139": expected_first, "000000000285": expected_second}


@pytest.fixture
def panoptic(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "coco"
    return root, _write_panoptic(root)


def test_labels_decode_to_the_hand_built_maps(panoptic):
    root, expected = panoptic
    dataset = open_segmentation_dataset("coco_panoptic", root.parent)  # the parent of coco/ works too
    assert dataset.classnames == ("person", "sky", "car", "wall", "house")
    samples = {sample.name: sample for sample in dataset}
    assert sorted(samples) == sorted(expected)
    for name, label in expected.items():
        np.testing.assert_array_equal(samples[name].label, label)
        assert samples[name].image.shape == (24, 32, 3)


def test_nocrowd_layout_ignores_crowd_segments(panoptic):
    root, expected = panoptic
    dataset = open_segmentation_dataset("coco_panoptic_nocrowd", root)
    label = next(iter(dataset)).label
    np.testing.assert_array_equal(label[8:, :10], PERSON)
    np.testing.assert_array_equal(label[8:, 10:20], IGNORE_INDEX)
    np.testing.assert_array_equal(label[:8], expected["000000000139"][:8])


def test_prompt_names_drop_merge_tags_but_stay_unique():
    assert coco_panoptic_prompt_names(["door-stuff", "wall-brick", "water-other", "dining table"]) == (
        "door",
        "wall brick",
        "water",
        "dining table",
    )
    assert coco_panoptic_prompt_names(["sky-other-merged", "sky"]) == ("sky-other-merged", "sky")


def test_segment_ids_missing_from_the_json_and_unextracted_pngs_are_named(panoptic):
    root, _ = panoptic
    json_path = root / "annotations" / "panoptic_val2017.json"
    spec = json.loads(json_path.read_text())
    spec["annotations"][0]["segments_info"].pop()  # the crowd segment
    json_path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=rf"000000000139\.png has segment ids \[{CROWD_ID}\]"):
        list(open_segmentation_dataset("coco_panoptic", root))
    (root / "annotations" / "panoptic_val2017").rename(root / "annotations" / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"panoptic_val2017\.zip"):
        open_segmentation_dataset("coco_panoptic", root)


def test_cli_run_reports_the_json_classes(final_checkpoint, panoptic, tmp_path, monkeypatch):
    root, _ = panoptic
    run_dir = tmp_path / "run"
    monkeypatch.setattr(
        sys,
        "argv",
        ["samclip-eval", "eval=semseg_cocopanoptic", f"checkpoint={final_checkpoint}", f"run_dir={run_dir}",
         f"eval.root={root}", "eval.resolution=224", "device=cpu"],
    )  # fmt: skip
    main()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "semseg_cocopanoptic" and results["dataset"] == "coco_panoptic"
    assert list(results["per_class"]) == ["person", "sky", "car", "wall", "house"]
    assert results["num_images"] == 2 and 0.0 <= results["mIoU"] <= 100.0
    # Classes in neither the labels nor the predictions have no IoU; labelled ones always have one.
    assert all(results["per_class"][name] is not None for name in ("person", "sky", "car"))
    assert len(list((run_dir / "qualitative").glob("*.png"))) == 2
