"""Step FLOPs, TFLOP/s and MFU by hand on a constructed case: one Linear layer through the real loop."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from torch import nn
from train_fakes import FakeClipStream, single_process_env

from samclip.train.checkpoint import Checkpointer, StageState
from samclip.train.flops import StepFlops, achieved, device_peak_tflops, known_peak_tflops
from samclip.train.loop import LoopOptions, train_stage
from samclip.train.optim import build_optimizer, build_scheduler
from samclip.train.step import split_clip
from samclip.train.tasks.base import StreamLoss
from samclip.train.tracking import Tracker, read_metrics

BATCH, RESOLUTION, OUT = 4, 8, 5
IN = 3 * RESOLUTION * RESOLUTION


class LinearTask:
    """A clip-stream task whose student is one Linear on the flattened images."""

    find_unused_parameters = False

    def __init__(self) -> None:
        self.weights = {"clip": 1.0}
        self.term_streams = {"clip": "clip"}
        self.part_names: dict = {}
        torch.manual_seed(0)
        self.student = nn.Linear(IN, OUT)

    def train(self) -> None:
        self.student.train()

    def split(self, stream, batch, micro_batch_size):
        return split_clip(batch.images, micro_batch_size)

    def num_units(self, stream, micro) -> int:
        return micro.shape[0]

    num_images = num_units

    def loss(self, stream, student, micro) -> dict[str, StreamLoss]:
        return {"clip": StreamLoss(student(micro.flatten(1)).square().mean(), {})}


def test_a_linear_layer_counts_two_flops_per_multiply_add_forward_and_backward() -> None:
    layer = nn.Linear(IN, OUT)
    flops = StepFlops()
    x = torch.rand(BATCH, IN, requires_grad=True)
    with flops.count({"clip": x}):
        layer(x).sum().backward()
    # Forward 2·B·in·out; backward the same for the input gradient and again for the weight gradient.
    assert flops.last == 3 * 2 * BATCH * IN * OUT
    with flops.count({"clip": torch.rand(BATCH, IN)}):  # same shape: remembered, not counted again
        pass
    assert flops.last == 3 * 2 * BATCH * IN * OUT and len(flops.by_shape) == 1


def test_mfu_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 steps of B=4 images through Linear(192, 5) (input needs no gradient: forward + weight gradient,
    4·B·in·out FLOPs a step), logged once after 3 steps that the clock says took 1.5 s, peak 1e-8 TFLOP/s."""
    clock = iter([100.0, 101.5, 101.5])  # the tracker's window start, the log's read, the next window
    monkeypatch.setattr(
        "samclip.train.tracking.time", types.SimpleNamespace(perf_counter=lambda: next(clock))
    )
    task = LinearTask()
    optimizer = build_optimizer(task.student, lr=1e-3, weight_decay=0.0)
    peak = 1e-8
    tracker = Tracker(
        tmp_path, "head_probe", enabled=True, log_every=3, last_step=3, progress=False, peak_tflops=peak
    )
    train_stage(
        task,
        task.student,
        optimizer,
        build_scheduler(optimizer, 1, 3),
        {"clip": FakeClipStream(seed=0, global_batch=BATCH, resolution=RESOLUTION)},
        StageState(),
        3,
        stage="head_probe",
        options=LoopOptions(micro_batch_sizes={"clip": BATCH}),
        env=single_process_env(),
        tracker=tracker,
        checkpointer=Checkpointer(tmp_path / "checkpoints", every_steps=0),
        flops=StepFlops(),
    )
    (line,) = read_metrics(tmp_path / "metrics.jsonl")
    step_flops = 4 * BATCH * IN * OUT  # 15360
    assert line["flops_per_step"] == step_flops
    assert line["s_per_step"] == pytest.approx(0.5)
    tflops = 3 * step_flops / 1.5 / 1e12  # 3.072e-8 TFLOP/s
    assert line["tflops_per_s"] == pytest.approx(tflops, rel=1e-12)
    assert line["mfu"] == pytest.approx(3.072, rel=1e-12)
    assert line["images_per_s/clip"] == pytest.approx(3 * BATCH / 1.5)


def test_peaks_and_the_achieved_rate() -> None:
    assert achieved(989e12 * 2, 4.0, 989.0) == {
        "tflops_per_s": pytest.approx(494.5),
        "mfu": pytest.approx(0.5),
    }
    assert achieved(1e12, 1.0, None) == {"tflops_per_s": pytest.approx(1.0)}
    names = {
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA A10": 125.0,
        "NVIDIA H100 80GB HBM3": 989.0,
        "NVIDIA H100 PCIe": 756.0,
        "NVIDIA H200": 989.0,
        "NVIDIA L40S": 362.0,
        "NVIDIA L4": 121.0,
        "Tesla T4": None,
    }
    assert {name: known_peak_tflops(name) for name in names} == names
    cpu = torch.device("cpu")
    assert device_peak_tflops(cpu) is None and device_peak_tflops(cpu, 2.0) == 2.0
    with pytest.raises(ValueError, match=r"trainer\.peak_tflops must be > 0"):
        device_peak_tflops(cpu, 0.0)
