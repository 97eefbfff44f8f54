"""The README's main command: all three stages of experiment=smoke on CPU, through the console entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from samclip.models.final_checkpoint import load_final_checkpoint
from samclip.models.sam_checkpoint import read_sam_checkpoint
from samclip.models.teachers import ClipTeacher
from samclip.train.tracking import read_metrics

REPO = Path(__file__).parents[2]
STAGES = ("head_probe", "multitask", "res_adapt")


def _train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "samclip.train", *args], env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = _train("experiment=smoke", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_smoke_runs_all_three_stages(smoke_run: Path) -> None:
    expected_steps = {"head_probe": 12, "multitask": 8, "res_adapt": 6}  # configs/experiment/smoke.yaml
    expected_validations = {"head_probe": [4, 8, 12], "multitask": [4, 8], "res_adapt": [4, 6]}
    for stage in STAGES:
        final = load_final_checkpoint(smoke_run / stage / "final.pt")
        assert (final.stage, final.step) == (stage, expected_steps[stage])
        model = final.build_model()
        assert model.config.image_size == 256
        # The text encoder's source is a teacher file inside the run dir, loadable by path.
        assert final.clip_teacher.pretrained == str(smoke_run / "teachers" / "clip_tiny.pt")
        # ... and relative to the run dir, with its hash, so it is found after the run dir moves.
        assert final.clip_teacher.pretrained_in_run_dir == "teachers/clip_tiny.pt"
        assert final.clip_teacher.target == "samclip.models.teachers.ClipTeacher"
        assert len(final.clip_teacher.pretrained_sha256) == 64
        lines = read_metrics(smoke_run / stage / "metrics.jsonl")
        metrics = [m for m in lines if "loss" in m]
        assert [m["step"] for m in metrics] == list(range(1, expected_steps[stage] + 1))
        # Validation is on by default: every 4 steps and at the stage's end, on held-out data.
        validations = [m for m in lines if "loss" not in m]
        assert [m["step"] for m in validations] == expected_validations[stage]
        names = ["val/clip_cosine", "val/sam_iou_to_teacher"] if stage == "multitask" else ["val/clip_cosine"]
        assert all(sorted(k for k in m if k.startswith("val/")) == names for m in validations)
        for line in metrics:
            assert line["stage"] == stage
            for key in (
                "loss",
                "loss_clip",
                "loss_sam",
                "grad_norm",
                "skipped_steps",
                "skipped_samples",
                "images_per_s/clip",
                "images_per_s/sam",
                "s_per_step",
                "flops_per_step",
                "tflops_per_s",
            ):
                assert key in line, key
            assert any(key.startswith("lr/") for key in line)
        has_sam = stage == "multitask"
        assert all((m["loss_sam"] is not None) == has_sam for m in metrics)
        with Image.open(smoke_run / stage / "curves.png") as curves:  # the curves, drawn for people
            # Up to 4 panels a row: losses, grad norm, learning rates, throughput, val/ metrics.
            assert curves.format == "PNG" and curves.width > 1.5 * curves.height
    # Head probing learns: the CLIP head moves toward the teacher over its 12 steps.
    head_probe_metrics = [m for m in read_metrics(smoke_run / "head_probe" / "metrics.jsonl") if "loss" in m]
    assert head_probe_metrics[-1]["loss_clip"] < 0.8 * head_probe_metrics[0]["loss_clip"]
    teacher = ClipTeacher("samclip-tiny-clip", str(smoke_run / "teachers" / "clip_tiny.pt"))
    assert teacher.embed_dim == 32
    # Stages chain: multitask starts from head_probe's CLIP head, and changes the backbone; res_adapt does not.
    head_probe = load_final_checkpoint(smoke_run / "head_probe" / "final.pt").model_state
    multitask = load_final_checkpoint(smoke_run / "multitask" / "final.pt").model_state
    res_adapt = load_final_checkpoint(smoke_run / "res_adapt" / "final.pt").model_state
    assert not torch.equal(
        head_probe["backbone.blocks.0.attn.qkv.weight"], multitask["backbone.blocks.0.attn.qkv.weight"]
    )
    assert torch.equal(
        multitask["backbone.blocks.0.attn.qkv.weight"], res_adapt["backbone.blocks.0.attn.qkv.weight"]
    )
    assert torch.equal(
        multitask["sam_head.mask_decoder.iou_token.weight"],
        res_adapt["sam_head.mask_decoder.iou_token.weight"],
    )


@pytest.mark.slow
def test_multitask_keeps_the_prompt_encoder_and_unreached_parameters_as_in_the_sam_checkpoint(
    smoke_run: Path,
) -> None:
    """Head_SAM is the mask decoder (paper §3); with the single-mask output distilled (loss.sam_outputs),
    the multimask hypernetworks and the IoU head have no loss path and must not be decayed either."""
    sam = read_sam_checkpoint(smoke_run / "teachers" / "sam_tiny.pth")  # the student's starting SAM
    multitask = load_final_checkpoint(smoke_run / "multitask" / "final.pt").model_state
    decoder = "sam_head.mask_decoder."
    kept = [k for k in multitask if k.startswith("sam_head.prompt_encoder.")] + [
        k
        for k in multitask
        if k.startswith(
            (
                f"{decoder}iou_prediction_head.",
                *(f"{decoder}output_hypernetworks_mlps.{i}." for i in (1, 2, 3)),
            )
        )
    ]
    assert sum(k.startswith(decoder) for k in kept) == 6 + 18
    for key in kept:
        assert torch.equal(multitask[key], sam[key.removeprefix("sam_head.")]), key
    trained = [k for k in multitask if k.startswith(decoder) and k not in kept]
    assert trained and all(not torch.equal(multitask[k], sam[k.removeprefix("sam_head.")]) for k in trained)


@pytest.mark.slow
def test_checkpoints_hold_no_teacher_tensors(smoke_run: Path) -> None:
    teacher_shapes = {tuple(t.shape) for t in torch.load(smoke_run / "teachers" / "clip_tiny.pt").values()}
    student_keys = set(
        load_final_checkpoint(smoke_run / "head_probe" / "final.pt").build_model().state_dict()
    )
    files = [*smoke_run.glob("*/checkpoints/*.pt"), *smoke_run.glob("*/final.pt")]
    assert len(files) >= 6
    for path in files:
        checkpoint = torch.load(path, weights_only=False)
        weights = checkpoint["student"] if "student" in checkpoint else checkpoint["model"]
        assert set(weights) == student_keys, path
        tensors = dict(_tensors(checkpoint))
        outside = [k for k in tensors if not k.startswith(("student.", "model.", "optimizer.", "rng."))]
        assert not outside, (path, outside)
        # open_clip's text tower (token embedding [49408, 32], ...) is nowhere.
        assert not any("teacher" in k or "token_embedding" in k for k in tensors), path
        assert (49408, 32) in teacher_shapes and not any(
            tuple(t.shape) == (49408, 32) for t in tensors.values()
        )


def _tensors(obj: object, prefix: str = ""):
    if isinstance(obj, torch.Tensor):
        yield prefix.rstrip("."), obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}{key}.")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}{i}.")


@pytest.mark.slow
def test_rerun_skips_finished_stages(smoke_run: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in smoke_run.glob("*/final.pt")}
    result = _train("experiment=smoke", f"run_dir={smoke_run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("stage done") == 3
    assert {p: p.stat().st_mtime_ns for p in smoke_run.glob("*/final.pt")} == before


@pytest.mark.slow
def test_multirun_ablation_gets_one_run_dir_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = _train(
        "-m",
        "experiment=smoke",
        "loss.sam_weight=1,100",
        "stages=[head_probe,multitask]",
        "trainer.max_steps=1",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for weight in ("1", "100"):
        job = sweep / f"loss.sam_weight={weight},stages=[head_probe,multitask],trainer.max_steps=1"
        assert (job / "multitask" / "final.pt").is_file(), sorted(p.name for p in sweep.iterdir())
        config = (job / "config.yaml").read_text()
        assert f"sam_weight: {weight}.0" in config or f"sam_weight: {weight}\n" in config
        assert f"run_dir: {job}" in config
