"""In-memory streams and tiny tasks for trainer tests: exact, cheap, and sliceable by rank.

The streams build the *global* batch of a step from (seed, step) and hand each rank its slice, the
contract of the real data streams; a test can therefore compare 2 ranks x half batch with 1 rank x
the full batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from samclip.data.batches import ClipBatch, SamBatch
from samclip.losses import CosineDistillationLoss, MaskDistillationLoss
from samclip.models import SamPrompts, create_model
from samclip.models.final_checkpoint import ClipTeacherSpec, save_final_checkpoint
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.train.checkpoint import Checkpointer, StageState, restore_training_state
from samclip.train.distributed import DistEnv, wrap_student
from samclip.train.loop import LoopOptions, train_stage
from samclip.train.optim import build_optimizer, build_scheduler, set_trainable
from samclip.train.tasks.sam_clip import SamClipTask
from samclip.train.tracking import Tracker
from samclip.train.validation import BestCheckpoint, ClipCosine, SamIouToTeacher, Validator

HELD_OUT_SEED = 99  # the fake held-out data: streams of another seed than training's

SAM_FRAME = 256  # samclip_tiny's SAM frame
CLIP_RESOLUTION = 64


class FakeStream:
    """Epochs of ``steps_per_epoch`` steps; ``state_dict`` is the position, like the real streams."""

    def __init__(self, seed: int, rank: int = 0, world_size: int = 1, steps_per_epoch: int = 1000) -> None:
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.step = 0
        self.skipped: Counter[str] = Counter()

    def __iter__(self) -> Iterator[Any]:
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        while self.step < self.steps_per_epoch:
            global_step = self.epoch * self.steps_per_epoch + self.step
            batch = self.local_batch(global_step)
            self.step += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step = state["epoch"], state["step"]
        self.skipped = Counter(state["skipped"])

    def local_batch(self, global_step: int) -> Any:
        raise NotImplementedError


class FakeClipStream(FakeStream):
    def __init__(self, global_batch: int = 8, resolution: int = CLIP_RESOLUTION, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.global_batch, self.resolution = global_batch, resolution

    def local_batch(self, global_step: int) -> ClipBatch:
        images = clip_images(self.seed, global_step, self.global_batch, self.resolution)
        per_rank = self.global_batch // self.world_size
        return ClipBatch(images[self.rank * per_rank : (self.rank + 1) * per_rank], self.resolution)


class FakeSamStream(FakeStream):
    def __init__(self, global_batch: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.global_batch = global_batch

    def local_batch(self, global_step: int) -> SamBatch:
        images, prompts = sam_batch(self.seed, global_step, self.global_batch)
        per_rank = self.global_batch // self.world_size
        start = self.rank * per_rank
        local = [
            SamPrompts(g.image_index - start, g.boxes, g.point_coords, g.point_labels)
            for g in prompts
            if start <= g.image_index < start + per_rank
        ]
        sizes = torch.full((per_rank, 2), SAM_FRAME)
        return SamBatch(images[start : start + per_rank], sizes, sizes, local)


def clip_images(seed: int, step: int, batch: int, resolution: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003 + step)
    return torch.rand(batch, 3, resolution, resolution, generator=generator)


def sam_batch(seed: int, step: int, batch: int) -> tuple[torch.Tensor, list[SamPrompts]]:
    """Images with a box group and a 2-point group each; the number of masks varies per image."""
    generator = torch.Generator().manual_seed(seed * 100_019 + step)
    images = torch.rand(batch, 3, SAM_FRAME, SAM_FRAME, generator=generator)
    prompts = []
    for i in range(batch):
        num_boxes = 1 + i % 3
        xy = torch.rand(num_boxes, 2, generator=generator) * (SAM_FRAME / 2)
        boxes = torch.cat([xy, xy + 20 + torch.rand(num_boxes, 2, generator=generator) * 100], dim=1)
        prompts.append(SamPrompts(i, boxes=boxes))
        points = torch.rand(2, 2, 2, generator=generator) * SAM_FRAME
        prompts.append(SamPrompts(i, point_coords=points, point_labels=torch.ones(2, 2, dtype=torch.int)))
    return images, prompts


def tiny_task(seed: int = 0, sam_weight: float = 10.0) -> SamClipTask:
    """samclip_tiny student and random tiny teachers, all from ``seed`` (same seed -> same weights)."""
    torch.manual_seed(seed)
    student = create_model("samclip_tiny")
    clip_teacher = ClipTeacher("samclip-tiny-clip", pretrained=None)
    sam_teacher = SamTeacher(None, model_name="samclip_tiny")
    return SamClipTask(
        student, clip_teacher, sam_teacher, CosineDistillationLoss(), MaskDistillationLoss(), 1.0, sam_weight
    )


def train_tiny(
    env: DistEnv,
    workdir: Path,
    *,
    num_steps: int,
    stage: str = "multitask",
    clip_micro: int = 8,
    sam_micro: int = 4,
    every_steps: int = 0,
    stop_after: int | None = None,
    seed: int = 0,
    validate_every: int | None = None,
) -> SamClipTask:
    """``num_steps`` steps of the multitask (or head_probe) recipe on in-memory streams, through ``train_stage``.

    With ``stop_after`` the loop stops early (as if killed) after checkpointing; calling again with the
    same ``workdir`` resumes from the latest checkpoint, exactly as ``samclip-train`` does.
    With ``validate_every`` it validates on fake held-out batches and keeps ``best.pt`` by IoU to SAM.
    """
    task = tiny_task(seed=seed)
    trainable = ["*"] if stage == "multitask" else ["clip_head.*"]
    set_trainable(task.student, trainable)
    multipliers = {"backbone": 0.1, "sam_head": 0.1} if stage == "multitask" else {}
    optimizer = build_optimizer(task.student, lr=4e-5, weight_decay=0.1, lr_multipliers=multipliers)
    scheduler = build_scheduler(optimizer, warmup_steps=1, total_steps=num_steps)
    streams: dict[str, Any] = {"clip": FakeClipStream(seed=seed, rank=env.rank, world_size=env.world_size)}
    if stage == "multitask":
        streams["sam"] = FakeSamStream(seed=seed, rank=env.rank, world_size=env.world_size)
    checkpointer = Checkpointer(workdir / "checkpoints", every_steps=every_steps, keep_last=2)
    latest = checkpointer.latest()
    state = (
        StageState()
        if latest is None
        else restore_training_state(latest, task.student, optimizer, scheduler, streams, env=env)
    )
    student = wrap_student(task.student, env, find_unused_parameters=len(streams) > 1)
    last_step = num_steps if stop_after is None else stop_after
    tracker = Tracker(
        workdir, stage, enabled=env.is_main, log_every=1, last_step=last_step, start_step=state.step
    )
    validator = None
    if validate_every is not None:
        spec = ClipTeacherSpec("samclip-tiny-clip", None)
        best = BestCheckpoint(
            workdir,
            "val/sam_iou_to_teacher",
            "max",
            lambda path, step: save_final_checkpoint(path, task.student, spec, stage, step),
        )
        validator = Validator(held_out_evaluators(env), validate_every, best)
    train_stage(
        task,
        student,
        optimizer,
        scheduler,
        streams,
        state,
        last_step,
        stage=stage,
        options=LoopOptions(micro_batch_sizes={"clip": clip_micro, "sam": sam_micro}),
        env=env,
        tracker=tracker,
        checkpointer=checkpointer,
        validator=validator,
    )
    tracker.close()
    return task


def held_out_evaluators(env: DistEnv, num_batches: int = 2) -> dict[str, Any]:
    """Both evaluators on this rank's slice of fixed held-out batches (a list: re-iterable, same every time)."""
    clip = FakeClipStream(global_batch=4, seed=HELD_OUT_SEED, rank=env.rank, world_size=env.world_size)
    sam = FakeSamStream(seed=HELD_OUT_SEED, rank=env.rank, world_size=env.world_size)
    return {
        "clip_cosine": ClipCosine([clip.local_batch(s) for s in range(num_batches)], num_batches),
        "sam_iou_to_teacher": SamIouToTeacher([sam.local_batch(s) for s in range(num_batches)], num_batches),
    }


def single_process_env() -> DistEnv:
    return DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
