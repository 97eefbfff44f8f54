"""OV-SAM's parts against references: open_clip's forward, hand-computed losses, RoIAlign and class scores."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder

from samclip.losses import EmbeddingDistillationLoss, valid_embedding_region
from samclip.models.ovsam import (
    Clip2SamHead,
    FrozenClipTower,
    Sam2ClipAdapter,
    class_logits,
    create_ovsam_model,
    fuse_class_probabilities,
)
from samclip.models.ovsam.decoder import decode_with_label_token
from samclip.models.prompts import SamPrompts

TINY_CLIP = "samclip-tiny-rn-clip"


@pytest.fixture(scope="module")
def tower() -> FrozenClipTower:
    torch.manual_seed(0)
    tower = FrozenClipTower(TINY_CLIP, levels=(2, 3, 4))
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so normalisation is exercised
        for module in tower.model.visual.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    return tower


def test_clip_tower_features_are_open_clips_own_forward(tower: FrozenClipTower) -> None:
    """Levels 2-4 = ModifiedResNet's layer2..layer4 run by hand; CLIP's attention pool on level 4 = visual(x)."""
    images = torch.rand(2, 3, 64, 64)
    visual = tower.model.visual
    x = (images - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        open_clip.OPENAI_DATASET_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        by_hand = []
        x = visual.stem(x)
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
            by_hand.append(x)
        features = tower.features(images)
        assert [f.shape[1] for f in features] == tower.channels == [128, 256, 512]
        assert tower.strides == [8, 16, 32]
        for ours, reference in zip(features, by_hand[1:], strict=True):
            torch.testing.assert_close(ours, reference, rtol=0, atol=0)
        # open_clip's own image forward at its native size ends in the same last level.
        torch.testing.assert_close(
            visual.attnpool(features[-1]), tower.model.encode_image(tower_input(images))
        )
    tower.train(True)
    assert not tower.training and not visual.training and not any(p.requires_grad for p in tower.parameters())


def tower_input(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def test_adapter_gives_sams_embedding_shape_at_1024() -> None:
    """RN50x16's pyramid at 1024 (strides 8, 16, 32) -> SAM's 256 x 64 x 64 image embedding."""
    adapter = Sam2ClipAdapter([768, 1536, 3072], grid_size=64, dim=32, depth=1, num_heads=2, out_dim=256)
    features = [torch.randn(1, c, 1024 // s, 1024 // s) for c, s in ((768, 8), (1536, 16), (3072, 32))]
    assert adapter(features).shape == (1, 256, 64, 64)


def test_adapter_fusion_is_bilinear_resampling_plus_addition() -> None:
    adapter = Sam2ClipAdapter([3, 5], grid_size=4, dim=8, depth=1, num_heads=2, out_dim=6)
    features = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 2, 2)]
    expected = sum(
        F.interpolate(conv(f), size=(4, 4), mode="bilinear", align_corners=False)
        for conv, f in zip(adapter.lateral, features, strict=True)
    )
    torch.testing.assert_close(adapter.fuse(features), expected)


def test_distillation_mse_equals_hand_computation_plain_and_masked() -> None:
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    # Image 0 un-padded 64x40 px (4 x 3 cells of 16 px), image 1 17x64 px (2 x 4 cells).
    valid = valid_embedding_region(torch.tensor([[64, 40], [17, 64]]), grid_size=4, patch_size=16)
    assert valid[0].sum() == 12 and valid[1].sum() == 8
    assert (
        valid[0, :, :3].all() and not valid[0, :, 3].any() and valid[1, :2].all() and not valid[1, 2:].any()
    )
    plain, masked = 0.0, 0.0
    for b, (rows, cols) in enumerate(((4, 3), (2, 4))):
        diff = [
            (student[b, c, y, x] - teacher[b, c, y, x]).item() ** 2
            for c in range(3)
            for y in range(4)
            for x in range(4)
        ]
        plain += sum(diff) / len(diff) / 2
        inside = [
            (student[b, c, y, x] - teacher[b, c, y, x]).item() ** 2
            for c in range(3)
            for y in range(rows)
            for x in range(cols)
        ]
        masked += sum(inside) / len(inside) / 2
    assert EmbeddingDistillationLoss(masked=False)(student, teacher, valid).item() == pytest.approx(
        plain, rel=1e-6
    )
    assert EmbeddingDistillationLoss(masked=True)(student, teacher, valid).item() == pytest.approx(
        masked, rel=1e-6
    )


def _head() -> Clip2SamHead:
    return Clip2SamHead(
        [4, 8, 16], [8, 16, 32], token_dim=8, fpn_dim=3, roi_size=2, hidden_dim=8, embed_dim=5
    )


def test_roi_features_equal_roi_align_by_hand_on_linear_maps() -> None:
    """On f(x, y) = a x + b y + c bilinear sampling is exact, so each RoIAlign bin is f at its centre;
    the region feature is the sum over the FPN levels (strides 8, 16, 32) of those values."""
    head = _head()
    a, b, c = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.25, 3.0, -1.0]), torch.tensor([2.0, 0.0, 1.0])
    levels = []
    for side in (16, 8, 4):
        ys, xs = torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)), indexing="ij")
        level = (a.view(3, 1, 1) * xs + b.view(3, 1, 1) * ys + c.view(3, 1, 1))[None].repeat(2, 1, 1, 1)
        level[1] *= -1
        levels.append(level)
    boxes = torch.tensor([[0, 16.0, 24.0, 80.0, 56.0], [1, 8.0, 8.0, 40.0, 104.0]])  # frame pixels
    out = head.region_features(levels, boxes)
    assert out.shape == (2, 3, 2, 2)
    for k, (image, *box) in enumerate(boxes.tolist()):
        sign = -1.0 if image == 1 else 1.0
        for i in range(2):
            for j in range(2):
                expected = torch.zeros(3)
                for stride in (8, 16, 32):
                    # aligned=True: pixel-centre convention, the box is shifted by half a feature cell.
                    x0, y0, x1, y1 = (v / stride - 0.5 for v in box)
                    cx, cy = x0 + (j + 0.5) * (x1 - x0) / 2, y0 + (i + 0.5) * (y1 - y0) / 2
                    expected += sign * (a * cx + b * cy + c)
                torch.testing.assert_close(out[k, :, i, j], expected, rtol=1e-5, atol=1e-5)


def test_class_scores_are_cosine_over_temperature_and_the_geometric_mean_fusion() -> None:
    torch.manual_seed(2)
    head = _head()
    with torch.no_grad():
        head.logit_scale.fill_(math.log(1 / 0.05))
    embeddings, text, clip_logits = torch.randn(3, 5), torch.randn(4, 5), torch.randn(3, 4) * 3
    learned = head.class_logits(embeddings, text)
    for m in range(3):
        for k in range(4):
            cos = float(embeddings[m] @ text[k] / (embeddings[m].norm() * text[k].norm()))
            assert learned[m, k].item() == pytest.approx(cos / 0.05, rel=1e-5)
    fused = fuse_class_probabilities(learned, clip_logits, clip_weight=0.5)
    for m in range(3):
        p = [math.exp(v) for v in learned[m].tolist()]
        q = [math.exp(v) for v in clip_logits[m].tolist()]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        geometric = [math.sqrt(pk * qk) for pk, qk in zip(p, q, strict=True)]
        expected = [g / sum(geometric) for g in geometric]
        assert fused[m].tolist() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(
        class_logits(embeddings, text, 20.0),
        20.0 * F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).t(),
    )
    # clip_weight 0: only the learned scores.
    torch.testing.assert_close(fuse_class_probabilities(learned, clip_logits, 0.0), learned.softmax(-1))


def test_decoder_without_label_token_is_segment_anythings_mask_decoder() -> None:
    model = create_ovsam_model("ovsam_tiny")
    decoder: MaskDecoder = model.mask_decoder
    embedding = torch.randn(1, 32, 16, 16)
    boxes = torch.tensor([[10.0, 20.0, 120.0, 200.0], [50.0, 50.0, 60.0, 90.0]])
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    pe = model.prompt_encoder.get_dense_pe()
    for multimask in (False, True):
        masks, ious = decoder(embedding, pe, sparse, dense, multimask)
        ours = decode_with_label_token(decoder, None, embedding, pe, sparse, dense, multimask)
        torch.testing.assert_close(ours.low_res_logits, masks)
        torch.testing.assert_close(ours.iou_predictions, ious)
    with_label = decode_with_label_token(
        decoder, model.clip2sam.label_token.weight, embedding, pe, sparse, dense, False
    )
    assert with_label.label_tokens.shape == (2, 32)


def test_point_prompts_are_recognised_on_their_predicted_masks_box() -> None:
    torch.manual_seed(3)
    model = create_ovsam_model("ovsam_tiny")
    logits = torch.full((2, 64, 64), -1.0)
    logits[0, 10:20, 30:41] = 1.0  # low-res cells -> frame pixels x4
    points = torch.tensor([[[130.0, 60.0]], [[100.0, 100.0]]])
    group = SamPrompts(0, point_coords=points, point_labels=torch.ones(2, 1, dtype=torch.int))
    boxes = model.mask_boxes(logits, group)
    assert boxes[0].tolist() == [120.0, 40.0, 164.0, 80.0]
    assert boxes[1].tolist() == [96.0, 96.0, 104.0, 104.0]  # empty mask: a small box at the point
