"""Box-prompted instance segmentation: mask AP through pycocotools and lvis, end to end against SamPredictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from segment_anything import SamPredictor

from samclip.eval.instseg import coco_mask_ap, encode_masks, evaluate_instseg, lvis_mask_ap, mask_results
from samclip.models.sam_checkpoint import build_official_sam
from samclip.serve.export import official_sam_state_dict

SIZE = (96, 128)  # H, W


def _shapes() -> dict[int, list[tuple[int, np.ndarray]]]:
    """Hand-made ground truth: per image, (category, mask) pairs of rectangles and a disc."""
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    masks = {
        1: [(1, (yy >= 10) & (yy < 50) & (xx >= 10) & (xx < 60)), (2, (yy - 60) ** 2 + (xx - 90) ** 2 < 400)],
        2: [(1, (yy >= 30) & (yy < 90) & (xx >= 40) & (xx < 120))],
    }
    return masks


def _write_dataset(root: Path, masks: dict[int, list[tuple[int, np.ndarray]]], lvis: bool = False) -> Path:
    """COCO (or LVIS v1) annotation json with RLE ground truth, plus the images it names."""
    rng = np.random.default_rng(0)
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, objects in masks.items():
        file_name = f"{image_id:012d}.png"
        Image.fromarray((rng.random((*SIZE, 3)) * 255).astype(np.uint8)).save(root / "val2017" / file_name)
        entry = {"id": image_id, "height": SIZE[0], "width": SIZE[1]}
        if lvis:
            entry |= {"coco_url": f"http://images.cocodataset.org/val2017/{file_name}", "neg_category_ids": [],
                      "not_exhaustive_category_ids": []}  # fmt: skip
        else:
            entry["file_name"] = file_name
        images.append(entry)
        for category, mask in objects:
            rle = encode_masks(mask[None])[0]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category, "segmentation": rle,
                 "area": float(mask.sum()), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0}
            )  # fmt: skip
    categories = [{"id": 1, "name": "thing"}, {"id": 2, "name": "stuff"}]
    if lvis:
        categories = [c | {"frequency": "f", "synset": c["name"]} for c in categories]
    path = root / ("lvis_v1_val.json" if lvis else "instances_val2017.json")
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _gt_as_predictions(masks):
    results = []
    for image_id, objects in masks.items():
        stacked = np.stack([m for _, m in objects])
        results += mask_results(image_id, stacked, [c for c, _ in objects], [0.9] * len(objects))
    return results


def test_ground_truth_masks_as_predictions_score_ap_100(tmp_path):
    masks = _shapes()
    coco = COCO(str(_write_dataset(tmp_path / "coco", masks)))
    assert coco_mask_ap(coco, _gt_as_predictions(masks))["AP"] == pytest.approx(100.0)

    from lvis import LVIS

    lvis = LVIS(str(_write_dataset(tmp_path / "lvis", masks, lvis=True)))
    assert lvis_mask_ap(lvis, _gt_as_predictions(masks))["AP"] == pytest.approx(100.0)


def test_perturbed_predictions_match_pycocotools_and_drop_below_100(tmp_path):
    masks = _shapes()
    coco = COCO(str(_write_dataset(tmp_path, masks)))
    predictions = _gt_as_predictions(masks)
    shifted = np.roll(masks[2][0][1], 12, axis=1)  # IoU ~0.76: a hit at low thresholds only
    predictions[2] = mask_results(2, shifted[None], [1], [0.9])[0]
    ours = coco_mask_ap(coco, predictions)
    reference = COCOeval(coco, coco.loadRes(predictions), iouType="segm")
    reference.evaluate(), reference.accumulate(), reference.summarize()
    assert ours["AP"] == pytest.approx(100 * reference.stats[0])
    assert 50.0 < ours["AP"] < 100.0 and ours["AP50"] == pytest.approx(100.0)


def _end_to_end_dataset(tmp_path: Path, merged, lvis: bool):
    """Detections are boxes; ground truth is what segment_anything's SamPredictor (on the exported weights)
    predicts for them, perturbed: one mask shifted, one object missed by the detector."""
    sam = build_official_sam(merged.config)
    sam.load_state_dict(official_sam_state_dict(merged.model))
    predictor = SamPredictor(sam.eval())
    boxes = {1: [[8, 8, 70, 60], [60, 40, 120, 90]], 2: [[30, 20, 110, 80]]}
    annotation_path = _write_dataset(tmp_path, {1: [], 2: []}, lvis=lvis)  # images only, for now
    data = json.loads(annotation_path.read_text())
    detections, ground_truth = [], []
    for image_id, image_boxes in boxes.items():
        pixels = np.asarray(Image.open(tmp_path / "val2017" / f"{image_id:012d}.png").convert("RGB"))
        predictor.set_image(pixels)
        for index, box in enumerate(image_boxes):
            mask = predictor.predict(box=np.array(box), multimask_output=False)[0][0]
            x0, y0, x1, y1 = box
            score = 0.9 - 0.1 * index
            detections.append(
                {"image_id": image_id, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
            )
            ground_truth.append(
                (image_id, np.roll(mask, 6, axis=0) if (image_id, index) == (1, 1) else mask, score)
            )
    missed = np.zeros(SIZE, dtype=bool)
    missed[70:90, 5:30] = True
    ground_truth.append((2, missed, 0.0))
    data["annotations"] = [
        {"id": i + 1, "image_id": image_id, "category_id": 1, "segmentation": encode_masks(mask[None])[0],
         "area": float(mask.sum()), "bbox": mask_utils.toBbox(encode_masks(mask[None])[0]).tolist(), "iscrowd": 0}
        for i, (image_id, mask, _) in enumerate(ground_truth)
    ]  # fmt: skip
    annotation_path.write_text(json.dumps(data))
    detection_path = tmp_path / "detections.json"
    detection_path.write_text(json.dumps(detections))
    # The reference: SamPredictor's masks for the detections, scored directly by the evaluator library.
    reference = []
    for detection in detections:
        pixels = np.asarray(
            Image.open(tmp_path / "val2017" / f"{detection['image_id']:012d}.png").convert("RGB")
        )
        predictor.set_image(pixels)
        x, y, w, h = detection["bbox"]
        mask = predictor.predict(box=np.array([x, y, x + w, y + h]), multimask_output=False)[0][0]
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        reference.append(
            {
                "image_id": detection["image_id"],
                "category_id": 1,
                "segmentation": rle,
                "score": detection["score"],
            }
        )
    return annotation_path, detection_path, reference


def test_coco_end_to_end_equals_pycocotools_on_segment_anythings_masks(merged, tmp_path):
    annotations, detections, reference = _end_to_end_dataset(tmp_path, merged, lvis=False)
    results = evaluate_instseg(
        merged, tmp_path / "run", annotations=str(annotations), detections=str(detections),
        images_root=str(tmp_path / "val2017"), evaluator="coco",
    )  # fmt: skip
    coco = COCO(str(annotations))
    expected = COCOeval(coco, coco.loadRes(reference), iouType="segm")
    expected.evaluate(), expected.accumulate(), expected.summarize()
    assert results["AP"] == pytest.approx(100 * expected.stats[0], abs=1e-6)
    assert 0.0 < results["AP"] < 100.0 and results["num_masks"] == 3
    assert (tmp_path / "run" / "predictions.json").is_file()
    assert len(list((tmp_path / "run" / "qualitative").glob("*.png"))) == 2


def test_lvis_end_to_end_equals_lvis_eval_on_segment_anythings_masks(merged, tmp_path, monkeypatch):
    from lvis import LVIS, LVISEval, LVISResults

    annotations, detections, reference = _end_to_end_dataset(tmp_path, merged, lvis=True)
    results = evaluate_instseg(
        merged, tmp_path / "run", annotations=str(annotations), detections=str(detections),
        images_root=str(tmp_path / "val2017"), evaluator="lvis", max_detections_per_image=300,
    )  # fmt: skip
    for entry in reference:
        entry["segmentation"]["counts"] = entry["segmentation"]["counts"].decode()
    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 still calls np.float
    gt = LVIS(str(annotations))
    expected = LVISEval(gt, LVISResults(gt, reference), iou_type="segm")
    expected.run()
    assert results["AP"] == pytest.approx(100 * expected.get_results()["AP"], abs=1e-6)
    assert 0.0 < results["AP"] < 100.0


def test_detections_file_errors(merged, tmp_path):
    annotations = _write_dataset(tmp_path, _shapes())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}]))
    with pytest.raises(ValueError, match="category_id"):
        evaluate_instseg(
            merged, tmp_path, annotations=str(annotations), detections=str(bad), images_root=str(tmp_path)
        )
