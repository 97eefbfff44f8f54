"""OV-SAM's Table-1 evaluator: GT masks as predictions give IoU 100; accuracy equals a hand count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import samclip
from samclip.cli.export import main as export_main
from samclip.data.synth_instances import SYNTH_NOVEL_CLASSES, make_synthetic_instances
from samclip.eval.instseg import evaluate_instseg
from samclip.eval.ovsam import InstanceResult, evaluate_prompts, mask_centre, table1_metrics
from samclip.models.final_checkpoint import ClipTeacherSpec, save_final_checkpoint
from samclip.models.ovsam import create_ovsam_model
from samclip.serve.ovsam import OpenVocabularySam


@pytest.fixture(scope="module")
def val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ovsam_val")
    make_synthetic_instances(str(root), seed=4, num_train=2, num_val=8)
    return root


def test_gt_masks_as_predictions_give_iou_100_and_accuracy_is_a_hand_count(val: Path) -> None:
    raw = json.loads((val / "annotations" / "instances_val.json").read_text())
    names = {c["id"]: c["name"] for c in raw["categories"]}
    by_image: dict[tuple[int, int], list[dict]] = {}
    for annotation in raw["annotations"]:
        info = next(i for i in raw["images"] if i["id"] == annotation["image_id"])
        by_image.setdefault((info["height"], info["width"]), []).append(annotation)

    def oracle(image: np.ndarray, prompts: np.ndarray, kind: str, classes: list[str]):
        """The GT mask of the object each prompt points at; the right label on odd-sized-width images only."""
        candidates = by_image[image.shape[:2]]
        masks, labels = [], []
        for prompt in prompts:
            for annotation in candidates:
                mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
                x, y, w, h = annotation["bbox"]
                hit = (
                    np.allclose(prompt, [x, y, x + w, y + h])
                    if kind == "box"
                    else mask[int(prompt[0, 1]), int(prompt[0, 0])]
                )
                if hit:
                    masks.append(mask)
                    right = classes.index(names[annotation["category_id"]])
                    labels.append(right if image.shape[1] % 2 else (right + 1) % len(classes))
                    break
            else:
                raise AssertionError(f"no GT object at prompt {prompt}")
        return np.stack(masks), np.array(labels)

    assert len(by_image) == len(raw["images"])  # image sizes identify the images
    metrics, results = evaluate_prompts(
        oracle,
        str(val / "annotations" / "instances_val.json"),
        str(val / "val"),
        novel_classes=list(SYNTH_NOVEL_CLASSES),
    )
    widths = {i["id"]: i["width"] for i in raw["images"]}
    correct = sum(widths[a["image_id"]] % 2 for a in raw["annotations"])
    novel = [a for a in raw["annotations"] if names[a["category_id"]] in SYNTH_NOVEL_CLASSES]
    for kind in ("box", "point"):
        assert metrics[kind]["iou_base"] == pytest.approx(100.0)
        assert metrics[kind]["iou_novel"] == pytest.approx(100.0)
        assert metrics[kind]["num_novel"] == len(novel) > 0
        assert metrics[kind]["num_base"] + metrics[kind]["num_novel"] == len(raw["annotations"])
        assert metrics[kind]["accuracy"] == pytest.approx(100.0 * correct / len(raw["annotations"]))
    assert 0 < correct < len(raw["annotations"])
    assert len(results) == 2 * len(raw["annotations"])  # every instance, once per prompt kind


def test_table1_metrics_average_per_group() -> None:
    results = [
        InstanceResult("box", False, 0.5, True),
        InstanceResult("box", False, 1.0, False),
        InstanceResult("box", True, 0.25, True),
        InstanceResult("point", True, 0.0, False),
    ]
    metrics = table1_metrics(results)
    assert metrics["box"]["iou_base"] == pytest.approx(75.0) and metrics["box"]["iou_novel"] == pytest.approx(
        25.0
    )
    assert metrics["box"]["accuracy"] == pytest.approx(200 / 3) and metrics["box"]["accuracy_novel"] == 100.0
    assert metrics["point"]["iou_base"] is None and metrics["point"]["accuracy"] == 0.0


def test_mask_centre_lies_inside_a_non_convex_mask() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 5:12] = True  # an L: its centroid (about (14, 24)) is outside the mask
    mask[28:35, 5:35] = True
    x, y = mask_centre(mask)
    assert mask[int(y), int(x)]


def test_an_ovsam_export_loads_and_serves_the_box_prompted_mask_ap(val: Path, tmp_path: Path) -> None:
    """``samclip-export --format samclip`` of an OV-SAM round-trips through ``samclip.load``, and the existing
    COCO evaluator (Tables 2-3: detector boxes as prompts) runs on it; GT boxes with their labels as detections."""
    torch.manual_seed(0)
    model = create_ovsam_model("ovsam_tiny")
    final = tmp_path / "final.pt"
    save_final_checkpoint(final, model, ClipTeacherSpec("samclip-tiny-rn-clip", None), "clip2sam", 3)
    export_main([str(final), "--format", "samclip", "--out", str(tmp_path / "export")])
    loaded, exported = samclip.load(final), samclip.load(tmp_path / "export")
    assert isinstance(loaded, OpenVocabularySam) and loaded.source["stage"] == "clip2sam"
    image = np.full((90, 120, 3), 128, np.uint8)
    a = loaded.segment(image, boxes=[[10, 10, 60, 80]], labels=["cat", "dog"])
    b = exported.segment(image, boxes=[[10, 10, 60, 80]], labels=["cat", "dog"])
    assert torch.equal(a.logits, b.logits) and torch.equal(a.probs, b.probs) and a.labels[0] in ("cat", "dog")
    assert a.masks.shape == (1, 90, 120) and a.probs.sum().item() == pytest.approx(1.0)
    raw = json.loads((val / "annotations" / "instances_val.json").read_text())
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in raw["annotations"]
    ]
    (tmp_path / "detections.json").write_text(json.dumps(detections))
    metrics = evaluate_instseg(
        loaded,
        tmp_path / "instseg",
        annotations=str(val / "annotations" / "instances_val.json"),
        detections=str(tmp_path / "detections.json"),
        images_root=str(val / "val"),
        num_visualize=0,
    )
    assert metrics["num_masks"] == len(raw["annotations"]) and 0.0 <= metrics["AP"] <= 100.0
