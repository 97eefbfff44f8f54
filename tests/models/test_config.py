"""Model names, overrides, config round trips and the final checkpoint format."""

from __future__ import annotations

import os

import pytest
import torch

from samclip import create_model
from samclip.models import SamClipConfig, create_model_from_config
from samclip.models.final_checkpoint import ClipTeacherSpec, load_final_checkpoint, save_final_checkpoint


@pytest.mark.parametrize("name", ["samclip_vit_b", "samclip_vit_l", "samclip_vit_h"])
def test_published_sizes_match_segment_anything_registry(name):
    """Every tensor of the official SAM that our config describes has the shape segment_anything builds."""
    from segment_anything import sam_model_registry

    from samclip.models import MODEL_CONFIGS
    from samclip.models.config import SAM_REGISTRY_NAMES
    from samclip.models.sam_checkpoint import build_official_sam

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ours = build_official_sam(MODEL_CONFIGS[name]).state_dict()
        reference = sam_model_registry[SAM_REGISTRY_NAMES[name]]().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


def test_unknown_name_and_override_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'samclip_vit_x'"):
        create_model("samclip_vit_x")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['widht'\]"):
        create_model("samclip_tiny", widht=3)
    with pytest.raises(ValueError, match="not divisible"):
        create_model("samclip_tiny", num_heads=3)


def test_overrides_apply():
    model = create_model("samclip_tiny", clip_embed_dim=48, clip_head_depth=2)
    assert len(model.clip_head.blocks) == 2
    assert model.encode_image(torch.rand(1, 3, 64, 64)).shape == (1, 48)


def test_final_checkpoint_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = create_model("samclip_tiny", clip_embed_dim=24).eval()
    spec = ClipTeacherSpec("samclip-tiny-clip", str(tmp_path / "clip.pt"))
    save_final_checkpoint(tmp_path / "head_probe" / "final.pt", model, spec, stage="head_probe", step=7)
    assert [p.name for p in (tmp_path / "head_probe").iterdir()] == ["final.pt"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert (
        tmp_path / "head_probe" / "final.pt"
    ).stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    loaded = load_final_checkpoint(tmp_path / "head_probe" / "final.pt")
    assert (loaded.clip_teacher, loaded.stage, loaded.step) == (spec, "head_probe", 7)
    rebuilt = loaded.build_model().eval()
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(rebuilt.encode_image(images), model.encode_image(images), rtol=0, atol=0)
    assert SamClipConfig.from_dict(model.config.to_dict()) == model.config
    assert create_model_from_config(model.config.to_dict()).config == model.config


def test_final_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"final\.pt"):
        load_final_checkpoint(tmp_path / "final.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt is not a samclip final checkpoint"):
        load_final_checkpoint(tmp_path / "other.pt")
