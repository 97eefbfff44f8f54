"""k-NN semantic segmentation (Hummingbird's dense label transfer): the vote against a hand computation, the
patch labels against a per-pixel loop, and the whole probe on a task whose answer is known."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samclip.cli.eval import main
from samclip.eval.datasets.semseg import open_segmentation_dataset
from samclip.eval.knn_seg import KnnLabelTransfer, build_memory, evaluate_knn_seg, patch_label_histograms
from samclip.eval.metrics import IGNORE_INDEX
from samclip.eval.seg_probe import backbone_encoder


def test_vote_is_the_softmax_weighted_soft_labels_of_the_k_most_similar_bank_patches(monkeypatch):
    # Bank chunks smaller than the bank: the running top-k across chunks must equal one global top-k.
    monkeypatch.setattr("samclip.eval.knn_seg.BANK_CHUNK", 7)
    generator = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(40, 6, generator=generator), dim=-1)
    values = torch.softmax(torch.randn(40, 5, generator=generator), dim=-1)
    dense = torch.randn(2, 6, 3, 4, generator=generator)
    scores = KnnLabelTransfer(keys, values, k=4, temperature=0.1)(dense)
    assert scores.shape == (2, 5, 3, 4)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                query = dense[b, :, i, j] / dense[b, :, i, j].norm()
                similarity = (keys @ query).numpy()
                nearest = np.argsort(-similarity)[:4]
                weights = np.exp(similarity[nearest] / 0.1)
                expected = (weights[:, None] * values[nearest].numpy()).sum(0) / weights.sum()
                np.testing.assert_allclose(scores[b, :, i, j].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_patch_labels_are_the_class_counts_of_each_cells_pixels_ignoring_255():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, (12, 12))
    label[rng.random((12, 12)) < 0.2] = IGNORE_INDEX
    counts = patch_label_histograms(torch.from_numpy(label), grid=3, num_classes=4)
    for row in range(3):
        for col in range(3):
            cell = label[4 * row : 4 * row + 4, 4 * col : 4 * col + 4]
            expected = [np.sum(cell == c) for c in range(4)]
            assert counts[row * 3 + col].tolist() == expected
    with pytest.raises(ValueError, match="not a multiple of the feature grid 5"):
        patch_label_histograms(torch.from_numpy(label), grid=5, num_classes=4)
    with pytest.raises(ValueError, match="class 3 >= num_classes 3"):
        patch_label_histograms(torch.from_numpy(label), grid=3, num_classes=3)


def _knn(merged, root, run_dir, **overrides):
    arguments = dict(layout="voc", root=str(root), train_split="train", resolution=128, num_visualize=1)
    return evaluate_knn_seg(merged, run_dir, **{**arguments, **overrides})


def test_knn_transfers_the_red_box_labels_and_fails_with_shuffled_bank_labels(merged, red_box_voc, tmp_path):
    # The random student's tokens keep colour: red cells are each other's neighbours, so the known answer
    # (box = class 1) transfers. The same bank with its labels permuted must not.
    results = _knn(merged, red_box_voc, tmp_path / "knn", k=5)
    assert results["mIoU"] > 80.0 and results["k"] == 5 and results["num_val_images"] == 4
    assert results["memory_patches"] == 8 * 8 * 8  # every cell of the 8 training images is labelled
    original = KnnLabelTransfer.__init__

    def shuffled(self, keys, values, *args, **kwargs):
        original(self, keys, values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KnnLabelTransfer, "__init__", shuffled)
        broken = _knn(merged, red_box_voc, tmp_path / "shuffled", k=5)
    assert broken["mIoU"] < results["mIoU"] - 30.0


def test_memory_size_keeps_an_equal_seeded_share_of_each_image(merged, red_box_voc):
    dataset = open_segmentation_dataset("voc", str(red_box_voc), "train")
    encode = backbone_encoder(merged.model.eval(), "tokens")
    small = build_memory(encode, dataset, 128, memory_size=80, seed=3)
    again = build_memory(encode, dataset, 128, memory_size=80, seed=3)
    assert small.bank_size == 80  # 10 of each image's 64 cells
    assert torch.equal(small.keys, again.keys) and torch.equal(small.values, again.values)
    torch.testing.assert_close(small.values.float().sum(-1), torch.ones(80), atol=1e-3, rtol=0)


def test_runs_through_the_cli_and_rejects_bad_arguments(final_checkpoint, red_box_voc, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(
        sys,
        "argv",
        ["samclip-eval", "eval=knn_seg_voc", f"checkpoint={final_checkpoint}", f"run_dir={run_dir}",
         f"eval.root={red_box_voc}", "eval.resolution=64", "eval.num_visualize=2", "device=cpu"],
    )  # fmt: skip
    main()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "knn_seg_voc" and results["k"] == 30 and 0.0 <= results["mIoU"] <= 100.0
    assert len(list((run_dir / "qualitative").glob("*.png"))) == 2
    with pytest.raises(ValueError, match="unknown features 'cls'"):
        _knn(None, red_box_voc, tmp_path / "x", features="cls")
    with pytest.raises(ValueError, match="need k >= 1"):
        _knn(None, red_box_voc, tmp_path / "x", k=0)
