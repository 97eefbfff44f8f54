"""The proxy world's dense third teacher: its training targets follow the image through a flip, it trains and
saves a ViT that DinoTeacher reads, and experiment=proxy_dense plans three terms on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from samclip.eval.knn_seg import patch_label_histograms
from samclip.models.dino_teacher import DinoTeacher
from samclip.proxy.dense_teacher import (
    NUM_CLASSES,
    DenseTeacherTraining,
    flip_horizontally,
    scene_tensors,
    train_dense_teacher,
)
from samclip.proxy.study import STUDY_SIZES, compose_recipe
from samclip.proxy.world import dense_scenes
from samclip.train import builder
from samclip.train.distributed import DistEnv


def test_patch_targets_are_the_flipped_images_own_histograms() -> None:
    scenes = dense_scenes(seed=0, num_images=3)
    images, counts = scene_tensors(scenes, image_size=112, grid=8)
    assert images.shape == (3, 3, 112, 112) and images.dtype == torch.uint8
    assert counts.shape == (3, 64, NUM_CLASSES)
    flipped_images, flipped_counts = flip_horizontally(images, counts, 8, torch.tensor([True, False, True]))
    for index, scene in enumerate(scenes):
        label = Image.fromarray(scene.semantic_map()).resize((112, 112), Image.Resampling.NEAREST)
        label = np.asarray(label)[:, ::-1] if index != 1 else np.asarray(label)
        expected = patch_label_histograms(torch.from_numpy(label.copy()), 8, NUM_CLASSES)
        assert torch.equal(flipped_counts[index], expected), index
    assert torch.equal(flipped_images[0], images[0].flip(-1)) and torch.equal(flipped_images[1], images[1])


def test_trained_teacher_is_saved_in_the_format_dino_teacher_reads(tmp_path: Path, caplog) -> None:
    path = tmp_path / "dense.pth"
    training = DenseTeacherTraining(images=64, steps=60, batch_size=16, lr=2e-3, warmup_steps=5)
    with caplog.at_level("INFO", logger="samclip.proxy.dense_teacher"):
        train_dense_teacher(path, training, seed=0)
    teacher = DinoTeacher("samclip_proxy_dino", pretrained=str(path), image_size=112)
    output = teacher.encode(torch.rand(2, 3, 128, 128))
    assert output.patches.shape == (2, 64, 8, 8) and output.summary.shape == (2, 64)
    untrained = DinoTeacher("samclip_proxy_dino", pretrained=None, image_size=112)
    assert not torch.equal(teacher.model.pos_embed, untrained.model.pos_embed)
    assert "step" in caplog.text and "patch accuracy" in caplog.text


def test_proxy_dense_plans_the_three_terms_on_the_dense_teacher(tmp_path: Path) -> None:
    cfg = compose_recipe(tmp_path, tmp_path / "three", STUDY_SIZES["quick"], experiment="proxy_dense")
    assert cfg.teacher.dense.pretrained == f"{tmp_path}/teachers/dense_proxy.pth"
    assert set(cfg.tasks.sam_clip.terms) == {"clip", "sam", "dense"}
    assert cfg.model.adaptors.dense == DinoTeacher("samclip_proxy_dino", None, 112).feature_dim
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    stages = builder.plan_run(cfg, env, tmp_path / "three")
    assert [s.name for s in stages] == ["head_probe", "multitask", "res_adapt"]
    assert all("adaptors.*" in s.trainable for s in stages)
