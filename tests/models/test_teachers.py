"""The frozen teachers: OpenCLIP by file path, the original SAM, and the freezing contract."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from samclip import create_model
from samclip.models import SamPrompts
from samclip.models.teachers import ClipTeacher, SamTeacher


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    reference = open_clip.create_model("samclip-tiny-clip")
    path = tmp_path_factory.mktemp("clip") / "open_clip_tiny.pt"
    torch.save(reference.state_dict(), path)
    return path, reference.eval()


def test_clip_teacher_from_file_equals_open_clip(clip_checkpoint):
    path, reference = clip_checkpoint
    teacher = ClipTeacher("samclip-tiny-clip", pretrained=str(path))
    images = torch.rand(3, 3, 64, 64)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected_image = reference.encode_image((images - mean) / std)
        expected_text = reference.encode_text(
            open_clip.get_tokenizer("samclip-tiny-clip")(["a dog", "a red car"])
        )
    torch.testing.assert_close(teacher.encode_image(images), expected_image)
    torch.testing.assert_close(teacher.encode_text(["a dog", "a red car"]), expected_text)
    assert teacher.embed_dim == 32


def test_clip_teacher_resizes_other_resolutions_to_its_own(clip_checkpoint):
    path, _ = clip_checkpoint
    teacher = ClipTeacher("samclip-tiny-clip", pretrained=str(path))
    images = torch.rand(2, 3, 128, 128)
    resized = F.interpolate(images, size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)
    torch.testing.assert_close(teacher.encode_image(images), teacher.encode_image(resized))


def test_vit_l_14_teacher_has_768_d_embeddings():
    teacher = ClipTeacher("ViT-L-14", pretrained=None)
    assert teacher.embed_dim == 768
    assert teacher.image_size == 224


def test_missing_clip_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "missing" / "open_clip.pt"
    with pytest.raises(FileNotFoundError, match=str(path)):
        ClipTeacher("samclip-tiny-clip", pretrained=str(path))


def test_teachers_are_frozen_and_stay_in_eval(clip_checkpoint, tiny_sam_checkpoint):
    path, _ = clip_checkpoint
    for teacher in (
        ClipTeacher("samclip-tiny-clip", pretrained=str(path)),
        SamTeacher(tiny_sam_checkpoint, "samclip_tiny"),
    ):
        teacher.train()
        assert not teacher.training and not any(module.training for module in teacher.modules())
        assert not any(param.requires_grad for param in teacher.parameters())
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    assert ClipTeacher("samclip-tiny-clip", pretrained=str(path)).encode_image(images).grad_fn is None


def test_sam_teacher_equals_student_initialised_from_the_same_checkpoint(tiny_sam_checkpoint):
    teacher = SamTeacher(tiny_sam_checkpoint, "samclip_tiny")
    student = create_model("samclip_tiny", sam_checkpoint=tiny_sam_checkpoint).eval()
    images = torch.rand(2, 3, 256, 256)
    prompts = [
        SamPrompts(0, boxes=torch.tensor([[10.0, 20.0, 120.0, 200.0], [50.0, 50.0, 90.0, 100.0]])),
        SamPrompts(
            1,
            point_coords=torch.tensor([[[30.0, 40.0], [100.0, 120.0]]]),
            point_labels=torch.tensor([[1, 0]]),
        ),
        SamPrompts(0, point_coords=torch.tensor([[[60.0, 60.0]]]), point_labels=torch.tensor([[1]])),
    ]
    expected = teacher(images, prompts)
    with torch.no_grad():
        ours = student(images, prompts, clip=False).sam
    assert ours.low_res_logits.shape == (4, 1, 64, 64)
    assert ours.image_index.tolist() == [0, 0, 1, 0]
    torch.testing.assert_close(ours.low_res_logits, expected.low_res_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.iou_predictions, expected.iou_predictions, atol=1e-4, rtol=1e-4)
