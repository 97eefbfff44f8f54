"""Linear probing for classification (Table 4: ImageNet, Places365): frozen image features of a train and a
val split, a multinomial logistic regression fitted on the cached features, top-1/top-5 on val.

Features: the CLIP head's pooled image embedding (``features=clip_head``, L2-normalised as in zero-shot
use), the backbone's last-block tokens mean-pooled (``features=backbone``), or the CLIP teacher's image
embedding (``encoder=teacher``) for comparison. They are standardised with the train split's mean and std,
so one weight-decay grid suits every feature kind.

The classifier minimises ``mean cross-entropy + weight_decay * ||W||^2`` (bias not decayed) with full-batch
L-BFGS, i.e. sklearn's ``LogisticRegression(C=1 / (2 * weight_decay * N))`` as CLIP's linear probes used.
CLIP swept C over 96 values on a validation split; we pick ``weight_decay`` from a small log grid on a
stratified held-out part of train, then refit on all of train with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from samclip.data.classnames import read_classnames
from samclip.data.transforms import classification_transform
from samclip.eval.datasets.classification import image_folder_loader
from samclip.eval.encoders import resolve_encoder
from samclip.models.zeroshot_classifier import topk_correct
from samclip.serve.merged import MergedSamClip

log = logging.getLogger(__name__)

FEATURES = ("clip_head", "backbone")
# Decades around where ImageNet-sized probes on standardised features land (sklearn C ~ 1e-3..1e2).
WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class FeatureEncoder:
    """Images (float [0, 1], [B, 3, R, R]) -> frozen features [B, D]."""

    name: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    native_resolution: int | None  # the teacher's fixed input size, or None when any size works


@dataclass(frozen=True)
class FeatureSet:
    features: torch.Tensor  # [N, D] float32
    labels: torch.Tensor  # [N] int64


@dataclass(frozen=True)
class LinearClassifier:
    weight: torch.Tensor  # [D, C]
    bias: torch.Tensor  # [C]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight + self.bias


def evaluate_linear_probe(
    model: MergedSamClip | None,
    run_dir: Path,
    *,
    train_root: str,
    val_root: str,
    classnames: str | Sequence[str] | None = None,
    features: str = "clip_head",
    encoder: str = "student",
    teacher_model: str | None = None,
    teacher_pretrained: str | None = None,
    resolution: int = 224,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    holdout_fraction: float = 0.1,
    max_iter: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 4,
    device: str = "cpu",
) -> dict[str, Any]:
    """``train_root`` and ``val_root`` are ImageFolder trees with the same class folders."""
    probe = feature_encoder(features, encoder, model, teacher_model, teacher_pretrained, device)
    size = probe.native_resolution or resolution
    transform = classification_transform(size)
    train_loader, folders = image_folder_loader(train_root, transform, batch_size, num_workers)
    val_loader, val_folders = image_folder_loader(val_root, transform, batch_size, num_workers)
    if val_folders != folders:
        raise ValueError(
            f"class folders differ: {train_root} has {len(folders)}, {val_root} {len(val_folders)} "
            f"(first difference: {sorted(set(folders) ^ set(val_folders))[:3]})"
        )
    names = read_classnames(classnames, folders)
    if len(names) != len(folders):
        raise ValueError(f"{len(names)} class names for {len(folders)} class folders in {train_root}")
    train = extract_features(probe.encode, train_loader, f"probe features train {size}px")
    val = extract_features(probe.encode, val_loader, f"probe features val {size}px")
    train, val = standardize(train, val)
    fit_device = torch.device(device)
    weight_decay, holdout_top1, init = select_weight_decay(
        train, len(names), weight_decays, holdout_fraction, max_iter, seed, fit_device
    )
    classifier = fit_logistic_regression(train, len(names), weight_decay, max_iter, fit_device, init)
    return {
        "encoder": probe.name,
        "features": features,
        "resolution": size,
        "num_classes": len(names),
        "num_train": len(train.labels),
        "num_val": len(val.labels),
        "feature_dim": train.features.shape[1],
        "weight_decay": weight_decay,
        **score(classifier, val, names, fit_device),
        "holdout_top1": holdout_top1,
    }


def feature_encoder(
    features: str,
    encoder: str,
    model: MergedSamClip | None,
    teacher_model: str | None,
    teacher_pretrained: str | None,
    device: str,
) -> FeatureEncoder:
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; use one of {FEATURES}")
    if features == "backbone":
        if encoder != "student":
            raise ValueError("features=backbone probes the student's backbone; use encoder=student")
        if model is None:
            raise ValueError("features=backbone needs checkpoint=FILE")
        return FeatureEncoder("samclip_backbone", _backbone_encoder(model), None)
    clip = resolve_encoder(encoder, model, teacher_model, teacher_pretrained, device)
    return FeatureEncoder(clip.name, clip.encode_image, clip.native_resolution)


def _backbone_encoder(model: MergedSamClip) -> Callable[[torch.Tensor], torch.Tensor]:
    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        tokens = model.model.forward_features(images.to(model.device), with_neck=False).tokens  # [B, h, w, C]
        return tokens.float().mean(dim=(1, 2))

    return encode


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, desc: str
) -> FeatureSet:
    features, labels = [], []
    for images, targets in tqdm(loader, desc=desc):
        features.append(encode(images).float().cpu())
        labels.append(targets)
    if not features:
        raise ValueError(f"{desc}: the data yielded no images")
    return FeatureSet(torch.cat(features), torch.cat(labels).long())


def standardize(train: FeatureSet, *others: FeatureSet) -> tuple[FeatureSet, ...]:
    """Zero mean, unit variance per dimension with train statistics; constant dimensions become 0."""
    mean = train.features.mean(0)
    std = train.features.std(0, correction=0).clamp_min(1e-6)
    return tuple(FeatureSet((split.features - mean) / std, split.labels) for split in (train, *others))


def fit_logistic_regression(
    data: FeatureSet,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 1000,
    device: torch.device | str = "cpu",
    init: LinearClassifier | None = None,
) -> LinearClassifier:
    """Minimise ``mean CE + weight_decay * ||W||^2`` with full-batch L-BFGS (strong Wolfe line search)."""
    features, labels = data.features.to(device), data.labels.to(device)
    weight = torch.zeros(features.shape[1], num_classes, device=device)
    bias = torch.zeros(num_classes, device=device)
    if init is not None:
        weight.copy_(init.weight)
        bias.copy_(init.bias)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = logistic_loss(features, labels, weight, bias, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearClassifier(weight.detach(), bias.detach())


def logistic_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    weight_decay: float,
) -> torch.Tensor:
    return F.cross_entropy(features @ weight + bias, labels) + weight_decay * weight.square().sum()


def select_weight_decay(
    train: FeatureSet,
    num_classes: int,
    weight_decays: Sequence[float],
    holdout_fraction: float,
    max_iter: int,
    seed: int,
    device: torch.device,
) -> tuple[float, dict[str, float], LinearClassifier | None]:
    """The grid value with the best held-out top-1 (ties: the larger, simpler one) and its fit as a warm start."""
    grid = sorted({float(value) for value in weight_decays}, reverse=True)
    if not grid or min(grid) < 0:
        raise ValueError(f"eval.weight_decays must be non-negative values, got {list(weight_decays)}")
    if len(grid) == 1:
        return grid[0], {}, None
    fit, holdout = stratified_split(train, holdout_fraction, seed)
    best: tuple[float, float, LinearClassifier] | None = None
    accuracies: dict[str, float] = {}
    classifier = None
    # Largest decay first: each fit warm-starts the next, less regularised one.
    for weight_decay in grid:
        classifier = fit_logistic_regression(fit, num_classes, weight_decay, max_iter, device, classifier)
        top1 = accuracy(classifier, holdout, device)
        accuracies[f"{weight_decay:g}"] = top1
        log.info("linear probe weight_decay %g: held-out top-1 %.2f", weight_decay, top1)
        if best is None or top1 > best[1]:
            best = (weight_decay, top1, classifier)
    assert best is not None
    return best[0], accuracies, best[2]


def stratified_split(data: FeatureSet, fraction: float, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """Hold out ``round(fraction * n_c)`` images of each class c, keeping at least one of each to fit on."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"eval.holdout_fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    held: list[torch.Tensor] = []
    for label in data.labels.unique():
        members = (data.labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held.append(members[: min(round(fraction * len(members)), len(members) - 1)])
    mask = torch.zeros(len(data.labels), dtype=torch.bool)
    mask[torch.cat(held)] = True
    if not mask.any():
        raise ValueError(
            f"holdout_fraction={fraction} holds out no training image ({len(data.labels)} in all); "
            "raise it or give one eval.weight_decays value"
        )
    return FeatureSet(data.features[~mask], data.labels[~mask]), FeatureSet(
        data.features[mask], data.labels[mask]
    )


@torch.no_grad()
def accuracy(classifier: LinearClassifier, data: FeatureSet, device: torch.device) -> float:
    predictions = classifier(data.features.to(device)).argmax(1).cpu()
    return 100.0 * float((predictions == data.labels).float().mean())


@torch.no_grad()
def score(
    classifier: LinearClassifier, data: FeatureSet, names: Sequence[str], device: torch.device
) -> dict[str, Any]:
    """Top-1/top-5 (percent) and per-class top-1 (None for classes without val images)."""
    logits = classifier(data.features.to(device)).cpu()
    hits = topk_correct(logits, data.labels, (1, 5))
    correct = logits.argmax(1) == data.labels
    per_class: dict[str, float | None] = {}
    for index, name in enumerate(names):
        members = data.labels == index
        per_class[name] = 100.0 * float(correct[members].float().mean()) if members.any() else None
    total = len(data.labels)
    return {"top1": 100.0 * hits[1] / total, "top5": 100.0 * hits[5] / total, "per_class": per_class}
