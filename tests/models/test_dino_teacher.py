"""The DINOv2 teacher: timm's tokens split into CLS and patch grid, its normalisation, and its weight files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import checkpoint_filter_fn

from samclip.models import dino_teacher
from samclip.models.dino_teacher import DenseTeacherOutput, DinoTeacher, write_random_dino_checkpoint

TINY, TINY_REG = "samclip_tiny_dino", "samclip_tiny_dino_reg4"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _timm_reference(name: str, path: Path, image_size: int) -> torch.nn.Module:
    """timm loading the file itself, as ``timm.create_model(pretrained=True)`` does for any user."""
    base, kwargs = dino_teacher.TINY_DINO_ARCHS[name]
    return timm.create_model(
        base,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        num_classes=0,
        **{**kwargs, "img_size": image_size},
    )


def _assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize(("name", "num_prefix"), [(TINY, 1), (TINY_REG, 5)])
def test_encode_splits_timm_forward_features(name: str, num_prefix: int) -> None:
    torch.manual_seed(0)
    teacher = DinoTeacher(name, image_size=70)
    images = torch.rand(2, 3, 70, 70)
    out = teacher(images)
    tokens = teacher.model.forward_features((images - IMAGENET_MEAN) / IMAGENET_STD)
    assert isinstance(out, DenseTeacherOutput) and tokens.shape == (2, num_prefix + 25, 32)
    assert out.summary.shape == (2, 32) and out.patches.shape == (2, 32, 5, 5)
    assert (teacher.feature_dim, teacher.patch_size) == (32, 14)
    torch.testing.assert_close(out.summary, tokens[:, 0])
    # Patch (row i, column j) is token num_prefix + 5 i + j.
    torch.testing.assert_close(out.patches[:, :, 1, 3], tokens[:, num_prefix + 5 + 3])
    torch.testing.assert_close(out.patches, tokens[:, num_prefix:].reshape(2, 5, 5, 32).permute(0, 3, 1, 2))


def test_preprocess_resizes_and_normalises_with_imagenet_statistics() -> None:
    teacher = DinoTeacher(TINY, image_size=56)
    images = torch.rand(2, 3, 112, 112)
    images[1] = (
        torch.arange(112) // 8 % 2
    ).float()  # sharp bars: bicubic overshoots [0, 1], so clamping shows
    resized = F.interpolate(images, size=(56, 56), mode="bicubic", antialias=True).clamp(0, 1)
    torch.testing.assert_close(teacher.preprocess(images), (resized - IMAGENET_MEAN) / IMAGENET_STD)
    same_size = torch.rand(1, 3, 56, 56)
    torch.testing.assert_close(teacher.preprocess(same_size), (same_size - IMAGENET_MEAN) / IMAGENET_STD)
    assert teacher.encode(images).patches.shape == (2, 32, 4, 4)


def test_frozen_and_always_in_eval_mode() -> None:
    teacher = DinoTeacher(TINY, image_size=56)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    assert not teacher(torch.rand(1, 3, 56, 56)).summary.requires_grad


def test_image_size_must_be_a_multiple_of_the_patch_size() -> None:
    with pytest.raises(ValueError, match=r"teacher\.dino\.image_size 60 .* patch size 14"):
        DinoTeacher(TINY, image_size=60)
    with pytest.raises(ValueError, match=r"teacher\.dino\.model_kwargs\.img_size"):
        DinoTeacher(TINY, image_size=56, model_kwargs={"img_size": 70})
    with pytest.raises(ValueError, match=r"teacher\.dino\.model_name 'no_such_dino'"):
        DinoTeacher("no_such_dino")


def test_timm_format_loads_bit_exactly(tmp_path: Path) -> None:
    path = write_random_dino_checkpoint(tmp_path / "tiny.pth", seed=3)
    teacher = DinoTeacher(TINY, pretrained=str(path), image_size=56)
    _assert_same_state(teacher.model.state_dict(), torch.load(path, weights_only=True))
    # At another size only pos_embed changes, resampled as timm resamples it.
    larger = DinoTeacher(TINY, pretrained=str(path), image_size=70)
    _assert_same_state(larger.model.state_dict(), _timm_reference(TINY, path, 70).state_dict())
    assert larger.model.pos_embed.shape == (1, 1 + 25, 32)


@pytest.mark.parametrize("name", [TINY, TINY_REG])
def test_official_format_converts_as_timm_does(tmp_path: Path, name: str) -> None:
    path = write_random_dino_checkpoint(
        tmp_path / "dinov2_tiny_pretrain.pth", name, seed=1, official_format=True
    )
    official = torch.load(path, weights_only=True)
    assert official["mask_token"].shape == (1, 32) and official["pos_embed"].shape == (1, 1 + 37 * 37, 32)
    teacher = DinoTeacher(name, pretrained=str(path), image_size=56)
    state = teacher.model.state_dict()
    _assert_same_state(state, _timm_reference(name, path, 56).state_dict())
    # By hand: the blocks are the file's, the 37 x 37 grid is resampled to 4 x 4, mask_token is dropped.
    assert torch.equal(state["blocks.1.mlp.fc2.weight"], official["blocks.1.mlp.fc2.weight"])
    assert "mask_token" not in state
    if name == TINY_REG:  # the official CLS position embedding moves into timm's cls_token
        assert torch.equal(state["reg_token"], official["register_tokens"])
        assert torch.equal(state["cls_token"], official["cls_token"] + official["pos_embed"][:, :1])
        grid = resample_abs_pos_embed(official["pos_embed"][:, 1:], (4, 4), num_prefix_tokens=0)
    else:
        assert torch.equal(state["cls_token"], official["cls_token"])
        grid = resample_abs_pos_embed(official["pos_embed"], (4, 4), num_prefix_tokens=1)
    assert torch.equal(state["pos_embed"], grid)


@pytest.mark.parametrize("name", [TINY, TINY_REG])
def test_the_official_format_is_what_timms_filter_undoes(name: str) -> None:
    base, kwargs = dino_teacher.TINY_DINO_ARCHS[name]
    model = timm.create_model(base, num_classes=0, **{**kwargs, "img_size": 518})
    state = model.state_dict()
    back = checkpoint_filter_fn(dino_teacher._to_official_format(state), model)
    assert back.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(back[key], value, msg=key)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        DinoTeacher(TINY, pretrained=str(tmp_path / "nowhere.pth"), image_size=56)


def test_another_architecture_or_garbage_names_the_file(tmp_path: Path) -> None:
    path = write_random_dino_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match=r"tiny\.pth .*size mismatch") as caught:
        DinoTeacher(TINY, pretrained=str(path), image_size=56, model_kwargs={"embed_dim": 48})
    assert "\n" not in str(caught.value)
    # timm alone would resample a patch-16 kernel into this patch-14 model and load it without a word.
    patch16 = timm.create_model(
        "vit_small_patch16_224", num_classes=0, embed_dim=32, depth=2, num_heads=2, img_size=64
    )
    torch.save(patch16.state_dict(), tmp_path / "patch16.pth")
    with pytest.raises(ValueError, match=r"patch16\.pth .*patch size is \(16, 16\)"):
        DinoTeacher(TINY, pretrained=str(tmp_path / "patch16.pth"), image_size=56)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth is not|garbage\.pth are not"):
        DinoTeacher(TINY, pretrained=str(garbage), image_size=56)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=r"evil\.pth .*weights_only"):
        DinoTeacher(TINY, pretrained=str(path), image_size=56)
    assert not marker.exists()


def test_a_hub_id_goes_to_timm_as_the_hub_source(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(dino_teacher, "load_pretrained", lambda model, cfg, **kw: seen.append(cfg))
    teacher = DinoTeacher(TINY, pretrained="timm/vit_small_patch14_dinov2.lvd142m", image_size=56)
    assert (
        seen[0]["hf_hub_id"] == "timm/vit_small_patch14_dinov2.lvd142m"
        and seen[0]["file"] is seen[0]["url"] is None
    )
    assert teacher.identity() == {
        "model_name": TINY,
        "weights": "timm/vit_small_patch14_dinov2.lvd142m",
        "sha256": None,
    }


def test_identity_follows_the_file_content_not_its_folder(tmp_path: Path) -> None:
    path = write_random_dino_checkpoint(tmp_path / "a" / "dino.pth", seed=0)
    moved = tmp_path / "b" / "dino.pth"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    identity = DinoTeacher(TINY, pretrained=str(path), image_size=56).identity()
    assert (
        identity["model_name"] == TINY and identity["weights"] == "dino.pth" and len(identity["sha256"]) == 64
    )
    assert DinoTeacher(TINY, pretrained=str(moved), image_size=56).identity() == identity
    write_random_dino_checkpoint(moved, seed=1)
    assert DinoTeacher(TINY, pretrained=str(moved), image_size=56).identity()["sha256"] != identity["sha256"]
    assert DinoTeacher(TINY, image_size=56).identity() == {
        "model_name": TINY,
        "weights": None,
        "sha256": None,
    }
