"""What a teacher-embedding cache saves: step FLOPs and step wall time, online teachers vs cached outputs.

The stage-2 (multitask) step at the paper's shapes: the ViT-B SAM-CLIP student (``samclip_vit_b``), the
OpenCLIP ViT-L/14 teacher and the SAM ViT-B teacher, random weights. One micro-batch step of each stream
(``SamClipTask.loss`` + backward): D_CLIP images at 224 or 448, one D_SAM image at 1024 with 32 box prompts.
Online, the teachers run; cached, the step reads their stored outputs (the SAM teacher's decoder still
runs). FLOPs are counted with ``torch.utils.flop_counter`` on meta tensors (no compute), per image and at
the paper's per-GPU mix (2048 CLIP + 32 SAM images over 32 GPUs: 64 × 224 + 1 SAM; at 448, 16 + 1).
Wall time is measured on CPU, online and cached steps interleaved, ratio of medians.

    OMP_NUM_THREADS=1 python benchmarks/bench_cache.py --batch 2 --iters 3 [--sam-wall]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from samclip.data.batches import ClipBatch, SamBatch
from samclip.losses import CosineDistillationLoss, MaskDistillationLoss
from samclip.models import SamPrompts, create_model
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.train.tasks import SamClipTask

CLIP_PER_GPU = {224: 64, 448: 16}  # 2048 and 512 global CLIP images over 32 GPUs
SAM_PER_GPU = 1  # 32 SA-1B images over 32 GPUs
MASKS = 32


def build_task() -> SamClipTask:
    """The student with both teachers; a step reads cached outputs when its batch carries them."""
    torch.manual_seed(0)
    student = create_model("samclip_vit_b")
    clip_teacher = ClipTeacher("ViT-L-14", None)
    sam_teacher = SamTeacher(None, "samclip_vit_b")
    return SamClipTask(student, clip_teacher, sam_teacher, CosineDistillationLoss(), MaskDistillationLoss())


def clip_batch(task: SamClipTask, batch: int, resolution: int, device: str) -> ClipBatch:
    images = torch.rand(batch, 3, resolution, resolution, device=device)
    embeds = task.clip_teacher.encode_image(images).float()
    return ClipBatch(images=images, resolution=resolution, teacher_embeds=embeds)


def sam_batch(task: SamClipTask, device: str) -> SamBatch:
    size = task.student.config.image_size
    images = torch.rand(1, 3, size, size, device=device)
    corner = torch.rand(MASKS, 2, device=device) * size / 2
    prompts = [SamPrompts(0, boxes=torch.cat([corner, corner + size / 4], dim=1))]
    sizes = torch.tensor([[size, size]], device=device)
    embeds = task.sam_teacher.image_embeddings(images).float()
    return SamBatch(images, sizes, sizes, prompts, teacher_embeds=embeds)


def step(task: SamClipTask, stream: str, batch: ClipBatch | SamBatch, cached: bool) -> None:
    if not cached:
        batch = replace(batch, teacher_embeds=None)
    (micro,) = task.split(stream, batch, 10**6)
    sum(term.total for term in task.loss(stream, task.student, micro).values()).backward()
    task.student.zero_grad(set_to_none=True)


def count_flops(fn: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def flop_table(online: SamClipTask) -> None:
    online.to(torch.device("meta"))
    per_image: dict[str, dict[bool, int]] = {}
    for resolution in CLIP_PER_GPU:
        batch = clip_batch(online, 1, resolution, "meta")
        per_image[f"clip{resolution}"] = {
            cached: count_flops(lambda b=batch, c=cached: step(online, "clip", b, c))
            for cached in (False, True)
        }
    batch = sam_batch(online, "meta")
    per_image["sam"] = {
        cached: count_flops(lambda c=cached: step(online, "sam", batch, c)) for cached in (False, True)
    }
    print("\nFLOPs per image (step: student forward + backward, teacher forward), TFLOP")
    print("| stream | online | cached | online / cached |\n|---|---|---|---|")
    for name, flops in per_image.items():
        print(
            f"| {name} | {flops[False] / 1e12:.3f} | {flops[True] / 1e12:.3f} | {flops[False] / flops[True]:.2f}× |"
        )
    print("\nFLOPs of the paper's per-GPU step (32 GPUs), TFLOP")
    print(
        "| per-GPU step | online | cached | online / cached | teacher share online |\n|---|---|---|---|---|"
    )
    for resolution, count in CLIP_PER_GPU.items():
        clip = per_image[f"clip{resolution}"]
        total = {c: count * clip[c] + SAM_PER_GPU * per_image["sam"][c] for c in (False, True)}
        share = 1 - total[True] / total[False]
        print(
            f"| {count} × {resolution} CLIP + {SAM_PER_GPU} × 1024 SAM ({MASKS} masks) | {total[False] / 1e12:.2f} "
            f"| {total[True] / 1e12:.2f} | **{total[False] / total[True]:.2f}×** | {share:.0%} |"
        )


def wall_table(online: SamClipTask, batch: int, iters: int, sam_wall: bool, resolutions: list[int]) -> None:
    rows = [(f"clip {batch} × {r}", "clip", clip_batch(online, batch, r, "cpu")) for r in resolutions]
    if sam_wall:
        rows.append(("sam 1 × 1024, 32 masks", "sam", sam_batch(online, "cpu")))
    print(f"\nWall time per step on CPU ({torch.get_num_threads()} thread), s: median (min) of {iters}")
    print("| step | online s | cached s | teacher alone s | online / cached |\n|---|---|---|---|---|")
    for label, stream, data in rows:
        times: dict[str, list[float]] = {"online": [], "cached": [], "teacher": []}
        step(online, stream, data, True)  # warm-up
        runs = {
            "online": lambda d=data, s=stream: step(online, s, d, False),
            "cached": lambda d=data, s=stream: step(online, s, d, True),
            "teacher": lambda d=data, s=stream: teacher_forward(online, s, d),
        }
        for _ in range(iters):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        low = {k: min(v) for k, v in times.items()}
        cells = " | ".join(f"{med[k]:.2f} ({low[k]:.2f})" for k in ("online", "cached", "teacher"))
        print(f"| {label} | {cells} | **{med['online'] / med['cached']:.2f}×** |", flush=True)


@torch.no_grad()
def teacher_forward(task: SamClipTask, stream: str, batch: ClipBatch | SamBatch) -> None:
    if stream == "clip":
        task.clip_teacher.encode_image(batch.images)
    else:
        task.sam_teacher.image_embeddings(batch.images)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2, help="CLIP images per wall-time step")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--sam-wall", action="store_true", help="also time the 1024 SAM step (slow on CPU)")
    parser.add_argument("--no-wall", action="store_true", help="FLOPs only")
    parser.add_argument(
        "--wall-resolutions", type=int, nargs="*", default=list(CLIP_PER_GPU), help="CLIP steps to time"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, {platform.machine()} {platform.processor() or ''}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average {os.getloadavg()[0]:.1f}"
    )
    task = build_task()
    if not args.no_wall:
        wall_table(task, args.batch, args.iters, args.sam_wall, args.wall_resolutions)
    flop_table(task)


if __name__ == "__main__":
    main()
