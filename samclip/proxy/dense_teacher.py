"""The proxy world's third teacher: a small DINOv2-shaped ViT whose patch tokens know each pixel's shape class.

Trained from scratch on scenes of the world's own ``dense`` split to predict, for every patch, the class
histogram of its pixels (background or one of ``SHAPES``; object outlines ignored) with a linear head on the
normed patch tokens, and the main object's shape from the CLS token. The head is dropped; the ViT is saved
in timm's format, so the recipe reads it through ``DinoTeacher`` exactly as it reads DINOv2. The right
answer is known per pixel, so the study can measure what a student gains from distilling these features
(k-NN segmentation on the world's VOC tree), which neither the CLIP nor the SAM teacher is asked to teach.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from samclip.eval.knn_seg import patch_label_histograms
from samclip.models.checkpoint_files import atomic_torch_save
from samclip.models.dino_teacher import DinoTeacher
from samclip.proxy.world import SHAPES, Scene, dense_scenes

log = logging.getLogger(__name__)

NUM_CLASSES = 1 + len(SHAPES)  # background first, as the world's VOC tree


@dataclass(frozen=True)
class DenseTeacherTraining:
    model_name: str = "samclip_proxy_dino"
    image_size: int = 112
    images: int = 4000
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 75


def scene_tensors(scenes: list[Scene], image_size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, S, S] and per-patch class histograms [N, grid * grid, NUM_CLASSES] (outlines ignored)."""
    images, labels = [], []
    for scene in scenes:
        image = scene.image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        label = Image.fromarray(scene.semantic_map()).resize(
            (image_size, image_size), Image.Resampling.NEAREST
        )
        labels.append(patch_label_histograms(torch.from_numpy(np.asarray(label).copy()), grid, NUM_CLASSES))
    return torch.stack(images), torch.stack(labels)


def flip_horizontally(
    images: torch.Tensor, patch_counts: torch.Tensor, grid: int, flip: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the images where ``flip`` holds, and their row-major patch histograms with them."""
    images, patch_counts = images.clone(), patch_counts.clone()
    images[flip] = images[flip].flip(-1)
    patch_counts[flip] = patch_counts[flip].view(-1, grid, grid, patch_counts.shape[-1]).flip(2).flatten(1, 2)
    return images, patch_counts


def dense_teacher_loss(
    teacher: DinoTeacher, heads: torch.nn.ModuleDict, images: torch.Tensor, patch_counts: torch.Tensor,
    main_class: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(soft cross-entropy on labelled patches + CE of the main shape on CLS, patch accuracy)."""
    tokens = teacher.model.forward_features(teacher.preprocess(images))
    patches = tokens[:, teacher.model.num_prefix_tokens :]  # [B, h*w, D]
    mass = patch_counts.sum(-1)
    labelled = mass > 0
    target = patch_counts[labelled] / mass[labelled, None]
    logits = heads["patch"](patches[labelled])
    patch_loss = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
    summary_loss = F.cross_entropy(heads["summary"](tokens[:, 0]), main_class)
    accuracy = (logits.argmax(-1) == target.argmax(-1)).float().mean()
    return patch_loss + summary_loss, accuracy


def train_dense_teacher(out_path: str | Path, training: DenseTeacherTraining, seed: int = 0) -> Path:
    """Train the dense proxy teacher on ``training.images`` scenes; write the ViT (timm format) to ``out_path``."""
    torch.manual_seed(seed)
    teacher = DinoTeacher(training.model_name, pretrained=None, image_size=training.image_size)
    teacher.model.requires_grad_(True)
    teacher.model.train()
    grid = training.image_size // teacher.patch_size
    scenes = dense_scenes(seed, training.images)
    images, counts = scene_tensors(scenes, training.image_size, grid)
    main_class = torch.tensor([SHAPES.index(scene.objects[0].shape) for scene in scenes])
    width = teacher.feature_dim
    heads = torch.nn.ModuleDict(
        {"patch": torch.nn.Linear(width, NUM_CLASSES), "summary": torch.nn.Linear(width, len(SHAPES))}
    )
    parameters = [*teacher.model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=training.lr, weight_decay=training.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, training))
    generator = torch.Generator().manual_seed(seed)
    start, accuracies = time.time(), []
    for step in range(training.steps):
        index = torch.randint(len(images), (training.batch_size,), generator=generator)
        flip = torch.rand(len(index), generator=generator) < 0.5
        batch, batch_counts = flip_horizontally(images[index].float() / 255.0, counts[index], grid, flip)
        loss, accuracy = dense_teacher_loss(teacher, heads, batch, batch_counts, main_class[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        accuracies.append(float(accuracy))
        if (step + 1) % 100 == 0 or step + 1 == training.steps:
            log.info(
                "dense teacher: step %d loss %.3f patch accuracy %.3f (%.0fs)",
                step + 1, loss.item(), float(np.mean(accuracies[-100:])), time.time() - start,
            )  # fmt: skip
    atomic_torch_save(teacher.model.state_dict(), str(out_path))
    return Path(out_path)


def _cosine(step: int, training: DenseTeacherTraining) -> float:
    if step < training.warmup_steps:
        return (step + 1) / training.warmup_steps
    progress = (step - training.warmup_steps) / max(1, training.steps - training.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
