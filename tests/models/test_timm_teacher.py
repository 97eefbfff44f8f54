"""The example timm teacher: loads a weights file as timm does, embeds like timm, and distils through the task."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from samclip.models import create_model
from samclip.models.timm_teacher import TimmImageTeacher
from samclip.train.tasks import Micro, SamClipTask

NAME, KWARGS = "vit_tiny_patch16_224", {"depth": 2}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    reference = timm.create_model(NAME, pretrained=False, num_classes=0, img_size=64, **KWARGS).eval()
    path = tmp_path_factory.mktemp("timm") / "tiny.safetensors"
    save_file(reference.state_dict(), str(path))
    return path, reference


def test_embeds_like_timm_with_its_normalisation(weights: tuple[Path, torch.nn.Module]) -> None:
    path, reference = weights
    teacher = TimmImageTeacher(NAME, pretrained=str(path), image_size=64, model_kwargs=KWARGS)
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = reference((images - 0.5) / 0.5)  # vit_tiny's data config: mean = std = 0.5
    torch.testing.assert_close(teacher.encode_image(images), expected)
    assert teacher.embed_dim == 192 and not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training
    # Other sizes are resized to the teacher's own.
    assert teacher.encode_image(torch.rand(2, 3, 96, 96)).shape == (2, 192)


def test_distils_into_the_clip_head(weights: tuple[Path, torch.nn.Module]) -> None:
    teacher = TimmImageTeacher(NAME, pretrained=str(weights[0]), image_size=64, model_kwargs=KWARGS)
    student = create_model("samclip_tiny", clip_embed_dim=192)
    task = SamClipTask(student, clip_teacher=teacher)
    images = torch.rand(2, 3, 64, 64)
    loss = task.loss("clip", student, Micro(images))["clip"].total
    expected = (
        1
        - torch.nn.functional.cosine_similarity(
            student.encode_image(images), teacher.encode_image(images)
        ).mean()
    )
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="192 dimensions"):
        SamClipTask(create_model("samclip_tiny"), clip_teacher=teacher)


def test_missing_weights_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.safetensors"):
        TimmImageTeacher(NAME, pretrained=str(tmp_path / "nowhere.safetensors"))
