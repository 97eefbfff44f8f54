"""Parameters without a loss path stay bit-identical; with ``sam_outputs=all`` they do train.

The expected sets are read off segment_anything's decoder by hand: with the single-mask output
distilled, ``MaskDecoder.forward`` slices output 0, so hypernetwork MLPs 1..3 get exactly-zero
gradients and the IoU head none; D_SAM samples no mask inputs (mask_downscaling) and no negative points
(point_embeddings.0). Mask tokens 1..3 and the IoU token still reach output 0 through the two-way
transformer's attention, so they train.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from train_fakes import FakeClipStream, FakeSamStream, single_process_env, tiny_task

from samclip.train.checkpoint import Checkpointer, StageState
from samclip.train.loop import LoopOptions, train_stage
from samclip.train.optim import build_optimizer, build_scheduler, set_trainable
from samclip.train.tracking import Tracker

DECODER, ENCODER = "sam_head.mask_decoder", "sam_head.prompt_encoder"
MULTIMASK = {
    f"{DECODER}.output_hypernetworks_mlps.{k}.layers.{i}.{w}"
    for k in (1, 2, 3)
    for i in range(3)
    for w in ("weight", "bias")
}
IOU_HEAD = {f"{DECODER}.iou_prediction_head.layers.{i}.{w}" for i in range(3) for w in ("weight", "bias")}
MASK_INPUT = {f"{ENCODER}.mask_downscaling.{i}.{w}" for i in (0, 1, 3, 4, 6) for w in ("weight", "bias")}
NEGATIVE_POINT = {f"{ENCODER}.point_embeddings.0.weight"}


@pytest.mark.parametrize(
    ("sam_outputs", "expected"),
    [("single", MULTIMASK | IOU_HEAD | MASK_INPUT | NEGATIVE_POINT), ("all", MASK_INPUT | NEGATIVE_POINT)],
)
def test_probe_freezes_exactly_the_parameters_without_loss_path(sam_outputs: str, expected: set[str]) -> None:
    task = tiny_task()
    task.term("sam").outputs = sam_outputs
    set_trainable(task.student, ["*"])
    frozen = task.freeze_without_loss_path(("clip", "sam"))
    assert set(frozen) == expected
    assert all(p.grad is None for p in task.student.parameters())
    trainable = {n for n, p in task.student.named_parameters() if p.requires_grad}
    assert trainable.isdisjoint(expected) and len(trainable) + len(expected) == len(
        list(task.student.parameters())
    )


def test_clip_only_stage_freezes_the_whole_sam_side() -> None:
    task = tiny_task()
    set_trainable(task.student, ["*"])
    frozen = set(task.freeze_without_loss_path(("clip",)))
    sam_side = {
        n for n, _ in task.student.named_parameters() if n.startswith(("sam_head.", "backbone.neck."))
    }
    assert frozen == sam_side


def _train(task: Any, steps: int, *, probe: bool, tmp_path: Any) -> None:
    env = single_process_env()
    set_trainable(task.student, ["backbone.*", "clip_head.*", f"{DECODER}.*"])  # configs/stage/multitask.yaml
    if probe:
        task.freeze_without_loss_path(("clip", "sam"))
    optimizer = build_optimizer(task.student, lr=1e-3, weight_decay=0.1)
    scheduler = build_scheduler(optimizer, warmup_steps=1, total_steps=steps)
    streams = {"clip": FakeClipStream(seed=0), "sam": FakeSamStream(seed=0)}
    tracker = Tracker(tmp_path, "multitask", enabled=False, log_every=1, last_step=steps, start_step=0)
    train_stage(
        task,
        task.student,
        optimizer,
        scheduler,
        streams,
        StageState(),
        steps,
        stage="multitask",
        options=LoopOptions(micro_batch_sizes={"clip": 8, "sam": 4}),
        env=env,
        tracker=tracker,
        checkpointer=Checkpointer(tmp_path / "ckpt", every_steps=0, keep_last=1),
    )


@pytest.mark.parametrize("sam_outputs", ["single", "all"])
def test_multitask_steps_leave_unreached_parameters_and_the_prompt_encoder_bit_identical(
    tmp_path: Any, sam_outputs: str
) -> None:
    task = tiny_task()
    task.term("sam").outputs = sam_outputs
    start = {n: p.detach().clone() for n, p in task.student.named_parameters()}
    _train(task, 3, probe=True, tmp_path=tmp_path)
    moved = {n for n, p in task.student.named_parameters() if not torch.equal(p, start[n])}
    unchanged = set(start) - moved
    assert {n for n in start if n.startswith(ENCODER)} <= unchanged
    if sam_outputs == "single":
        assert unchanged >= MULTIMASK | IOU_HEAD
    else:  # with a loss path they train (weights; biases too)
        assert moved >= MULTIMASK | IOU_HEAD
    # Everything else that is trainable moved: the test sees updates where they should happen.
    reached = {n for n in start if n.startswith(("backbone.", "clip_head.", f"{DECODER}."))}
    assert reached - moved == (MULTIMASK | IOU_HEAD if sam_outputs == "single" else set())


def test_without_the_probe_weight_decay_moves_the_zero_gradient_hypernetworks(tmp_path: Any) -> None:
    """The defect the probe fixes (measured): exactly-zero gradients, so AdamW still decays the weights."""
    task = tiny_task()
    start = {n: p.detach().clone() for n, p in task.student.named_parameters()}
    _train(task, 2, probe=False, tmp_path=tmp_path)
    params = dict(task.student.named_parameters())
    decayed = {n for n in MULTIMASK if not torch.equal(params[n], start[n])}
    assert decayed == {n for n in MULTIMASK if n.endswith("weight")}
    assert all(torch.equal(params[n], start[n]) for n in IOU_HEAD)  # grad None: AdamW skips it
