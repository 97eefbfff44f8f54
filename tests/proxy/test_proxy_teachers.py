"""Teachers trained by samclip load through the loaders real checkpoints go through, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from samclip.models import create_model
from samclip.models.sam_checkpoint import build_official_sam
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.proxy.evaluate import evaluate_prompted_miou
from samclip.proxy.teachers import (
    ClipTeacherTraining,
    SamTeacherTraining,
    train_clip_teacher,
    train_sam_teacher,
)
from samclip.proxy.world import ProxyWorld


@pytest.fixture(scope="module")
def clip_file(world: ProxyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teachers") / "clip.pt"
    return train_clip_teacher(world.clip_shards, out, ClipTeacherTraining(epochs=1, batch_size=20))


@pytest.fixture(scope="module")
def sam_file(world: ProxyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teachers") / "sam.pth"
    return train_sam_teacher(
        world.sam_shards, out, SamTeacherTraining(steps=2, images_per_step=2, masks_per_image=2)
    )


def test_clip_teacher_loads_through_clip_teacher(clip_file: Path) -> None:
    saved = torch.load(clip_file, map_location="cpu")
    teacher = ClipTeacher("samclip-proxy-clip", str(clip_file))
    loaded = teacher.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    initial = ClipTeacher("samclip-proxy-clip", None).model.state_dict()
    assert not all(torch.equal(saved[k], initial[k]) for k in saved), "training changed the weights"
    assert teacher.encode_text(["a photo of a circle."]).shape == (1, teacher.embed_dim)


def test_sam_teacher_is_an_official_sam_checkpoint(sam_file: Path) -> None:
    state = torch.load(sam_file, map_location="cpu")
    sam = build_official_sam(create_model("samclip_tiny").config)
    sam.load_state_dict(state, strict=True)  # segment_anything's own Sam reads it as is
    teacher = SamTeacher(sam_file, "samclip_tiny")
    assert all(torch.equal(v, teacher.sam.state_dict()[k]) for k, v in state.items())
    student = create_model("samclip_tiny", sam_checkpoint=sam_file).eval()
    # The student from the checkpoint masks a box exactly as segment_anything's SamPredictor does.
    image = (np.random.default_rng(0).uniform(0, 255, (120, 160, 3))).astype(np.uint8)
    box = np.array([20.0, 30.0, 90.0, 100.0])
    predictor = SamPredictor(sam.eval())
    predictor.set_image(image)
    _, _, official = predictor.predict(box=box, multimask_output=False, return_logits=True)
    ours = student.segment(image, boxes=box[None]).logits
    torch.testing.assert_close(ours[0].float(), torch.as_tensor(official).float(), atol=2e-3, rtol=1e-3)


class _FixedMasks:
    """A stand-in SAM model answering every prompt with the ground truth (or with nothing)."""

    def __init__(self, world: ProxyWorld, empty: bool) -> None:
        self.empty = empty

    def embed_image(self, pixels: np.ndarray) -> np.ndarray:
        return pixels

    def segment(self, embedding: np.ndarray, boxes=None, points=None, point_labels=None):
        count = len(boxes if boxes is not None else points)
        return _Segmentation(torch.zeros(count, *embedding.shape[:2], dtype=torch.bool), boxes)


class _Segmentation:
    def __init__(self, masks: torch.Tensor, boxes) -> None:
        self.masks = masks


def test_prompted_miou_is_zero_for_empty_masks(world: ProxyWorld, tmp_path: Path) -> None:
    result = evaluate_prompted_miou(_FixedMasks(world, empty=True), tmp_path, shards=world.sam_val_shards)
    assert result["box_mIoU"] == result["point_mIoU"] == 0.0
    assert result["num_instances"] > 0


def test_sam_teacher_curve_ends_with_the_saved_checkpoints_held_out_miou(
    world: ProxyWorld, tmp_path: Path
) -> None:
    training = SamTeacherTraining(steps=3, images_per_step=2, masks_per_image=2)
    out = train_sam_teacher(
        world.sam_shards, tmp_path / "sam.pth", training, held_out=world.sam_val_shards, evaluate_every=2
    )
    curve = json.loads(out.with_suffix(".curve.json").read_text())
    assert [point["step"] for point in curve] == [2, 3]  # every 2 steps, and the last
    # The last point is the saved checkpoint, scored independently through the student's loader.
    saved = evaluate_prompted_miou(
        create_model("samclip_tiny", sam_checkpoint=out).eval(), tmp_path, shards=world.sam_val_shards
    )
    assert curve[-1]["box_miou"] == pytest.approx(saved["box_mIoU"], abs=1e-6)
    assert curve[-1]["point_miou"] == pytest.approx(saved["point_mIoU"], abs=1e-6)
    assert curve[0] != curve[-1]  # the step between them changed the masks
