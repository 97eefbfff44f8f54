"""samclip's training step vs a hand-written minimal PyTorch loop: same tiny models, same batches.

    python benchmarks/bench_step.py [--steps 10] [--rounds 3]

Both sides run the multitask step (the heaviest: a CLIP batch and a SAM batch into one optimizer
step) on samclip_tiny with random tiny teachers, on the same in-memory batches. samclip's side is the
real ``train_stage`` loop (micro-batching, finite checks, metrics.jsonl, the stage-end checkpoint);
the minimal side is forward/backward/clip/step written out by hand. Rounds alternate the two sides so
machine noise hits both; the ratio uses each side's fastest round (the least disturbed on a shared
machine), the median is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from samclip.data.batches import ClipBatch, SamBatch
from samclip.losses import cosine_distillation_loss, mask_distillation_loss
from samclip.models import SamPrompts, create_model
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.train.checkpoint import Checkpointer, StageState
from samclip.train.distributed import DistEnv
from samclip.train.loop import LoopOptions, train_stage
from samclip.train.optim import build_optimizer, build_scheduler
from samclip.train.tasks.sam_clip import SamClipTask
from samclip.train.tracking import Tracker

CLIP_BATCH, CLIP_RES, SAM_BATCH, SAM_FRAME, MASKS = 16, 64, 2, 256, 8


def make_batches(num: int) -> list[tuple[ClipBatch, SamBatch]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(num):
        clip = ClipBatch(torch.rand(CLIP_BATCH, 3, CLIP_RES, CLIP_RES, generator=generator), CLIP_RES)
        images = torch.rand(SAM_BATCH, 3, SAM_FRAME, SAM_FRAME, generator=generator)
        prompts = []
        for i in range(SAM_BATCH):
            xy = torch.rand(MASKS, 2, generator=generator) * 128
            prompts.append(SamPrompts(i, boxes=torch.cat([xy, xy + 64], dim=1)))
        sizes = torch.full((SAM_BATCH, 2), SAM_FRAME)
        out.append((clip, SamBatch(images, sizes, sizes, prompts)))
    return out


class ListStream:
    def __init__(self, batches: list) -> None:
        self.batches, self.position = batches, 0

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]

    def state_dict(self) -> dict:
        return {"position": self.position}


def build(
    seed: int = 0,
) -> tuple[SamClipTask, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    student = create_model("samclip_tiny")
    task = SamClipTask(student, ClipTeacher("samclip-tiny-clip", None), SamTeacher(None, "samclip_tiny"))
    optimizer = build_optimizer(
        student, lr=4e-5, weight_decay=0.1, lr_multipliers={"backbone": 0.1, "sam_head": 0.1}
    )
    return task, optimizer, build_scheduler(optimizer, 1, 1000)


def run_samclip(batches: list, workdir: Path) -> float:
    task, optimizer, scheduler = build()
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    streams = {"clip": ListStream([c for c, _ in batches]), "sam": ListStream([s for _, s in batches])}
    tracker = Tracker(workdir, "multitask", enabled=True, log_every=1, last_step=len(batches), progress=False)
    start = time.perf_counter()
    train_stage(
        task,
        task.student,
        optimizer,
        scheduler,
        streams,
        StageState(0),
        len(batches),
        stage="multitask",
        env=env,
        tracker=tracker,
        checkpointer=Checkpointer(workdir / "ckpt", 0),
        options=LoopOptions(micro_batch_sizes={"clip": CLIP_BATCH, "sam": SAM_BATCH}),
    )
    return (time.perf_counter() - start) / len(batches)


def run_minimal(batches: list) -> float:
    task, optimizer, scheduler = build()
    student, clip_teacher, sam_teacher = task.student, task.clip_teacher, task.sam_teacher
    params = [p for p in student.parameters() if p.requires_grad]
    student.train()
    start = time.perf_counter()
    for clip, sam in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            target = clip_teacher.encode_image(clip.images)
        cosine_distillation_loss(student(clip.images).clip.image_embeds, target).backward()
        with torch.no_grad():
            teacher_logits = sam_teacher(sam.images, sam.prompts).low_res_logits
        logits = student(sam.images, sam.prompts, clip=False).sam.low_res_logits
        (10.0 * mask_distillation_loss(logits, teacher_logits).total).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    batches = make_batches(args.steps)
    run_minimal(make_batches(2))  # warm up allocators and kernels once for both sides
    samclip_times, minimal_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            minimal_times.append(run_minimal(batches))
            samclip_times.append(run_samclip(batches, Path(tmp) / f"round{r}"))
            print(
                f"round {r}: minimal {minimal_times[-1] * 1e3:.0f} ms/step, samclip {samclip_times[-1] * 1e3:.0f} ms/step"
            )
    print(
        f"multitask step, samclip_tiny, {CLIP_BATCH} CLIP images @ {CLIP_RES}px + {SAM_BATCH} SAM images @ {SAM_FRAME}px "
        f"x {MASKS} masks, {args.steps} steps x {args.rounds} rounds"
    )
    print("| | best round (ms/step) | median round (ms/step) |")
    print("|---|---|---|")
    print(
        f"| minimal PyTorch loop | {min(minimal_times) * 1e3:.0f} | {statistics.median(minimal_times) * 1e3:.0f} |"
    )
    print(
        f"| samclip `train_stage` | {min(samclip_times) * 1e3:.0f} | {statistics.median(samclip_times) * 1e3:.0f} |"
    )
    print(
        f"| ratio samclip / minimal | {min(samclip_times) / min(minimal_times):.3f} | "
        f"{statistics.median(samclip_times) / statistics.median(minimal_times):.3f} |"
    )


if __name__ == "__main__":
    main()
