"""N teachers through one interface: DINOv2 as the third (experiment=smoke_dino), and a teacher added by config."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from constructed import write_red_box_voc
from hydra import compose, initialize_config_dir

from samclip.cli.eval import main as eval_main
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


@pytest.fixture(scope="module")
def smoke_dino_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("smoke_dino") / "run"
    _run(run_dir, "experiment=smoke_dino")
    return run_dir


@pytest.mark.slow
def test_smoke_dino_trains_three_stages_with_all_three_terms_finite(smoke_dino_run: Path) -> None:
    run_dir = smoke_dino_run
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


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["knn_seg_voc", "seg_probe_voc"])
def test_samclip_eval_probes_the_dense_dino_features_of_the_smoke_dino_checkpoint(
    smoke_dino_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe: str
) -> None:
    root = write_red_box_voc(tmp_path / "VOC2012", num_train=4, num_val=2)
    run_dir = tmp_path / "eval"
    extra = (
        ["eval.iterations=3", "eval.batch_size=2", "eval.num_workers=0"] if probe == "seg_probe_voc" else []
    )
    monkeypatch.setattr(
        sys,
        "argv",
        ["samclip-eval", f"eval={probe}", f"checkpoint={smoke_dino_run / 'res_adapt' / 'final.pt'}",
         f"run_dir={run_dir}", f"eval.root={root}", "eval.features=adaptor:dino", "eval.resolution=64",
         "eval.num_visualize=1", "device=cpu", *extra],
    )  # fmt: skip
    eval_main()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["features"] == "adaptor:dino" and results["num_val_images"] == 2
    assert 0.0 <= results["mIoU"] <= 100.0 and len(results["per_class"]) == 21
