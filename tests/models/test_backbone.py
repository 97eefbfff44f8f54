"""The timm-based backbone against segment_anything's ImageEncoderViT, with the same weights."""

from __future__ import annotations

import pytest
import torch

from samclip import create_model


def test_neck_features_match_segment_anything_encoder(tiny_sam, tiny_sam_checkpoint):
    model = create_model("samclip_tiny", sam_checkpoint=tiny_sam_checkpoint).eval()
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        ours = model.backbone(images).neck
        reference = tiny_sam.image_encoder(images)
    assert ours.shape == reference.shape == (2, 32, 16, 16)
    assert (ours - reference).abs().max().item() <= 1e-4
    # The comparison must be able to fail: a different input gives different features.
    assert (model.backbone(images.flip(-1)).neck - reference).abs().max().item() > 1e-2


@pytest.mark.parametrize("size", [64, 224, 448, 1024])
def test_backbone_runs_at_multiples_of_16(size):
    model = create_model("samclip_tiny").eval()
    with torch.no_grad():
        features = model.forward_features(torch.rand(1, 3, size, size))
    assert features.tokens.shape == (1, size // 16, size // 16, 64)
    assert features.neck.shape == (1, 32, size // 16, size // 16)


def test_position_embedding_is_resampled_not_cropped():
    """At a new size the absolute position embedding is interpolated: changing it changes every token."""
    model = create_model("samclip_tiny").eval()
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before = model.backbone(images).tokens
        model.backbone.pos_embed[:, -1, -1].add_(10.0)  # only the bottom-right stored position
        after = model.backbone(images).tokens
    # Bicubic resampling spreads the bottom-right change over the neighbouring tokens of the 8x8 grid.
    changed = (after - before).abs().amax(dim=-1)[0] > 1e-3
    assert changed[-1, -1] and changed[-2, -2]


def test_input_not_multiple_of_patch_size_is_rejected():
    model = create_model("samclip_tiny")
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        model.forward_features(torch.rand(1, 3, 100, 96))


def test_gradient_checkpointing_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = create_model("samclip_tiny")
    images = torch.rand(2, 3, 64, 64)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        out = model.encode_image(images)
        out.square().sum().backward()
        return out.detach(), model.backbone.blocks[0].attn.qkv.weight.grad.clone()

    plain_out, plain_grad = run()
    model.set_grad_checkpointing(True)
    ckpt_out, ckpt_grad = run()
    torch.testing.assert_close(ckpt_out, plain_out)
    torch.testing.assert_close(ckpt_grad, plain_grad)


def test_clip_only_forward_leaves_the_neck_out_of_the_graph():
    """CLIP micro-batches must not touch the neck: no wasted work, and no unused-parameter surprise in DDP."""
    from samclip.models import SamPrompts

    model = create_model("samclip_tiny")
    model.encode_image(torch.rand(1, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in model.backbone.neck.parameters())
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None
    prompts = [SamPrompts(0, boxes=torch.tensor([[10.0, 10.0, 100.0, 120.0]]))]
    model(torch.rand(1, 3, 256, 256), prompts, clip=False).sam.low_res_logits.sum().backward()
    assert all(p.grad is not None for p in model.backbone.neck.parameters())
