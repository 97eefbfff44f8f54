"""Loop pieces: non-finite steps, parameter groups, the warmup + cosine schedule, checkpoint rotation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from train_fakes import FakeClipStream, single_process_env, tiny_task

from samclip.data.bad_samples import SKIP_KINDS
from samclip.models import create_model
from samclip.train.checkpoint import Checkpointer, StageState, load_training_checkpoint
from samclip.train.loop import LoopOptions, NonFiniteLossError, train_stage
from samclip.train.optim import WarmupCosine, build_optimizer, build_scheduler, set_trainable
from samclip.train.tracking import Tracker, read_metrics


class NanAt(FakeClipStream):
    """Images become NaN at the given global steps (a corrupt batch, or a blown-up activation)."""

    def __init__(self, nan_steps: set[int], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.nan_steps = nan_steps

    def local_batch(self, global_step: int):
        batch = super().local_batch(global_step)
        if global_step in self.nan_steps:
            batch.images[0, 0, 0, 0] = float("nan")
        return batch


def _run(
    tmp_path: Path,
    nan_steps: set[int],
    num_steps: int,
    max_nonfinite: int,
    stream=None,
    fused: bool = False,
    log_every: int = 1,
    checkpoint_every: int = 1,
):
    env = single_process_env()
    task = tiny_task(seed=0)
    set_trainable(task.student, ["clip_head.*"])
    # Fused AdamW skips non-finite steps on the device (no host read); the foreach one on the host.
    optimizer = build_optimizer(task.student, lr=1e-3, weight_decay=0.1, fused=fused)
    scheduler = build_scheduler(optimizer, 1, num_steps)
    checkpointer = Checkpointer(tmp_path / "checkpoints", every_steps=checkpoint_every, keep_last=10)
    tracker = Tracker(tmp_path, "head_probe", enabled=True, log_every=log_every, last_step=num_steps)
    state = StageState(step=0)
    error = None
    try:
        train_stage(
            task,
            task.student,
            optimizer,
            scheduler,
            {"clip": stream or NanAt(nan_steps, seed=0, global_batch=4)},
            state,
            num_steps,
            stage="head_probe",
            env=env,
            tracker=tracker,
            checkpointer=checkpointer,
            options=LoopOptions(
                micro_batch_sizes={"clip": 4, "sam": 1}, max_consecutive_nonfinite=max_nonfinite
            ),
        )
    except NonFiniteLossError as raised:
        error = raised
    return task, state, error


@pytest.mark.parametrize("fused", [False, True])
def test_a_non_finite_step_is_skipped_and_counted(tmp_path: Path, fused: bool) -> None:
    _, state, error = _run(tmp_path, nan_steps={1}, num_steps=3, max_nonfinite=2, fused=fused)
    assert error is None and state.step == 3 and state.counters.skipped_steps == 1
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert [m["skipped_steps"] for m in metrics] == [0, 1, 1]
    assert math.isnan(metrics[1]["loss"])
    # The skipped step left weights and optimizer untouched: checkpoints 1 and 2 hold the same student.
    one = load_training_checkpoint(tmp_path / "checkpoints" / "step_00000001.pt")
    two = load_training_checkpoint(tmp_path / "checkpoints" / "step_00000002.pt")
    assert all(torch.equal(one["student"][k], two["student"][k]) for k in one["student"])
    assert all(torch.isfinite(t).all() for t in two["student"].values())
    three = load_training_checkpoint(tmp_path / "checkpoints" / "step_00000003.pt")
    assert any(not torch.equal(two["student"][k], three["student"][k]) for k in two["student"])


@pytest.mark.parametrize("fused", [False, True])
def test_repeated_non_finite_steps_stop_with_the_last_good_checkpoint_intact(
    tmp_path: Path, fused: bool
) -> None:
    # Stream steps are 0-based: loop steps 3, 4, 5 see NaN; the run stops at step 5, before checkpointing it.
    _, _, error = _run(tmp_path, nan_steps={2, 3, 4}, num_steps=6, max_nonfinite=3, fused=fused)
    assert isinstance(error, NonFiniteLossError)
    assert "3 consecutive steps with a non-finite loss" in str(error)
    assert "trainer.max_consecutive_nonfinite=3" in str(error)
    saved = Checkpointer(tmp_path / "checkpoints", 1).paths()
    assert [p.name for p in saved] == [f"step_0000000{i}.pt" for i in (1, 2, 3, 4)]
    last = load_training_checkpoint(saved[-1])
    good = load_training_checkpoint(saved[1])
    assert all(torch.equal(good["student"][k], last["student"][k]) for k in good["student"])
    assert all(torch.isfinite(t).all() for t in last["student"].values())


def test_the_device_side_limit_stops_at_the_next_read_with_the_last_good_weights(tmp_path: Path) -> None:
    """Fused AdamW, nothing read before step 4: loop steps 2 and 3 are NaN (limit 2 reached at step 3), step 4
    is finite but skipped because the limit was reached; the run stops at step 4 with step 1's weights."""
    task, state, error = _run(
        tmp_path / "late", {1, 2}, num_steps=4, max_nonfinite=2, fused=True, log_every=4, checkpoint_every=0
    )
    assert isinstance(error, NonFiniteLossError)
    assert "2 consecutive steps with a non-finite loss or gradient norm at step 3" in str(error)
    assert state.step == 4 and state.counters.skipped_steps == 3
    one_step, _, _ = _run(
        tmp_path / "one", set(), num_steps=1, max_nonfinite=2, fused=True, checkpoint_every=0
    )
    for name, param in one_step.student.named_parameters():
        assert torch.equal(task.student.state_dict()[name], param), name
    assert not (tmp_path / "late" / "checkpoints").exists() or not list(
        (tmp_path / "late" / "checkpoints").iterdir()
    )


def test_samples_skipped_by_the_streams_are_logged(tmp_path: Path) -> None:
    stream = FakeClipStream(seed=0, global_batch=4)
    kind = SKIP_KINDS[0]
    stream.skipped[f"skipped/{kind}"] = 3
    _run(tmp_path, nan_steps=set(), num_steps=1, max_nonfinite=1, stream=stream)
    (line,) = read_metrics(tmp_path / "metrics.jsonl")
    assert (line["skipped_samples"], line[f"skipped/clip/{kind}"]) == (3, 3)


def test_param_groups_follow_the_multitask_recipe() -> None:
    model = create_model("samclip_tiny")
    set_trainable(model, ["*"])
    optimizer = build_optimizer(
        model, lr=4e-5, weight_decay=0.1, lr_multipliers={"backbone": 0.1, "sam_head": 0.1}
    )
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(by_param) == len(named)  # every trainable parameter in exactly one group
    for name, param in named.items():
        group = by_param[id(param)]
        expected_lr = 4e-6 if name.startswith(("backbone.", "sam_head.")) else 4e-5
        assert group["lr"] == pytest.approx(expected_lr), name
        no_decay = param.ndim == 1 or "pos_embed" in name or "rel_pos" in name
        assert group["weight_decay"] == (0.0 if no_decay else 0.1), name
    assert by_param[id(named["backbone.pos_embed"])]["weight_decay"] == 0.0
    assert by_param[id(named["clip_head.norm.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["clip_head.proj.0.weight"])]["weight_decay"] == 0.1


def test_head_probe_freezes_all_but_the_clip_head() -> None:
    model = create_model("samclip_tiny")
    names = set_trainable(model, ["clip_head.*"])
    assert names and all(n.startswith("clip_head.") for n in names)
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("clip_head."))
    with pytest.raises(ValueError, match="match no parameter"):
        set_trainable(model, ["clip_heads.*"])


def test_warmup_cosine_by_hand() -> None:
    schedule = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.0)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == 1.0
    assert schedule(9) == pytest.approx(0.5)  # halfway through the 10 cosine steps
    assert schedule(14) == pytest.approx(0.0, abs=1e-12)
    # Through LambdaLR on a real optimizer: the lr of step s is base_lr * schedule(s).
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-4)
    scheduler = build_scheduler(optimizer, 4, 14)
    seen = []
    for _ in range(14):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([8e-4 * schedule(s) for s in range(14)])


def test_checkpointer_keeps_the_last_k_and_writes_atomically(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, every_steps=2, keep_last=2)
    assert [s for s in range(1, 8) if checkpointer.due(s, last_step=7)] == [2, 4, 6, 7]
    for step in (2, 4, 6, 7):
        checkpointer.save(step, {"step": step})
    assert [p.name for p in checkpointer.paths()] == ["step_00000006.pt", "step_00000007.pt"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    assert torch.load(checkpointer.latest(), weights_only=True)["step"] == 7
    with pytest.raises(ValueError, match=r"checkpoint\.keep_last"):
        Checkpointer(tmp_path, every_steps=2, keep_last=0)
