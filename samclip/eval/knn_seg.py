"""k-NN semantic segmentation on frozen dense features: the non-parametric probe of Hummingbird
(Balažević et al., "Towards In-context Scene Understanding", 2023) that users of AM-RADIO and DINOv2 run on
a backbone's patch features, beside the trained heads of ``samclip.eval.seg_probe``.

A memory bank holds the L2-normalised patch features of the training split with each patch's soft label
(the class histogram of its pixels, 255 ignored). Every validation patch takes the ``k`` most
cosine-similar bank patches, weights their soft labels by ``softmax(similarity / temperature)``, and the
resulting class scores are upsampled bilinearly to the image's size for the argmax: no parameter is
trained, so the score measures the feature geometry alone. Images are resized to a square ``resolution``
as the head probe's are.

When the training split has more patches than ``memory_size``, each image keeps an equal random share
(seeded), Hummingbird's memory subsampling.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from samclip.eval.datasets.semseg import SegmentationDataset, open_segmentation_dataset
from samclip.eval.metrics import IGNORE_INDEX
from samclip.eval.seg_probe import (
    Encoder,
    augment,
    backbone_encoder,
    check_features,
    limit_images,
    probe_backbone,
    score_on_val,
)
from samclip.serve.merged import MergedSamClip

QUERY_CHUNK = 4096  # validation patches per similarity matrix
BANK_CHUNK = 65536  # bank patches per similarity matrix: bounds memory at QUERY_CHUNK x BANK_CHUNK floats


def evaluate_knn_seg(
    model: MergedSamClip | None,
    run_dir: Path,
    *,
    layout: str,
    root: str,
    train_split: str,
    val_split: str | None = None,
    features: str = "tokens",
    encoder: str = "student",
    sam_model: str = "samclip_vit_b",
    sam_checkpoint: str | None = None,
    resolution: int = 512,
    k: int = 30,
    temperature: float = 0.02,
    memory_size: int = 1_024_000,
    seed: int = 0,
    max_train_images: int | None = None,
    max_val_images: int | None = None,
    num_visualize: int = 4,
    save_predictions: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Build the memory bank on ``train_split``'s ``features``, then score k-NN label transfer on ``val_split``."""
    check_features(features)
    if resolution <= 0 or resolution % 16:
        raise ValueError(f"resolution must be a positive multiple of the patch size 16, got {resolution}")
    if k < 1 or temperature <= 0 or memory_size < 1:
        raise ValueError(
            f"need k >= 1, temperature > 0 and memory_size >= 1; got {k}, {temperature}, {memory_size}"
        )
    backbone = probe_backbone(model, encoder, sam_model, sam_checkpoint, device)
    train_set = limit_images(open_segmentation_dataset(layout, root, train_split), max_train_images)
    val_set = limit_images(open_segmentation_dataset(layout, root, val_split), max_val_images)
    was_training = backbone.training
    backbone.eval()
    try:
        results = knn_segmentation(
            backbone_encoder(backbone, features), train_set, val_set, Path(run_dir), resolution=resolution,
            k=k, temperature=temperature, memory_size=memory_size, seed=seed, num_visualize=num_visualize,
            save_predictions=save_predictions, device=next(backbone.parameters()).device,
        )  # fmt: skip
    finally:
        backbone.train(was_training)
    return {"features": features, "encoder": encoder, **results}


def knn_segmentation(
    encode: Encoder,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset,
    run_dir: Path,
    *,
    resolution: int,
    k: int = 30,
    temperature: float = 0.02,
    memory_size: int = 1_024_000,
    seed: int = 0,
    num_visualize: int = 0,
    save_predictions: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """k-NN label transfer with any frozen dense ``encode`` (a student's tokens, a teacher's patch tokens)."""
    device = torch.device(device)
    classifier = build_memory(encode, train_set, resolution, memory_size, seed, device)
    classifier.k, classifier.temperature = min(k, classifier.bank_size), temperature
    confusion = score_on_val(
        encode, classifier, val_set, resolution, run_dir, num_visualize, save_predictions, device
    )
    iou = confusion.iou()
    return {
        "dataset": val_set.name,
        "resolution": resolution,
        "k": classifier.k,
        "temperature": temperature,
        "memory_patches": classifier.bank_size,
        "mIoU": 100.0 * confusion.miou(),
        "pixel_accuracy": 100.0 * confusion.pixel_accuracy(),
        "num_train_images": len(train_set),
        "num_val_images": len(val_set),
        "per_class": {
            name: None if math.isnan(value) else 100.0 * float(value)
            for name, value in zip(val_set.classnames, iou, strict=True)
        },
    }  # fmt: skip


def patch_label_histograms(label: torch.Tensor, grid: int, num_classes: int) -> torch.Tensor:
    """[R, R] class indices (255 ignored) -> [grid * grid, num_classes] pixel counts per patch, row-major."""
    size = label.shape[-1]
    if size % grid:
        raise ValueError(f"label size {size} is not a multiple of the feature grid {grid}")
    cell = size // grid
    rows = torch.arange(size, device=label.device) // cell
    patch = (rows[:, None] * grid + rows[None, :]).flatten()
    flat = label.flatten().long()
    labelled = flat != IGNORE_INDEX
    if (flat[labelled] >= num_classes).any():
        raise ValueError(f"label holds class {int(flat[labelled].max())} >= num_classes {num_classes}")
    counts = torch.bincount(
        patch[labelled] * num_classes + flat[labelled], minlength=grid * grid * num_classes
    )
    return counts.view(grid * grid, num_classes).float()


@torch.no_grad()
def build_memory(
    encode: Encoder,
    dataset: SegmentationDataset,
    resolution: int,
    memory_size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> KnnLabelTransfer:
    """The memory bank of ``dataset``: normalised patch features and soft labels, ignored-only patches left out."""
    num_classes = len(dataset.classnames)
    per_image = max(1, memory_size // max(1, len(dataset)))
    generator = torch.Generator().manual_seed(seed)
    keys, values = [], []
    for sample in tqdm(dataset, desc=f"{dataset.name} memory bank", total=len(dataset)):
        pixels, label = augment(sample.image, sample.label, resolution, (1.0, 1.0), flip=False)
        dense = encode(pixels[None].to(device))[0]  # [C, h, w]
        tokens = F.normalize(dense.flatten(1).T.float(), dim=-1)  # [h*w, C]
        counts = patch_label_histograms(label.to(device), dense.shape[-1], num_classes)
        mass = counts.sum(-1)
        kept = torch.nonzero(mass > 0).squeeze(1)
        if len(kept) > per_image:
            kept = kept[torch.randperm(len(kept), generator=generator)[:per_image].to(kept.device)]
        keys.append(tokens[kept].half())
        values.append((counts[kept] / mass[kept, None]).half())
    if not keys or sum(len(key) for key in keys) == 0:
        raise ValueError(
            f"{dataset.name}: no labelled patch in the training split to build a memory bank from"
        )
    return KnnLabelTransfer(torch.cat(keys), torch.cat(values))


class KnnLabelTransfer(nn.Module):
    """Dense features [B, C, h, w] -> class scores [B, num_classes, h, w] by soft k-NN label transfer.

    A module so that the head probe's prediction and scoring code serves it unchanged."""

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, k: int = 30, temperature: float = 0.02
    ) -> None:
        super().__init__()
        self.register_buffer("keys", keys)  # [N, C] unit rows
        self.register_buffer("values", values)  # [N, num_classes] soft labels summing to 1
        self.k, self.temperature = k, temperature

    @property
    def bank_size(self) -> int:
        return len(self.keys)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = dense.shape
        queries = F.normalize(
            dense.flatten(2).transpose(1, 2).reshape(batch * height * width, -1).float(), dim=-1
        )
        scores = torch.cat([self._transfer(chunk) for chunk in queries.split(QUERY_CHUNK)])
        return scores.view(batch, height, width, -1).permute(0, 3, 1, 2)

    def _transfer(self, queries: torch.Tensor) -> torch.Tensor:
        best = torch.full((len(queries), 0), -math.inf, device=queries.device)
        index = torch.zeros((len(queries), 0), dtype=torch.long, device=queries.device)
        for start in range(0, self.bank_size, BANK_CHUNK):
            similarity = queries @ self.keys[start : start + BANK_CHUNK].float().T
            top = similarity.topk(min(self.k, similarity.shape[1]), dim=1)
            best = torch.cat([best, top.values], dim=1)
            index = torch.cat([index, top.indices + start], dim=1)
            if best.shape[1] > self.k:
                best, order = best.topk(self.k, dim=1)
                index = index.gather(1, order)
        weights = torch.softmax(best / self.temperature, dim=1)  # [Q, k]
        return torch.einsum("qk,qkc->qc", weights, self.values[index].float())
