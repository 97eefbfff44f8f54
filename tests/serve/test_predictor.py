"""``samclip.Predictor`` and ``generate_masks`` against segment_anything's own tools on the exported SAM weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from samclip.models.sam_checkpoint import build_official_sam
from samclip.serve.automatic import generate_masks
from samclip.serve.export import official_sam_state_dict
from samclip.serve.merged import MergedSamClip
from samclip.serve.predictor import Predictor

# NMS off (IoU threshold 1) and no quality filters, so a random model's every grid mask is compared.
UNFILTERED = {
    "points_per_side": 6,
    "pred_iou_thresh": -1e9,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(3).random((120, 200, 3)) * 255).astype(np.uint8)


def official_sam(merged: MergedSamClip) -> torch.nn.Module:
    sam = build_official_sam(merged.config)
    sam.load_state_dict(official_sam_state_dict(merged.model))
    return sam.eval()


def test_predict_equals_sam_predictor_on_the_exported_weights(
    merged: MergedSamClip, image: np.ndarray
) -> None:
    reference = SamPredictor(official_sam(merged))
    reference.set_image(image)
    predictor = Predictor(merged)
    predictor.set_image(image)
    for prompt in ({"box": np.array([10, 20, 150, 100])}, {"point_coords": np.array([[60, 50]]), "point_labels": np.array([1])}):  # fmt: skip
        masks, scores, logits = predictor.predict(**prompt, multimask_output=True)
        expected_masks, expected_scores, expected_logits = reference.predict(**prompt, multimask_output=True)
        assert masks.shape == expected_masks.shape == (3, 120, 200)
        assert (masks == expected_masks).mean() > 0.999
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
        np.testing.assert_allclose(logits, expected_logits, atol=1e-3)


def test_generate_masks_equals_sam_automatic_mask_generator(merged: MergedSamClip, image: np.ndarray) -> None:
    expected = SamAutomaticMaskGenerator(official_sam(merged), **UNFILTERED).generate(image)
    records = generate_masks(merged, image, **UNFILTERED)
    assert len(records) == len(expected) == 3 * 36  # 3 masks per grid point, nothing filtered

    def by_point(found: list[dict]) -> dict[tuple, list[dict]]:
        grouped: dict[tuple, list[dict]] = {}
        for record in found:
            grouped.setdefault(tuple(record["point_coords"][0]), []).append(record)
        return {point: sorted(group, key=lambda r: r["predicted_iou"]) for point, group in grouped.items()}

    ours, theirs = by_point(records), by_point(expected)
    assert ours.keys() == theirs.keys()
    for point, group in ours.items():
        for record, reference in zip(group, theirs[point], strict=True):
            inter = (record["segmentation"] & reference["segmentation"]).sum()
            union = (record["segmentation"] | reference["segmentation"]).sum()
            assert union == 0 or inter / union > 0.99
            assert record["predicted_iou"] == pytest.approx(reference["predicted_iou"], abs=1e-4)
            assert record["stability_score"] == pytest.approx(reference["stability_score"], abs=1e-2)


@pytest.mark.parametrize("height", [256, 160])
def test_labels_pool_the_clip_heads_patches_under_each_mask(merged: MergedSamClip, height: int) -> None:
    # A 256-wide image is not resized in samclip_tiny's 256 frame (16 px patches); a 160-high one is padded.
    image = (np.random.default_rng(4).random((height, 256, 3)) * 255).astype(np.uint8)
    predictor = Predictor(merged)
    predictor.set_image(image)
    masks = np.zeros((2, height, 256), bool)
    masks[0, :64, :96] = True  # patches rows 0-3, cols 0-5
    masks[1, 128:, 32:48] = True  # patches rows 8 to the image's last, col 2
    labels = ["dog", "horse", "person"]
    named = predictor.label(masks, labels)

    tokens = merged.model.embed_image(image).features.tokens
    patches = torch.nn.functional.normalize(
        merged.model.clip_head(tokens, dense=True).patch_embeds[0], dim=-1
    )
    classifier = merged.text_classifier(labels)
    for index, region in enumerate((patches[:4, :6], patches[8 : height // 16, 2:3])):
        embed = torch.nn.functional.normalize(region.reshape(-1, region.shape[-1]).mean(0), dim=-1)
        expected = (merged.text.logit_scale * embed @ classifier).softmax(-1)
        torch.testing.assert_close(named.probs[index], expected, atol=1e-5, rtol=1e-4)
        assert named.labels[index] == labels[int(expected.argmax())]


def test_classify_uses_the_image_area_of_the_same_pass(merged: MergedSamClip, image: np.ndarray) -> None:
    predictor = Predictor(merged)
    predictor.set_image(image)
    labels = ["dog", "horse", "person"]
    result = predictor.classify(labels)
    # 120x200 -> 154x256 in the 256 frame: 10 x 16 token rows/cols hold image.
    tokens = merged.model.embed_image(image).features.tokens[:, :10, :16]
    embed = torch.nn.functional.normalize(merged.model.clip_head(tokens).image_embeds, dim=-1)
    expected = (merged.text.logit_scale * embed @ merged.text_classifier(labels)).softmax(-1)[0]
    torch.testing.assert_close(result.probs, expected, atol=1e-5, rtol=1e-4)


def test_labels_need_an_image_and_a_text_tower(merged: MergedSamClip, image: np.ndarray) -> None:
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(merged).classify(["dog"])
    bare = Predictor(merged.model)
    bare.set_image(image)
    assert bare.predict(box=np.array([0, 0, 50, 50]))[0].shape == (3, 120, 200)
    with pytest.raises(ValueError, match="text tower"):
        bare.label(np.ones((1, 120, 200), bool), ["dog"])


def test_generate_masks_labels_each_record(merged: MergedSamClip, image: np.ndarray) -> None:
    labels = ["dog", "horse", "person"]
    records = generate_masks(merged, image, labels=labels, **UNFILTERED)
    predictor = Predictor(merged)
    predictor.set_image(image)
    expected = predictor.label(np.stack([r["segmentation"] for r in records]), labels)
    assert [r["label"] for r in records] == expected.labels
    assert all(
        abs(sum(r["label_probs"]) - 1) < 1e-5 and r["label_prob"] == max(r["label_probs"]) for r in records
    )
