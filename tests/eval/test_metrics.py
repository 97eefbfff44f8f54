"""Metrics against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samclip.eval.metrics import ConfusionMatrix, retrieval_recall
from samclip.models.zeroshot_classifier import topk_correct


def test_miou_equals_a_hand_computed_confusion_matrix_and_honours_ignore():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    prediction = np.array([[0, 1, 1], [1, 2, 0]])
    confusion = ConfusionMatrix(3)
    confusion.update(prediction, target)
    # The ignored pixel (predicted 0) is not counted anywhere.
    np.testing.assert_array_equal(confusion.matrix, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    # IoU: class 0 = 1 / (2 + 1 - 1), class 1 = 2 / (2 + 3 - 2), class 2 = 1 / 1.
    np.testing.assert_allclose(confusion.iou(), [1 / 2, 2 / 3, 1.0])
    assert confusion.miou() == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert confusion.pixel_accuracy() == pytest.approx(4 / 5)


def test_miou_accumulates_over_images_and_skips_absent_classes():
    confusion = ConfusionMatrix(4)
    confusion.update(np.array([0, 0, 1]), np.array([0, 1, 1]))
    confusion.update(np.array([2, 2]), np.array([2, 255]))
    iou = confusion.iou()
    assert np.isnan(iou[3])  # never in ground truth nor predicted: not averaged
    np.testing.assert_allclose(iou[:3], [1 / 2, 1 / 2, 1.0])
    assert confusion.miou() == pytest.approx(2 / 3)


def test_confusion_matrix_rejects_labels_outside_the_classes():
    confusion = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="target labels"):
        confusion.update(np.array([0]), np.array([7]))
    with pytest.raises(ValueError, match="shape"):
        confusion.update(np.zeros((2, 2)), np.zeros((2, 3)))


def test_topk():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.1, 0.2]])
    targets = torch.tensor([1, 2, 0])
    # Row 0 right at top-1; row 1's target ranks 2nd; row 2's ranks 3rd.
    assert topk_correct(logits, targets, (1, 2, 5)) == {1: 1, 2: 2, 5: 3}


def test_retrieval_recall_by_hand():
    # 3 images, 4 captions: captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2.
    owners = torch.tensor([0, 0, 1, 2])
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],
            [0.8, 0.2, 0.1, 0.0],
            [0.0, 0.0, 0.5, 0.4],
        ]
    )
    recall = retrieval_recall(similarity, owners, (1, 2))
    # text->image ranks: c0 -> image 0 first; c1: column [0.1,0.2,0.0] image 0 second; c2: [0.2,0.1,0.5] image 1
    # third; c3: [0.3,0.0,0.4] image 2 first.
    assert recall["text_to_image_R@1"] == pytest.approx(50.0)
    assert recall["text_to_image_R@2"] == pytest.approx(75.0)
    # image->text: image 0 best caption c0 rank 1; image 1 row [0.8,0.2,0.1,0.0] caption 2 rank 3;
    # image 2 row [0,0,0.5,0.4] caption 3 rank 2.
    assert recall["image_to_text_R@1"] == pytest.approx(100 / 3)
    assert recall["image_to_text_R@2"] == pytest.approx(200 / 3)
