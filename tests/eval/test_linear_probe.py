"""Linear probing: separable features give accuracy 1, identical features the majority class, the model stays
frozen, and the L-BFGS fit reaches the regularised optimum."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from constructed import CLIP_NAME, COLORS, write_image_folder

from samclip.cli.eval import main
from samclip.eval.linear_probe import (
    FeatureSet,
    evaluate_linear_probe,
    fit_logistic_regression,
    logistic_loss,
    stratified_split,
)
from samclip.serve.merged import load

NUM_CLASSES = 4


def _jittered_folder(root: Path, per_class: int, seed: int) -> Path:
    """``per_class`` images of each of the first NUM_CLASSES colours, each channel jittered by up to +-12."""
    rng = np.random.default_rng(seed)
    labels = [f"class{c}" for c in range(NUM_CLASSES) for _ in range(per_class)]
    base = np.repeat(COLORS[:NUM_CLASSES].astype(np.int64), per_class, axis=0)
    colors = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
    return write_image_folder(root, labels, colors)


def _same_image_folder(root: Path, counts: dict[str, int]) -> Path:
    """Every image the same colour: the features cannot tell the classes apart."""
    labels = [name for name, count in counts.items() for _ in range(count)]
    return write_image_folder(root, labels, np.repeat(COLORS[:1], len(labels), axis=0))


def _probe(model, tmp_path: Path, train: Path, val: Path, **kwargs: object) -> dict:
    # A short grid keeps the tests fast; the CLI test runs the config's full one.
    options = {"resolution": 64, "batch_size": 16, "num_workers": 0, "weight_decays": [1e-4, 1e-2], **kwargs}
    return evaluate_linear_probe(model, tmp_path / "run", train_root=str(train), val_root=str(val), **options)


@pytest.fixture(scope="module")
def colour_splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("probe")
    return _jittered_folder(root / "train", 6, seed=0), _jittered_folder(root / "val", 3, seed=1)


@pytest.mark.parametrize("features", ["clip_head", "backbone"])
def test_separable_colours_are_classified_perfectly(merged, colour_splits, tmp_path, features):
    results = _probe(merged, tmp_path, *colour_splits, features=features)
    assert results["top1"] == 100.0 and results["top5"] == 100.0
    assert results["num_train"] == 6 * NUM_CLASSES and results["num_val"] == 3 * NUM_CLASSES
    assert results["feature_dim"] == (32 if features == "clip_head" else 64)
    assert results["per_class"] == {f"class{c}": 100.0 for c in range(NUM_CLASSES)}
    assert results["weight_decay"] in {float(key) for key in results["holdout_top1"]}


def test_the_clip_teacher_itself(clip_tower_file, colour_splits, tmp_path):
    results = _probe(
        None,
        tmp_path,
        *colour_splits,
        encoder="teacher",
        teacher_model=CLIP_NAME,
        teacher_pretrained=str(clip_tower_file),
    )
    assert results["encoder"] == f"clip_teacher:{CLIP_NAME}" and results["resolution"] == 64
    assert results["top1"] == 100.0


def test_identical_features_predict_the_majority_class(merged, tmp_path):
    """Hand check: with nothing to separate, the optimum is the bias alone, log of the train class frequencies;
    every val image gets the train majority class ("b"), so top-1 = val share of "b" = 3 / 7."""
    train = _same_image_folder(tmp_path / "train", {"a": 3, "b": 6, "c": 2})
    val = _same_image_folder(tmp_path / "val", {"a": 2, "b": 3, "c": 2})
    results = _probe(merged, tmp_path, train, val, features="backbone")
    assert results["top1"] == pytest.approx(100.0 * 3 / 7)
    assert results["per_class"] == {"a": 0.0, "b": 100.0, "c": 0.0}
    assert results["top5"] == 100.0  # three classes: every label is in the top 5


def test_constant_features_fit_the_class_priors():
    features = torch.zeros(11, 5)
    labels = torch.tensor([0] * 3 + [1] * 6 + [2] * 2)
    classifier = fit_logistic_regression(FeatureSet(features, labels), 3, weight_decay=1e-3)
    probs = classifier(features[:1]).softmax(-1)[0]
    torch.testing.assert_close(probs, torch.tensor([3, 6, 2]) / 11.0, atol=1e-5, rtol=0)


def test_the_fit_is_the_regularised_optimum():
    """Convex objective: the gradient vanishes at the solution, and more weight decay gives a smaller W."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 6, generator=generator)
    labels = (features[:, :3] + 0.5 * torch.randn(60, 3, generator=generator)).argmax(1)
    data = FeatureSet(features, labels)
    norms = []
    for weight_decay in (1e-3, 1e-1):
        fitted = fit_logistic_regression(data, 3, weight_decay)
        weight = fitted.weight.clone().requires_grad_(True)
        bias = fitted.bias.clone().requires_grad_(True)
        logistic_loss(features, labels, weight, bias, weight_decay).backward()
        assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4
        norms.append(float(fitted.weight.norm()))
    assert norms[1] < norms[0]


def test_holdout_is_stratified_and_keeps_every_class_in_the_fit_part():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 1)
    fit, holdout = stratified_split(FeatureSet(torch.zeros(31, 2), labels), 0.1, seed=0)
    assert holdout.labels.bincount(minlength=3).tolist() == [1, 2, 0]
    assert fit.labels.bincount(minlength=3).tolist() == [9, 18, 1]


def test_the_model_stays_frozen(final_checkpoint, colour_splits, tmp_path):
    model = load(final_checkpoint)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    _probe(model, tmp_path, *colour_splits, features="backbone", weight_decays=[1e-4])
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(param.grad is None for param in model.parameters())


def test_errors_name_the_problem(merged, colour_splits, tmp_path):
    train, val = colour_splits
    with pytest.raises(ValueError, match="features"):
        _probe(merged, tmp_path, train, val, features="neck")
    with pytest.raises(ValueError, match="encoder=student"):
        _probe(merged, tmp_path, train, val, features="backbone", encoder="teacher")
    other = _same_image_folder(tmp_path / "other", {"class0": 1, "zebra": 1})
    with pytest.raises(ValueError, match="class folders differ"):
        _probe(merged, tmp_path, train, other)


def test_cli_run_writes_results(final_checkpoint, colour_splits, tmp_path, monkeypatch):
    train, val = colour_splits
    run_dir = tmp_path / "run"
    monkeypatch.setattr(
        sys,
        "argv",
        ["samclip-eval", "eval=linear_probe", f"checkpoint={final_checkpoint}", f"run_dir={run_dir}",
         f"eval.train_root={train}", f"eval.val_root={val}", "eval.resolution=64", "eval.num_workers=0",
         "device=cpu"],
    )  # fmt: skip
    main()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "linear_probe" and results["features"] == "clip_head"
    assert results["top1"] == 100.0 and len(results["holdout_top1"]) == 6
    assert "## per_class" in (run_dir / "results.md").read_text()
