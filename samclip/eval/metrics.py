"""Metrics shared by the evaluation tasks: confusion-matrix IoU, retrieval recall (top-k hits: ``samclip.models.zeroshot_classifier``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates a [C, C] confusion matrix (rows: ground truth, columns: prediction) over images."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        """``prediction`` and ``target`` are integer label maps of the same shape; ignored pixels are skipped."""
        prediction, target = np.asarray(prediction), np.asarray(target)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
        keep = target != self.ignore_index
        gt, pred = target[keep].astype(np.int64), prediction[keep].astype(np.int64)
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            raise ValueError(
                f"target labels must be in [0, {self.num_classes}) or {self.ignore_index}; "
                f"found {sorted(set(np.unique(gt).tolist()) - set(range(self.num_classes)))[:5]}"
            )
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"predicted labels must be in [0, {self.num_classes})")
        self.matrix += np.bincount(gt * self.num_classes + pred, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both ground truth and predictions."""
        true_positive = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, true_positive / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over classes present in the ground truth or the predictions (mmseg's nanmean)."""
        iou = self.iou()
        if np.isnan(iou).all():
            raise ValueError("no labelled pixels were accumulated")
        return float(np.nanmean(iou))

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def retrieval_recall(
    similarity: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K both ways from a [num_images, num_texts] similarity matrix.

    ``text_to_image[j]`` is the index of caption j's image. Image→text counts an image as found when any
    of its captions is in its top K; text→image counts a caption when its image is in its top K.
    """
    num_images, num_texts = similarity.shape
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image has shape {tuple(text_to_image.shape)}, expected ({num_texts},)")
    results: dict[str, float] = {}
    # Rank of the true image for each caption: how many images score strictly higher.
    true_scores = similarity[text_to_image, torch.arange(num_texts)]
    text_rank = (similarity > true_scores[None, :]).sum(0)
    # For each image, the best rank among its captions.
    image_order = similarity.argsort(dim=1, descending=True)
    owner_in_order = text_to_image[image_order] == torch.arange(num_images)[:, None]
    image_rank = owner_in_order.float().argmax(dim=1)
    has_caption = owner_in_order.any(dim=1)
    for k in ks:
        results[f"text_to_image_R@{k}"] = float((text_rank < k).float().mean()) * 100
        results[f"image_to_text_R@{k}"] = float(((image_rank < k) & has_caption).float().mean()) * 100
    return results
