"""The proxy study's training curves: the held-out box-mIoU evaluator agrees with the study's own scorer and
splits across ranks without loss, and the curves count steps on from stage to stage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from samclip.models import create_model
from samclip.proxy.evaluate import HeldOutBoxMiou, evaluate_prompted_miou
from samclip.proxy.report import plot_curves, stage_curve


@pytest.fixture(scope="module")
def student():
    return create_model("samclip_tiny").eval()


def test_box_miou_evaluator_is_the_studys_box_miou_and_two_ranks_add_up_to_one(
    world, student, tmp_path
) -> None:
    task = SimpleNamespace(student=student)
    reference = evaluate_prompted_miou(student, tmp_path, shards=world.sam_val_shards)
    total, count = HeldOutBoxMiou(str(world.root / "sam_val")).local_sums(task, "cpu")
    assert count == reference["num_instances"] and total / count == pytest.approx(reference["box_mIoU"])
    halves = [
        HeldOutBoxMiou(world.sam_val_shards, rank=r, world_size=2).local_sums(task, "cpu") for r in (0, 1)
    ]
    assert sum(c for _, c in halves) == count and sum(t for t, _ in halves) == pytest.approx(total)
    assert all(c > 0 for _, c in halves)


def _write_metrics(directory: Path, lines: list[dict]) -> Path:
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return directory


def test_curves_count_steps_on_across_stages_and_are_drawn(tmp_path: Path) -> None:
    first = _write_metrics(tmp_path / "a", [{"step": 10, "loss": 1.0}, {"step": 10, "val/box_miou": 40.0},
                                            {"step": 20, "loss": 0.5}, {"step": 20, "val/box_miou": 42.0}])  # fmt: skip
    second = _write_metrics(tmp_path / "b", [{"step": 5, "val/box_miou": 50.0}, {"step": 15, "loss": 0.1}])
    steps, values, ends = stage_curve([first, second, tmp_path / "missing"], "box_miou")
    assert steps == [10, 20, 25] and values == [40.0, 42.0, 50.0] and ends == [20, 35]
    results = {"size": "test", "teachers": {"clip": {"zeroshot_top1": 90.0}, "sam": {"box_miou": 45.0}}}
    path = plot_curves(results, tmp_path, {"recipe": {0: [first, second], 1: [first, second]}})
    assert path is not None and path.stat().st_size > 10_000
    assert plot_curves(results, tmp_path / "none", {"recipe": {0: [tmp_path / "missing"]}}) is None
