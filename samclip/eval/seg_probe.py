"""Head probing for semantic segmentation (section 4.3, Table 3): a frozen image backbone, a trained head.

A ``linear``, ``deeplabv3`` or ``pspnet`` head (``samclip.eval.seg_heads``) learns on the backbone's
last-block tokens (or SAM's neck) over the dataset's train split and is scored on its val split: mIoU and
per-class IoU from one confusion matrix, 255 ignored. The backbone runs in eval mode under
``torch.no_grad()`` and never receives a gradient.

The paper states neither the input size nor the schedule. Ours: images resized to a square
``resolution`` (512 px, mmsegmentation's VOC/ADE crop; a 32x32 token grid), training on random-scale
(0.5-2.0) crops with horizontal flips, AdamW with poly decay, logits upsampled bilinearly to the label's
size for the loss and to the original image size for evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from samclip.data.transforms import resize_square, to_float_tensor
from samclip.eval.datasets.semseg import SegmentationDataset, open_segmentation_dataset
from samclip.eval.datasets.workers import usable_num_workers
from samclip.eval.metrics import IGNORE_INDEX, ConfusionMatrix
from samclip.eval.seg_heads import HEADS, build_head
from samclip.eval.visualize import class_palette, save_segmentation_panel
from samclip.models import SamClipModel, create_model
from samclip.models.checkpoint_files import atomic_torch_save
from samclip.models.preprocess import pad_to_square
from samclip.serve.merged import MergedSamClip

FEATURES = ("tokens", "neck")
ENCODERS = ("student", "sam")
DECAYS = ("poly", "cosine")
POLY_POWER = 0.9  # mmsegmentation's poly schedule

Batch = tuple[torch.Tensor, torch.Tensor]  # features [B, C, h, w] on the device, labels [B, R, R] long
Batches = Generator[Batch, None, None]


def evaluate_seg_probe(
    model: MergedSamClip | None,
    run_dir: Path,
    *,
    layout: str,
    root: str,
    train_split: str,
    val_split: str | None = None,
    head: str = "linear",
    features: str = "tokens",
    encoder: str = "student",
    sam_model: str = "samclip_vit_b",
    sam_checkpoint: str | None = None,
    resolution: int = 512,
    iterations: int = 20000,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    decay: str = "poly",
    scale_range: Sequence[float] = (0.5, 2.0),
    flip: bool = True,
    cache_features: bool = False,
    num_workers: int = 4,
    seed: int = 0,
    max_train_images: int | None = None,
    max_val_images: int | None = None,
    num_visualize: int = 4,
    save_predictions: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``head`` on frozen ``features`` over ``train_split``, then score it on ``val_split``.

    ``encoder=student`` probes the checkpoint's backbone; ``encoder=sam`` the original SAM (Table 3's SAM
    row) built as ``sam_model`` from the official ``sam_checkpoint``.
    """
    _check_arguments(
        head, features, decay, resolution, iterations, batch_size, scale_range, flip, cache_features
    )
    torch.manual_seed(seed)
    backbone = probe_backbone(model, encoder, sam_model, sam_checkpoint, device)
    target_device = next(backbone.parameters()).device
    train_set = limit_images(open_segmentation_dataset(layout, root, train_split), max_train_images)
    val_set = limit_images(open_segmentation_dataset(layout, root, val_split), max_val_images)
    if len(train_set) < batch_size:
        raise ValueError(
            f"{len(train_set)} training images in {root} ({train_split}) < batch_size {batch_size}"
        )
    num_classes = len(train_set.classnames)
    probe = build_head(head, _feature_channels(backbone, features), num_classes).to(target_device)
    was_training = backbone.training
    backbone.eval()
    try:
        if cache_features:
            batches = _cached_batches(backbone, train_set, features, resolution, batch_size, seed)
        else:
            loader = _train_loader(train_set, resolution, scale_range, flip, batch_size, num_workers, seed)
            batches = _streamed_batches(backbone, loader, features, target_device)
        try:
            final_loss = train_head(
                probe, batches, iterations=iterations, lr=lr, weight_decay=weight_decay, decay=decay
            )
        finally:
            batches.close()  # ends the DataLoader's workers now rather than at garbage collection
        confusion = score_on_val(
            backbone_encoder(backbone, features), probe, val_set, resolution, Path(run_dir), num_visualize,
            save_predictions, target_device,
        )  # fmt: skip
    finally:
        backbone.train(was_training)
    atomic_torch_save(
        {"head": head, "features": features, "state_dict": probe.state_dict()}, Path(run_dir) / "head.pt"
    )
    iou = confusion.iou()
    return {
        "dataset": val_set.name,
        "head": head,
        "features": features,
        "encoder": encoder,
        "resolution": resolution,
        "iterations": iterations,
        "batch_size": batch_size,
        "final_loss": final_loss,
        "mIoU": 100.0 * confusion.miou(),
        "pixel_accuracy": 100.0 * confusion.pixel_accuracy(),
        "num_train_images": len(train_set),
        "num_val_images": len(val_set),
        "per_class": {
            name: None if math.isnan(value) else 100.0 * float(value)
            for name, value in zip(val_set.classnames, iou, strict=True)
        },
    }  # fmt: skip


ADAPTOR_PREFIX = "adaptor:"


def check_features(features: str) -> None:
    if features not in FEATURES and not features.startswith(ADAPTOR_PREFIX):
        raise ValueError(f"unknown features {features!r}; use one of {FEATURES} or {ADAPTOR_PREFIX}<name>")


def _check_arguments(
    head: str,
    features: str,
    decay: str,
    resolution: int,
    iterations: int,
    batch_size: int,
    scale_range: Sequence[float],
    flip: bool,
    cache_features: bool,
) -> None:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; use one of {HEADS}")
    check_features(features)
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; use one of {DECAYS}")
    if resolution <= 0 or resolution % 16:
        raise ValueError(f"resolution must be a positive multiple of the patch size 16, got {resolution}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    # The heads' BatchNorm after global pooling sees one value per channel and image.
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm in the heads), got {batch_size}")
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
    if cache_features and (tuple(scale_range) != (1.0, 1.0) or flip):
        raise ValueError("cache_features needs fixed inputs: set scale_range=[1,1] and flip=false")


def probe_backbone(
    model: MergedSamClip | None, encoder: str, sam_model: str, sam_checkpoint: str | None, device: str
) -> SamClipModel:
    if encoder == "student":
        if model is None:
            raise ValueError("encoder=student needs checkpoint=FILE")
        return model.model
    if encoder == "sam":
        if sam_checkpoint is None:
            raise ValueError("encoder=sam needs eval.sam_checkpoint (an official SAM checkpoint file)")
        return create_model(sam_model, sam_checkpoint=sam_checkpoint).to(device)
    raise ValueError(f"unknown encoder {encoder!r}; use one of {ENCODERS}")


def limit_images(dataset: SegmentationDataset, limit: int | None) -> SegmentationDataset:
    if limit is not None:
        dataset.pairs = dataset.pairs[:limit]
    return dataset


def _feature_channels(backbone: SamClipModel, features: str) -> int:
    if features.startswith(ADAPTOR_PREFIX):
        return backbone.config.adaptor_dim(features.removeprefix(ADAPTOR_PREFIX))
    return backbone.config.embed_dim if features == "tokens" else backbone.config.prompt_embed_dim


@torch.no_grad()
def extract_features(backbone: SamClipModel, images: torch.Tensor, features: str) -> torch.Tensor:
    """[B, 3, R, R] float images in [0, 1] -> frozen features [B, C, R/16, R/16].

    ``adaptor:<name>``: the dense features of a distilled teacher's adaptor head (e.g. DINOv2's), the
    probe a user of AM-RADIO runs on them."""
    if features.startswith(ADAPTOR_PREFIX):
        name = features.removeprefix(ADAPTOR_PREFIX)
        return backbone(images, None, clip=False, heads=(name,)).heads[name].features
    out = backbone.forward_features(images)
    return out.tokens.permute(0, 3, 1, 2).contiguous() if features == "tokens" else out.neck


def augment(
    image: np.ndarray, label: np.ndarray, resolution: int, scale_range: Sequence[float], flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square resize by a random factor of ``resolution``, a random ``resolution`` crop, a random flip.

    Pixels padded where the scaled image is smaller than the crop normalise to zero and are labelled 255.
    With ``scale_range=(1, 1)`` and no flip this is the evaluation resize.
    """
    low, high = scale_range
    size = max(16, round(resolution * (low + (high - low) * float(torch.rand(())))))
    pixels = resize_square(to_float_tensor(image), size)
    target = F.interpolate(
        torch.from_numpy(label)[None, None].float(), size=(size, size), mode="nearest-exact"
    )
    frame = max(size, resolution)
    pixels = pad_to_square(pixels, frame)
    target = F.pad(target, (0, frame - size, 0, frame - size), value=IGNORE_INDEX)
    top, left = (int(torch.randint(0, frame - resolution + 1, ())) for _ in range(2))
    pixels = pixels[0, :, top : top + resolution, left : left + resolution]
    target = target[0, 0, top : top + resolution, left : left + resolution].long()
    if flip and float(torch.rand(())) < 0.5:
        pixels, target = pixels.flip(-1), target.flip(-1)
    return pixels.contiguous(), target.contiguous()


class _AugmentedImages(Dataset):
    def __init__(
        self, dataset: SegmentationDataset, resolution: int, scale_range: Sequence[float], flip: bool
    ) -> None:
        self.dataset = dataset
        self.resolution = resolution
        self.scale_range = tuple(scale_range)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.dataset.load(*self.dataset.pairs[index])
        return augment(sample.image, sample.label, self.resolution, self.scale_range, self.flip)


def _train_loader(
    dataset: SegmentationDataset,
    resolution: int,
    scale_range: Sequence[float],
    flip: bool,
    batch_size: int,
    num_workers: int,
    seed: int,
) -> DataLoader:
    num_workers = usable_num_workers(num_workers)
    return DataLoader(
        _AugmentedImages(dataset, resolution, scale_range, flip),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,  # a one-image batch would break the heads' BatchNorm
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def _streamed_batches(
    backbone: SamClipModel, loader: DataLoader, features: str, device: torch.device
) -> Batches:
    while True:
        for images, labels in loader:
            yield extract_features(backbone, images.to(device), features), labels.to(device)


def _cached_batches(
    backbone: SamClipModel,
    dataset: SegmentationDataset,
    features: str,
    resolution: int,
    batch_size: int,
    seed: int,
) -> Batches:
    """Features of every training image computed once (fixed resize, no augmentation), then sampled."""
    device = next(backbone.parameters()).device
    cached, labels = [], []
    for sample in tqdm(dataset, desc=f"{dataset.name} caching features", total=len(dataset)):
        pixels, label = augment(sample.image, sample.label, resolution, (1.0, 1.0), flip=False)
        cached.append(extract_features(backbone, pixels[None].to(device), features).half().cpu())
        labels.append(label.to(torch.uint8))
    all_features, all_labels = torch.cat(cached), torch.stack(labels)
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(all_features), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield all_features[index].to(device).float(), all_labels[index].to(device).long()


def lr_factor(decay: str, iterations: int) -> Any:
    """The learning-rate multiplier at each step: poly (power 0.9) or cosine, from 1 down to 0."""
    if decay == "poly":
        return lambda step: (1.0 - min(step, iterations) / iterations) ** POLY_POWER
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, iterations) / iterations))


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits upsampled to the labels' size, 255 ignored.

    Summed and divided by the labelled pixels (at least one): a crop that holds only ignored pixels then
    gives zero instead of the NaN that the mean over no pixels would.
    """
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def train_head(
    head: nn.Module, batches: Iterator[Batch], *, iterations: int, lr: float, weight_decay: float, decay: str
) -> float:
    """AdamW on ``head`` alone for ``iterations`` steps; returns the last step's loss."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(decay, iterations))
    head.train()
    loss = torch.zeros(())
    progress = tqdm(range(iterations), desc="head probing")
    for step in progress:
        features, labels = next(batches)
        loss = segmentation_loss(head(features), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"head-probing loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 10 == 0 or step == iterations - 1:
            progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    head.eval()
    return loss.item()


Encoder = Callable[
    [torch.Tensor], torch.Tensor
]  # [B, 3, R, R] float in [0, 1] -> dense features [B, C, h, w]


def backbone_encoder(backbone: SamClipModel, features: str) -> Encoder:
    """The frozen ``features`` of ``backbone`` as an encoder the scoring code calls."""
    return lambda images: extract_features(backbone, images, features)


@torch.no_grad()
def predict(
    encode: Encoder, head: nn.Module, image: np.ndarray, resolution: int, device: torch.device
) -> np.ndarray:
    """HxWx3 uint8 -> HxW class indices: square resize, frozen features, head, bilinear upsampling, argmax."""
    pixels = resize_square(to_float_tensor(image).to(device), resolution)
    logits = head(encode(pixels))
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].argmax(0).cpu().numpy()


def score_on_val(
    encode: Encoder,
    head: nn.Module,
    dataset: SegmentationDataset,
    resolution: int,
    run_dir: Path,
    num_visualize: int,
    save_predictions: bool,
    device: torch.device,
) -> ConfusionMatrix:
    """The confusion matrix of ``head`` on ``encode``'s features over ``dataset``; titled panels of the first
    ``num_visualize`` images under ``run_dir/qualitative``, class-index PNGs if ``save_predictions``."""
    head.eval()
    confusion = ConfusionMatrix(len(dataset.classnames))
    palette = class_palette(len(dataset.classnames))
    for index, sample in enumerate(tqdm(dataset, desc=f"{dataset.name} val", total=len(dataset))):
        prediction = predict(encode, head, sample.image, resolution, device)
        confusion.update(prediction, sample.label)
        if index < num_visualize:
            save_segmentation_panel(
                run_dir / "qualitative" / f"{sample.name}.png",
                sample.image,
                prediction,
                sample.label,
                palette,
                classnames=dataset.classnames,
            )
        if save_predictions:
            (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
            Image.fromarray(prediction.astype(np.uint8)).save(run_dir / "predictions" / f"{sample.name}.png")
    return confusion
