"""The CLIP head as the paper specifies it: init from the last backbone block, max-pool, LayerNorm, MLP."""

from __future__ import annotations

import pytest
import torch

from samclip import create_model
from samclip.models.clip_head import ClipHead


def _assert_state_equal(left: torch.nn.Module, right: torch.nn.Module) -> None:
    left_state, right_state = left.state_dict(), right.state_dict()
    assert left_state.keys() == right_state.keys()
    for key in left_state:
        torch.testing.assert_close(left_state[key], right_state[key], rtol=0, atol=0, msg=key)


def test_clip_head_blocks_start_as_the_loaded_backbone_last_block(tiny_sam_checkpoint):
    random_model = create_model("samclip_tiny")
    model = create_model("samclip_tiny", sam_checkpoint=tiny_sam_checkpoint)
    assert len(model.clip_head.blocks) == 3
    for block in model.clip_head.blocks:
        _assert_state_equal(block, model.backbone.blocks[-1])
    # Loading the checkpoint really replaced the random initialisation, and the blocks are copies, not aliases.
    assert not torch.equal(
        random_model.clip_head.blocks[0].mlp.fc1.weight, model.clip_head.blocks[0].mlp.fc1.weight
    )
    assert (
        model.clip_head.blocks[0].mlp.fc1.weight.data_ptr()
        != model.backbone.blocks[-1].mlp.fc1.weight.data_ptr()
    )


def test_clip_head_equals_hand_composition():
    torch.manual_seed(0)
    head = create_model("samclip_tiny").clip_head.eval()
    tokens = torch.randn(2, 5, 7, 64)
    with torch.no_grad():
        out = head(tokens, dense=True)
        x = tokens
        for block in head.blocks:
            x = block(x)
        pooled = x.reshape(2, 35, 64).max(dim=1).values
        expected_image = head.proj(
            torch.nn.functional.layer_norm(pooled, (64,), head.norm.weight, head.norm.bias, 1e-5)
        )
        expected_patch = head.proj(head.norm(x))
    torch.testing.assert_close(out.image_embeds, expected_image)
    torch.testing.assert_close(out.patch_embeds, expected_patch)
    assert out.patch_embeds.shape == (2, 5, 7, 32)


def test_projection_mlp_has_two_hidden_layers():
    head = create_model("samclip_tiny").clip_head
    linears = [m for m in head.proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 64), (64, 64), (64, 32)]
    assert isinstance(head, ClipHead)


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 448, 1024])
def test_vit_b_clip_head_outputs_vit_l_14_embedding_size(size):
    model = create_model("samclip_vit_b").eval()
    with torch.no_grad():
        embeds = model.encode_image(torch.rand(1, 3, size, size))
        dense = model(torch.rand(1, 3, 224, 224), dense=True).clip.patch_embeds
    assert embeds.shape == (1, 768)
    assert dense.shape == (1, 14, 14, 768)
