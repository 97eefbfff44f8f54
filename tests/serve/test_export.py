"""Exports: the ``sam`` file is segment_anything's own checkpoint; the ``samclip`` directory round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from constructed import random_student
from segment_anything import SamPredictor, sam_model_registry

from samclip.cli.export import export_cli
from samclip.cli.export import main as export_main
from samclip.models.sam_checkpoint import build_official_sam
from samclip.serve.merged import load

RNG = np.random.default_rng(0)
IMAGE = (RNG.random((150, 200, 3)) * 255).astype(np.uint8)
BOXES = np.array([[10, 20, 120, 140], [60, 5, 190, 100]], dtype=np.float64)
POINTS = np.array([[50, 60], [150, 40]], dtype=np.float64)


def _predictor_masks(sam, boxes: np.ndarray, points: np.ndarray):
    predictor = SamPredictor(sam.eval())
    predictor.set_image(IMAGE)
    box_logits = [
        predictor.predict(box=box, multimask_output=False, return_logits=True)[0][0] for box in boxes
    ]
    point_logits = predictor.predict(
        point_coords=points, point_labels=np.ones(len(points)), multimask_output=False, return_logits=True
    )[0][0]
    return np.stack(box_logits) > 0, point_logits > 0


def _samclip_masks(merged, boxes: np.ndarray, points: np.ndarray):
    return (
        merged.segment(IMAGE, boxes=boxes).masks.numpy(),
        merged.segment(IMAGE, points=points[None]).masks.numpy()[0],
    )


def test_sam_export_loads_in_segment_anything_and_predicts_the_same_masks(final_checkpoint, merged, tmp_path):
    out = tmp_path / "sam_tiny.pth"
    export_main([str(final_checkpoint), "--format", "sam", "--out", str(out)])
    sam = build_official_sam(merged.config)
    sam.load_state_dict(torch.load(out, weights_only=True), strict=True)
    expected_boxes, expected_points = _predictor_masks(sam, BOXES, POINTS)
    boxes, points = _samclip_masks(merged, BOXES, POINTS)
    assert 0.05 < boxes.mean() < 0.95  # non-trivial masks, so agreement means something
    assert (boxes == expected_boxes).mean() > 0.999 and (points == expected_points).mean() > 0.999


def test_bare_state_dict_export_needs_the_model_name(tmp_path):
    model = random_student(3)
    state = tmp_path / "student.pt"
    torch.save(model.state_dict(), state)
    out = tmp_path / "sam.pth"
    export_main([str(state), "--model", "samclip_tiny", "--format", "sam", "--out", str(out)])
    exported = torch.load(out, weights_only=True)
    torch.testing.assert_close(
        exported["image_encoder.patch_embed.proj.weight"], model.backbone.patch_embed.proj.weight
    )
    assert not any(key.startswith("clip_head") for key in exported)
    with pytest.raises(ValueError, match="clip-model"):
        export_cli(
            [str(state), "--model", "samclip_tiny", "--format", "samclip", "--out", str(tmp_path / "d")]
        )


def test_samclip_export_round_trips(final_checkpoint, merged, tmp_path):
    out = tmp_path / "merged"
    export_main([str(final_checkpoint), "--format", "samclip", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["tokenizer"] == "samclip-tiny-clip" and config["model_config"]["embed_dim"] == 64
    # No teacher file is needed: the text tower's weights are in the export.
    config["clip_teacher"]["pretrained"] = str(tmp_path / "gone.pt")
    (out / "config.json").write_text(json.dumps(config))
    reloaded = load(out)
    images = torch.rand(2, 3, 64, 96)
    assert torch.equal(reloaded.encode_image(images), merged.encode_image(images))
    assert torch.equal(reloaded.encode_text(["a dog", "two cats"]), merged.encode_text(["a dog", "two cats"]))
    assert torch.equal(reloaded.segment(IMAGE, boxes=BOXES).masks, merged.segment(IMAGE, boxes=BOXES).masks)
    labels = ["background", "dog", "cat"]
    for mode in ("clip", "composed"):
        a = reloaded.semantic_segment(IMAGE, labels, mode=mode, threshold=0.3)
        b = merged.semantic_segment(IMAGE, labels, mode=mode, threshold=0.3)
        assert torch.equal(a.label_map, b.label_map)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load(tmp_path / "empty")


@pytest.mark.slow
def test_vit_b_sam_export_loads_with_the_unmodified_registry(make_final, tmp_path):
    """A vit_b-shaped student exported and read back by ``sam_model_registry["vit_b"](checkpoint=...)``."""
    from samclip.models import create_model

    torch.manual_seed(0)
    model = create_model("samclip_vit_b").eval()
    with torch.no_grad():
        model.backbone.pos_embed.normal_(std=0.02)
    checkpoint = make_final(model, "vit_b.pt")
    out = tmp_path / "sam_vit_b.pth"
    export_main([str(checkpoint), "--format", "sam", "--out", str(out)])
    sam = sam_model_registry["vit_b"](checkpoint=str(out))
    expected_boxes, _ = _predictor_masks(sam, BOXES[:1], POINTS)
    merged = load(checkpoint)
    assert (merged.segment(IMAGE, boxes=BOXES[:1]).masks.numpy() == expected_boxes).mean() > 0.999
