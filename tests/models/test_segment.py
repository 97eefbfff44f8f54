"""``model.segment`` against segment_anything's SamPredictor on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

from samclip import create_model


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _non_trivial(masks: np.ndarray) -> bool:
    fraction = masks.mean()
    return 0.01 < fraction < 0.99


@pytest.fixture(scope="module")
def tiny_pair(tiny_sam, tiny_sam_checkpoint):
    return create_model("samclip_tiny", sam_checkpoint=tiny_sam_checkpoint).eval(), SamPredictor(tiny_sam)


def test_box_prompt_matches_sam_predictor(tiny_pair, image_with_shapes):
    model, predictor = tiny_pair
    predictor.set_image(image_with_shapes)
    box = np.array([40, 30, 150, 110])
    masks, scores, logits = predictor.predict(box=box, multimask_output=False)
    ours = model.segment(image_with_shapes, boxes=box)
    assert ours.masks.shape == (1, 180, 240) and ours.masks.dtype == torch.bool
    assert _non_trivial(masks)
    assert mask_iou(ours.masks.numpy(), masks) >= 0.99
    np.testing.assert_allclose(ours.scores.numpy(), scores, atol=1e-4)
    np.testing.assert_allclose(ours.logits[:, 0].numpy(), logits, atol=1e-3)


def test_points_multimask_and_mask_input_match_sam_predictor(tiny_pair, image_with_shapes):
    model, predictor = tiny_pair
    predictor.set_image(image_with_shapes)
    points, labels = np.array([[90, 70], [180, 120]]), np.array([1, 0])
    masks, scores, logits = predictor.predict(point_coords=points, point_labels=labels, multimask_output=True)
    ours = model.segment(image_with_shapes, points=points, point_labels=labels, multimask=True)
    assert ours.masks.shape == (1, 3, 180, 240)
    for k in range(3):
        assert mask_iou(ours.masks[0, k].numpy(), masks[k]) >= 0.99
    np.testing.assert_allclose(ours.scores[0].numpy(), scores, atol=1e-4)
    # Refinement with the previous low-res logits as mask input, as in SAM's interactive loop.
    best = int(np.argmax(scores))
    refined, _, _ = predictor.predict(
        point_coords=points, point_labels=labels, mask_input=logits[best : best + 1], multimask_output=False
    )
    ours_refined = model.segment(
        image_with_shapes, points=points, point_labels=labels, mask_input=ours.logits[:, best : best + 1]
    )
    assert mask_iou(ours_refined.masks[0].numpy(), refined[0]) >= 0.99


def test_many_boxes_in_one_call_match_one_by_one(tiny_pair, image_with_shapes):
    model, _ = tiny_pair
    boxes = np.array([[40, 30, 150, 110], [140, 90, 220, 150], [0, 0, 239, 179]])
    together = model.segment(image_with_shapes, boxes=boxes)
    assert together.masks.shape == (3, 180, 240)
    embedding = model.embed_image(image_with_shapes)  # one backbone pass reused for every prompt
    for i, box in enumerate(boxes):
        alone = model.segment(embedding, boxes=box)
        assert torch.equal(alone.masks[0], together.masks[i])


def test_segment_rejects_bad_images(tiny_pair):
    model, _ = tiny_pair
    with pytest.raises(ValueError, match="HxWx3"):
        model.segment(np.zeros((10, 10), np.uint8), boxes=[0, 0, 5, 5])
    with pytest.raises(ValueError, match="uint8"):
        model.segment(np.zeros((10, 10, 3), np.float32), boxes=[0, 0, 5, 5])


@pytest.mark.slow
def test_vit_b_at_1024_matches_sam_predictor(vit_b_sam_checkpoint, image_with_shapes):
    model = create_model("samclip_vit_b", sam_checkpoint=vit_b_sam_checkpoint).eval()
    sam = sam_model_registry["vit_b"](checkpoint=str(vit_b_sam_checkpoint)).eval()
    predictor = SamPredictor(sam)
    predictor.set_image(image_with_shapes)
    embedding = model.embed_image(image_with_shapes)
    assert embedding.features.neck.shape == (1, 256, 64, 64)
    box = np.array([40, 30, 150, 110])
    ref_box, _, _ = predictor.predict(box=box, multimask_output=False)
    ours_box = model.segment(embedding, boxes=box)
    points, labels = np.array([[90, 70]]), np.array([1])
    ref_point, _, _ = predictor.predict(point_coords=points, point_labels=labels, multimask_output=False)
    ours_point = model.segment(embedding, points=points, point_labels=labels)
    assert _non_trivial(ref_box) and _non_trivial(ref_point)
    assert mask_iou(ours_box.masks[0].numpy(), ref_box[0]) >= 0.99
    assert mask_iou(ours_point.masks[0].numpy(), ref_point[0]) >= 0.99
