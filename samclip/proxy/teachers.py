"""The proxy world's two teachers, trained by samclip and saved in the official on-disk formats.

- CLIP: an open_clip model trained contrastively with open_clip's own ``ClipLoss`` on the world's
  img2dataset shards; saved as an open_clip state dict that ``ClipTeacher(name, pretrained=FILE)`` reads.
- SAM: an official-layout ``segment_anything`` SAM trained with ground-truth masks and the box / point
  prompts ``SamStream`` samples from them (SAM's focal + dice at 20:1, plus its IoU-head MSE); saved as
  the flat ``image_encoder.* / prompt_encoder.* / mask_decoder.*`` state dict of ``sam_vit_b_01ec64.pth``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import webdataset as wds
from torchvision.datasets import ImageFolder

from samclip.data import SamStream
from samclip.data.clip_stream import clip_eval_transform
from samclip.losses import dice_loss_per_mask, focal_loss_per_mask
from samclip.models import create_model, get_model_config
from samclip.models.factory import load_sam_state_dict
from samclip.models.final_checkpoint import atomic_torch_save
from samclip.models.preprocess import normalize_sam
from samclip.models.sam_checkpoint import build_official_sam
from samclip.models.sam_head import decode_masks

# Importing teachers registers samclip's small open_clip configs (samclip-proxy-clip among them).
from samclip.models.teachers import ClipTeacher  # noqa: F401
from samclip.models.zeroshot_classifier import build_text_classifier
from samclip.proxy.evaluate import prompted_ious

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipTeacherTraining:
    model_name: str = "samclip-proxy-clip"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05


@dataclass(frozen=True)
class SamTeacherTraining:
    model_name: str = "samclip_tiny"
    steps: int = 300
    images_per_step: int = 8
    masks_per_image: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    focal_weight: float = 20.0  # SAM's focal:dice = 20:1
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    # torchvision's focal alpha (0.25 weights positives down); -1 = no class weighting. From scratch, 0.25
    # keeps every logit negative for the first ~50 steps; -1 learns ~2x faster (measured; see the report).
    focal_alpha: float = 0.25


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _load_captioned_images(shards: Sequence[str], resolution: int) -> tuple[torch.Tensor, list[str]]:
    """Every (image, caption) of the shards, the images as CLIP's eval transform gives them (uint8)."""
    images, captions = [], []
    dataset = wds.WebDataset(list(shards), shardshuffle=False, empty_check=False).decode("pil")
    for sample in dataset.to_tuple("jpg", "txt"):
        image, caption = sample
        images.append((clip_eval_transform(image.convert("RGB"), resolution) * 255).round().to(torch.uint8))
        captions.append(caption)
    if not images:
        raise ValueError(f"no jpg/txt samples in {list(shards)[:2]}...")
    return torch.stack(images), captions


class HeldOutZeroShot:
    """Zero-shot top-1 (%) of an open_clip model on a held-out ImageFolder: the teacher's learning curve.

    Only logged, never used to stop or select: the study's reported teacher number comes from samclip-eval.
    """

    def __init__(self, root: str | Path, resolution: int) -> None:
        folder = ImageFolder(str(root))
        self.classnames = folder.classes
        self.images = torch.stack(
            [clip_eval_transform(image.convert("RGB"), resolution) for image, _ in folder]
        )
        self.labels = torch.tensor(folder.targets)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, tokenizer, mean: torch.Tensor, std: torch.Tensor) -> float:
        was_training = model.training
        model.eval()
        classifier = build_text_classifier(model, tokenizer, self.classnames)
        features = model.encode_image((self.images - mean) / std, normalize=True)
        top1 = float((features @ classifier).argmax(1).eq(self.labels).float().mean()) * 100
        model.train(was_training)
        return top1


def train_clip_teacher(
    shards: Sequence[str],
    out_path: str | Path,
    training: ClipTeacherTraining,
    seed: int = 0,
    held_out: str | Path | None = None,
) -> Path:
    """Contrastive training of ``training.model_name`` from scratch; writes its state dict to ``out_path``.

    ``held_out``: an ImageFolder whose zero-shot top-1 is logged after every epoch.
    """
    torch.manual_seed(seed)
    model = open_clip.create_model(training.model_name, pretrained=None)
    tokenizer = open_clip.get_tokenizer(training.model_name)
    image_size = model.visual.image_size  # an int for open_clip's ModifiedResNet, a pair for its ViT
    resolution = int(image_size if isinstance(image_size, int) else image_size[0])
    images, captions = _load_captioned_images(shards, resolution)
    tokens = tokenizer(captions)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    loss_fn = open_clip.ClipLoss()
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": training.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=training.lr,
    )
    steps_per_epoch = len(images) // training.batch_size
    total = steps_per_epoch * training.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, total, max(1, int(training.warmup_fraction * total)))
    )
    generator = torch.Generator().manual_seed(seed)
    monitor = HeldOutZeroShot(held_out, resolution) if held_out is not None else None
    model.train()
    start = time.time()
    for epoch in range(training.epochs):
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * training.batch_size : (step + 1) * training.batch_size]
            batch = images[index].float() / 255.0
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
            image_features, text_features, logit_scale = model((batch - mean) / std, tokens[index])
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # as open_clip's trainer: the temperature is clamped at 100
                model.logit_scale.clamp_(0, math.log(100))
        zeroshot = (
            f", held-out zero-shot top-1 {monitor(model, tokenizer, mean, std):.1f}%" if monitor else ""
        )
        log.info(
            "clip teacher: epoch %d loss %.3f%s (%.0fs)",
            epoch + 1,
            float(loss.detach()),
            zeroshot,
            time.time() - start,
        )
    model.eval()
    atomic_torch_save(model.state_dict(), str(out_path))
    return Path(out_path)


def sam_teacher_loss(
    sam: torch.nn.Module, batch, training: SamTeacherTraining
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean IoU) of SAM's single-mask output against the ground-truth masks of ``batch``'s prompts."""
    embeddings = sam.image_encoder(normalize_sam(batch.images))
    output = decode_masks(sam.prompt_encoder, sam.mask_decoder, embeddings, batch.prompts, multimask=False)
    logits = output.low_res_logits
    # The loss at the decoder's own resolution (4x the grid), against area-downsampled masks: cheaper than
    # upsampling every mask to the frame, and the same optimum.
    targets = F.interpolate(torch.cat(batch.gt_masks).float()[:, None], size=logits.shape[-2:], mode="area")
    focal = focal_loss_per_mask(logits, targets, alpha=training.focal_alpha).mean()
    dice = dice_loss_per_mask(logits, targets).mean()
    with torch.no_grad():
        predicted = logits > 0
        inter = (predicted & (targets > 0.5)).flatten(1).sum(1).float()
        union = (predicted | (targets > 0.5)).flatten(1).sum(1).float().clamp(min=1)
        iou = inter / union
    iou_loss = F.mse_loss(output.iou_predictions[:, 0], iou)
    loss = training.focal_weight * focal + training.dice_weight * dice + training.iou_weight * iou_loss
    return loss, iou.mean()


def held_out_prompted_miou(
    sam: torch.nn.Module, model_name: str, shards: Sequence[str], max_images: int | None = None
) -> dict[str, float]:
    """Box- and point-prompted mIoU (%) of an official-layout SAM on held-out SA-1B-layout ``shards``,
    through the student's code path (the same ``prompted_ious`` the study scores every model with)."""
    student = create_model(model_name)
    load_sam_state_dict(student, sam.state_dict(), source="the SAM teacher in training")
    box, point = prompted_ious(student.eval(), list(shards), max_images=max_images)
    return {"box_miou": 100.0 * float(box.mean()), "point_miou": 100.0 * float(point.mean())}


def train_sam_teacher(
    shards: Sequence[str],
    out_path: str | Path,
    training: SamTeacherTraining,
    seed: int = 0,
    held_out: Sequence[str] | None = None,
    evaluate_every: int = 0,
) -> Path:
    """Mask-supervised training of an official SAM of ``training.model_name``'s shape; writes its checkpoint.

    With ``held_out`` SA-1B-layout shards and ``evaluate_every`` > 0, the held-out box / point mIoU every
    that many steps (and at the end) is logged and written beside the checkpoint as ``<name>.curve.json``:
    how far the teacher is from converged, which the study needs to know before it reads forgetting."""
    config = get_model_config(training.model_name)
    torch.manual_seed(seed)
    sam = build_official_sam(config)
    stream = SamStream(
        list(shards),
        global_batch_size=training.images_per_step,
        masks_per_image=training.masks_per_image,
        min_mask_area=30.0,
        image_size=config.image_size,
        return_gt_masks=True,
        seed=seed,
        num_workers=0,
        resampled=True,
        steps_per_epoch=training.steps,
    )
    optimizer = torch.optim.AdamW(sam.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, training.steps, training.warmup_steps)
    )
    sam.train()
    start, ious, curve = time.time(), [], []
    for step, batch in enumerate(stream):
        if step >= training.steps:
            break
        loss, iou = sam_teacher_loss(sam, batch.to("cpu"), training)  # uint8 images -> float [0, 1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        ious.append(float(iou))
        if (step + 1) % 25 == 0:
            log.info(
                "sam teacher: step %d loss %.3f train IoU %.3f (%.0fs)",
                step + 1, float(loss), float(np.mean(ious[-25:])), time.time() - start,
            )  # fmt: skip
        last = step + 1 == training.steps
        if held_out and evaluate_every > 0 and ((step + 1) % evaluate_every == 0 or last):
            curve.append({"step": step + 1, **held_out_prompted_miou(sam, training.model_name, held_out)})
            log.info("sam teacher: step %d held-out box mIoU %.1f point mIoU %.1f", step + 1,
                     curve[-1]["box_miou"], curve[-1]["point_miou"])  # fmt: skip
            sam.train()
    sam.eval()
    atomic_torch_save(sam.state_dict(), str(out_path))
    if curve:
        Path(out_path).with_suffix(".curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    return Path(out_path)
