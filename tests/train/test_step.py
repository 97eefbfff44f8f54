"""The multi-stream step: micro-batching and loss scaling give exactly the full-batch gradient."""

from __future__ import annotations

import pytest
import torch
from train_fakes import clip_images, sam_batch, tiny_task

from samclip.data.batches import ClipBatch, SamBatch
from samclip.train.distributed import DistEnv
from samclip.train.optim import build_optimizer
from samclip.train.step import forward_backward, split_sam

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _batches(clip: int = 8, sam: int = 2) -> tuple[ClipBatch, SamBatch]:
    images, prompts = sam_batch(seed=3, step=0, batch=sam)
    sizes = torch.full((sam, 2), images.shape[-1])
    return ClipBatch(clip_images(seed=3, step=0, batch=clip, resolution=64), 64), SamBatch(
        images, sizes, sizes, prompts
    )


def _grads(task) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in task.student.named_parameters() if p.grad is not None}


def test_split_sam_reindexes_prompt_groups() -> None:
    images, prompts = sam_batch(seed=0, step=0, batch=4)
    micro = split_sam(images, prompts, micro_batch_size=3)
    assert [m[0].shape[0] for m in micro] == [3, 1]
    assert [g.image_index for g in micro[1][1]] == [0, 0]
    assert torch.equal(micro[1][1][0].boxes, prompts[6].boxes)
    assert sum(g.num_prompts for _, gs in micro for g in gs) == sum(g.num_prompts for g in prompts)


def test_full_batch_step_matches_hand_written_loss() -> None:
    """One micro-batch per stream = ``L_clip + λ L_sam`` on the whole batch, backpropagated by hand."""
    clip, sam = _batches()
    ours = tiny_task(seed=1, sam_weight=10.0)
    losses = forward_backward(
        ours, ours.student, {"clip": clip, "sam": sam}, micro_batch_sizes={"clip": 8, "sam": 2}, env=ENV
    )

    reference = tiny_task(seed=1, sam_weight=10.0)
    with torch.no_grad():
        clip_target = reference.clip_teacher.encode_image(clip.images)
        sam_target = reference.sam_teacher(sam.images, sam.prompts).low_res_logits
    out_clip = reference.student(clip.images).clip.image_embeds
    out_sam = reference.student(sam.images, sam.prompts, clip=False).sam.low_res_logits
    loss_clip = (1 - torch.nn.functional.cosine_similarity(out_clip, clip_target, dim=-1)).mean()
    targets = (sam_target > 0).float()
    probs = out_sam.flatten(1).sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(
        out_sam.flatten(1), targets.flatten(1), reduction="none"
    )
    p_t = probs * targets.flatten(1) + (1 - probs) * (1 - targets.flatten(1))
    alpha_t = 0.25 * targets.flatten(1) + 0.75 * (1 - targets.flatten(1))
    focal_loss = (alpha_t * ce * (1 - p_t) ** 2).mean(1).mean()
    dice = (
        1 - (2 * (probs * targets.flatten(1)).sum(1) + 1) / (probs.sum(1) + targets.flatten(1).sum(1) + 1)
    ).mean()
    loss = loss_clip + 10.0 * (20.0 * focal_loss + dice)
    loss.backward()

    assert losses.total == pytest.approx(loss.item(), rel=1e-5)
    assert losses.streams["clip"] == pytest.approx(loss_clip.item(), rel=1e-5)
    assert losses.units == {"clip": 8, "sam": sum(g.num_prompts for g in sam.prompts)}
    expected = _grads(reference)
    got = _grads(ours)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(("clip_micro", "sam_micro"), [(2, 1), pytest.param(3, 3, marks=pytest.mark.slow)])
def test_micro_batch_split_gives_the_same_update(clip_micro: int, sam_micro: int) -> None:
    """1x8 CLIP + 1x2 SAM vs 4x2 + 2x1 (and uneven 3+3+2 CLIP): same gradients, same AdamW update."""
    clip, sam = _batches()
    results = []
    for micro in ((8, 2), (clip_micro, sam_micro)):
        task = tiny_task(seed=2)
        # The multitask stage's optimizer (paper: 4e-5, x0.1 on backbone and SAM head).
        optimizer = build_optimizer(
            task.student, lr=4e-5, weight_decay=0.1, lr_multipliers={"backbone": 0.1, "sam_head": 0.1}
        )
        losses = forward_backward(
            task,
            task.student,
            {"clip": clip, "sam": sam},
            micro_batch_sizes={"clip": micro[0], "sam": micro[1]},
            env=ENV,
        )
        grads = _grads(task)
        optimizer.step()
        results.append((losses, grads, {n: p.detach().clone() for n, p in task.student.named_parameters()}))
    (full_losses, full_grads, full_weights), (micro_losses, micro_grads, micro_weights) = results
    assert micro_losses.total == pytest.approx(full_losses.total, rel=1e-6)
    max_grad_diff = max((micro_grads[n] - full_grads[n]).abs().max().item() for n in full_grads)
    max_weight_diff = max((micro_weights[n] - full_weights[n]).abs().max().item() for n in full_weights)
    # Float32 summation order differs between the splits; gradients agree to ~1e-7. Adam's first step
    # is ~lr * sign(g), so coordinates whose gradient is at rounding level can move differently, by < 2 lr.
    assert max_grad_diff < 1e-6
    assert max_weight_diff < 1e-5


@pytest.mark.slow
def test_grad_checkpointing_and_bf16_autocast_options() -> None:
    """Gradient checkpointing recomputes the blocks and gives the same gradients; bf16 autocast runs, close on CPU."""
    clip, sam = _batches(clip=2, sam=1)
    micro = {"micro_batch_sizes": {"clip": 2, "sam": 1}, "env": ENV}

    def run(task, **options):
        calls = []
        for block in (task.student.backbone.blocks[0], task.student.clip_head.blocks[0]):
            block.register_forward_pre_hook(lambda module, args: calls.append(module))
        losses = forward_backward(task, task.student, {"clip": clip, "sam": sam}, **micro, **options)
        return losses, len(calls)

    reference, checkpointed, bf16 = tiny_task(seed=4), tiny_task(seed=4), tiny_task(seed=4)
    checkpointed.student.set_grad_checkpointing(True)
    full, num_calls = run(reference)
    _, num_checkpointed_calls = run(checkpointed)
    assert num_checkpointed_calls == 2 * num_calls  # each block runs again in the backward pass
    for name, grad in _grads(reference).items():
        torch.testing.assert_close(_grads(checkpointed)[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Same weights, batches and micro-batches: in fp32 the losses would be bitwise equal.
    low, _ = run(bf16, autocast_dtype=torch.bfloat16)
    assert low.total != full.total and low.total == pytest.approx(full.total, rel=0.05)
