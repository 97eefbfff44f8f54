"""Official SAM checkpoints: exact loading, and clear errors for wrong files."""

from __future__ import annotations

import pytest
import torch
from segment_anything import sam_model_registry

from samclip import create_model
from samclip.models.sam_checkpoint import read_sam_checkpoint, to_official_state_dict


@pytest.mark.slow
def test_official_vit_b_checkpoint_loads_every_key(vit_b_sam_checkpoint):
    model = create_model("samclip_vit_b", sam_checkpoint=vit_b_sam_checkpoint)
    official = read_sam_checkpoint(vit_b_sam_checkpoint)
    ours = to_official_state_dict(model.backbone.state_dict(), model.sam_head.state_dict())
    assert sorted(ours) == sorted(official)  # no missing, no unexpected keys
    for key, value in official.items():
        assert torch.equal(ours[key], value), key
    # segment_anything itself reads what we hold back as an official checkpoint.
    sam = sam_model_registry["vit_b"]()
    assert not sam.load_state_dict(ours, strict=True).missing_keys


def test_tiny_checkpoint_round_trips_to_official_layout(tiny_sam, tiny_sam_checkpoint):
    model = create_model("samclip_tiny", sam_checkpoint=tiny_sam_checkpoint)
    ours = to_official_state_dict(model.backbone.state_dict(), model.sam_head.state_dict())
    reference = tiny_sam.state_dict()
    assert sorted(ours) == sorted(reference)
    assert all(torch.equal(ours[key], reference[key]) for key in reference)


def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "sam_vit_b.pth"
    with pytest.raises(FileNotFoundError, match=str(path)):
        create_model("samclip_tiny", sam_checkpoint=path)


def test_corrupted_checkpoint_names_the_path(tmp_path, tiny_sam_checkpoint):
    path = tmp_path / "truncated.pth"
    path.write_bytes(tiny_sam_checkpoint.read_bytes()[:2000])
    with pytest.raises(ValueError, match=rf"{path}.*not a readable PyTorch checkpoint"):
        create_model("samclip_tiny", sam_checkpoint=path)


def test_other_layout_is_rejected(tmp_path, tiny_sam):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": tiny_sam.state_dict()}, path)
    with pytest.raises(ValueError, match=rf"{path}.*not a flat state dict"):
        create_model("samclip_tiny", sam_checkpoint=path)
    timm_layout = tmp_path / "timm_layout.pth"
    torch.save({k.removeprefix("image_encoder."): v for k, v in tiny_sam.state_dict().items()}, timm_layout)
    with pytest.raises(ValueError, match=rf"{timm_layout}.*official SAM layout"):
        create_model("samclip_tiny", sam_checkpoint=timm_layout)


def test_checkpoint_of_another_size_names_both_sizes(tiny_sam_checkpoint):
    with pytest.raises(
        ValueError, match=rf"{tiny_sam_checkpoint}.*width 64 with 4 blocks.*width 768 with 12 blocks"
    ):
        create_model("samclip_vit_b", sam_checkpoint=tiny_sam_checkpoint)
