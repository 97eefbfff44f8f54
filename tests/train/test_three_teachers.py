"""N teachers through one interface: DINOv2 as the third (experiment=smoke_dino), and a teacher added by config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from samclip.config_root import config_dir
from samclip.models.final_checkpoint import load_final_checkpoint
from samclip.train import runner
from samclip.train.tracking import read_metrics

STAGES = ("head_probe", "multitask", "res_adapt")


def _run(run_dir: Path, *overrides: str) -> None:
    with initialize_config_dir(config_dir=str(config_dir("train.yaml")), version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={run_dir}", "logger.progress=false", *overrides])
    runner.run(cfg)


def _steps(run_dir: Path, stage: str) -> list[dict]:
    return [m for m in read_metrics(run_dir / stage / "metrics.jsonl") if "loss" in m]


@pytest.mark.slow
def test_smoke_dino_trains_three_stages_with_all_three_terms_finite(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir, "experiment=smoke_dino")
    for stage in STAGES:
        steps = _steps(run_dir, stage)
        last = steps[-1]
        assert math.isfinite(last["loss_clip"]) and math.isfinite(last["loss_dino"]), stage
        assert math.isfinite(last["loss_dino_summary"]) and math.isfinite(last["loss_dino_features"]), stage
        assert (last["loss_sam"] is not None) == (stage == "multitask")
        if stage == "multitask":
            assert math.isfinite(last["loss_sam"])
        model = load_final_checkpoint(run_dir / stage / "final.pt").build_model()
        assert dict(model.config.adaptors) == {"dino": 32}
    # The adaptor learns: the head probe's dense loss falls over its 12 steps (PHI-S targets: ~1 per part at start).
    probe = _steps(run_dir, "head_probe")
    assert probe[-1]["loss_dino"] < 0.85 * probe[0]["loss_dino"]


@pytest.mark.slow
def test_a_teacher_unknown_to_the_package_trains_by_config_alone(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(
        run_dir,
        "experiment=smoke",
        "stages=[head_probe]",
        "trainer.max_steps=6",
        "+model.adaptors={colour: 15}",
        "+teacher.colour._target_=toy_teacher.MeanColourTeacher",
        "+tasks.sam_clip.terms.colour={kind: embedding, stream: clip, head: colour, teacher: ${teacher.colour}, weight: 2.0}",
        "stage.head_probe.trainable=[clip_head.*,adaptors.*]",
    )
    steps = _steps(run_dir, "head_probe")
    assert all(math.isfinite(m["loss_colour"]) for m in steps)
    assert steps[-1]["loss_colour"] < steps[0]["loss_colour"]
    # The step's loss is the weighted sum of its terms: clip x 1 + colour x 2 (sam has no stream here).
    for m in steps:
        assert m["loss"] == pytest.approx(m["loss_clip"] + 2.0 * m["loss_colour"], rel=1e-9)
    state = torch.load(run_dir / "head_probe" / "final.pt", map_location="cpu", weights_only=True)["model"]
    assert any(name.startswith("adaptors.colour.") for name in state)
