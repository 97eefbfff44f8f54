"""The stage-2 (multitask) training step on one CUDA device at the paper's per-GPU shapes.

    python benchmarks/gpu_step.py                      # both resolutions, online and cached teachers
    python benchmarks/gpu_step.py --arms 224 --teacher online --steps 50 --attention flex
    python benchmarks/gpu_step.py --smoke              # tiny models on the CPU, 2 steps (a check, not a benchmark)
    python benchmarks/gpu_step.py --flops-only         # no GPU needed: the step's FLOPs on meta tensors

Per GPU of the paper's 32: 2048/32 = 64 CLIP images at 224 (or 512/32 = 16 at 448) in micro-batches of
32, plus 1 SA-1B image at 1024 with 32 masks (16 box and 16 point prompts). The step is the real one:
``train_stage`` with the multitask task (ViT-B student, OpenCLIP ViT-L/14 and SAM ViT-B teachers,
random weights), bf16 autocast, teachers cast to bf16, fused AdamW, the stage's trainable parameters
and learning-rate groups. The same batch is fed every step, already on the device (no loader, no copy).

``--teacher cached`` stands in for the teacher-embedding cache: the CLIP teacher's forward is replaced
by a stored [B, 768] embedding and the SAM teacher's image encoder by a stored [1, 256, 64, 64] image
embedding (its prompt encoder and mask decoder still run), both synthetic tensors of the right shape.
It measures what a cache saves, not the cache's own reading cost.

Printed per arm: s/step (median-free: the mean over the measured window, after warm-up steps that
include the one FLOP-counted step), CLIP and SAM images/s per GPU, model TFLOP/s and MFU against the device's bf16 peak, peak memory,
and the SDPA backend torch picks for the global blocks' biased attention at the CLIP and SAM sizes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samclip.data.batches import ClipBatch, SamBatch
from samclip.models import SamPrompts, create_model
from samclip.models.attention import sdpa_kernel_choice
from samclip.models.sam_head import SamHeadOutput, decode_masks
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.train.checkpoint import StageState
from samclip.train.distributed import DistEnv
from samclip.train.flops import StepFlops, device_peak_tflops
from samclip.train.loop import LoopOptions, train_stage
from samclip.train.optim import build_optimizer, build_scheduler, set_trainable
from samclip.train.step import forward_backward
from samclip.train.tasks.sam_clip import SamClipTask
from samclip.train.teacher_setup import prepare_teachers
from samclip.train.tracking import Tracker, read_metrics

MULTITASK_TRAINABLE = ["backbone.*", "clip_head.*", "sam_head.mask_decoder.*"]


@dataclass(frozen=True)
class Shapes:
    student: str
    clip_teacher: str
    clip_images: int
    clip_resolution: int
    clip_micro: int
    sam_frame: int
    masks: int


PAPER = {
    "224": Shapes("samclip_vit_b", "ViT-L-14", 64, 224, 32, 1024, 32),
    "448": Shapes("samclip_vit_b", "ViT-L-14", 16, 448, 32, 1024, 32),
}
SMOKE = {"64": Shapes("samclip_tiny", "samclip-tiny-clip", 4, 64, 2, 256, 4)}


class RepeatStream:
    """The same batch every step (the loop asks for an epoch at a time)."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.batch


class NoCheckpoints:
    directory = "(none: benchmark)"

    def due(self, step: int, last_step: int) -> bool:
        return False


class CachedClipTeacher(ClipTeacher):
    """Returns a stored embedding instead of running the image tower (synthetic, for timing)."""

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.stored[: images.shape[0]]


class CachedSamTeacher(SamTeacher):
    """Decodes prompts on a stored image embedding instead of running the image encoder (synthetic)."""

    @torch.no_grad()
    def forward(self, images, prompts, multimask: bool = False, all_outputs: bool = False) -> SamHeadOutput:
        embeddings = self.stored[: images.shape[0]]
        return decode_masks(
            self.sam.prompt_encoder, self.sam.mask_decoder, embeddings, prompts, multimask, all_outputs
        )


def make_batches(shapes: Shapes, device: torch.device) -> tuple[ClipBatch, SamBatch]:
    generator = torch.Generator().manual_seed(0)
    clip = ClipBatch(
        torch.rand(
            shapes.clip_images, 3, shapes.clip_resolution, shapes.clip_resolution, generator=generator
        ),
        shapes.clip_resolution,
    )
    frame = shapes.sam_frame
    half = shapes.masks // 2
    corner = torch.rand(half, 2, generator=generator) * frame / 2
    prompts = [
        SamPrompts(0, boxes=torch.cat([corner, corner + frame / 4], dim=1)),
        SamPrompts(
            0,
            point_coords=torch.rand(shapes.masks - half, 1, 2, generator=generator) * frame,
            point_labels=torch.ones(shapes.masks - half, 1, dtype=torch.int64),
        ),
    ]
    sizes = torch.full((1, 2), frame)
    sam = SamBatch(torch.rand(1, 3, frame, frame, generator=generator), sizes, sizes, prompts)
    return clip.to(device), sam.to(device)


def build_task(shapes: Shapes, teacher: str, attention: str, device: torch.device) -> SamClipTask:
    torch.manual_seed(0)
    student = create_model(shapes.student, attention=attention)
    clip_cls, sam_cls = (
        (CachedClipTeacher, CachedSamTeacher) if teacher == "cached" else (ClipTeacher, SamTeacher)
    )
    clip_teacher = clip_cls(shapes.clip_teacher, pretrained=None)
    sam_teacher = sam_cls(None, model_name=shapes.student)
    task = SamClipTask(student, clip_teacher, sam_teacher, clip_weight=1.0, sam_weight=10.0).to(device)
    if teacher == "cached":
        clip_teacher.stored = torch.randn(shapes.clip_images, clip_teacher.embed_dim, device=device)
        grid = shapes.sam_frame // student.config.patch_size
        sam_teacher.stored = torch.randn(1, student.config.prompt_embed_dim, grid, grid, device=device)
        # A cached run does not hold the image encoders; drop them so peak memory is comparable.
        clip_teacher.model.visual = torch.nn.Identity()
        sam_teacher.sam.image_encoder = torch.nn.Identity()
    set_trainable(student, MULTITASK_TRAINABLE)
    task.freeze_without_loss_path(["clip", "sam"])
    return task


def run_arm(name: str, shapes: Shapes, args: argparse.Namespace, teacher: str, device: torch.device) -> dict:
    autocast = torch.bfloat16 if device.type == "cuda" else None
    task = build_task(shapes, teacher, args.attention, device)
    prepare_teachers(task, autocast, compile_encoders=args.compile_teachers)
    if args.compile:
        task.student.compile()
    optimizer = build_optimizer(
        task.student, lr=4e-5, weight_decay=0.1, lr_multipliers={"backbone": 0.1, "sam_head": 0.1}
    )
    total = args.warmup + args.steps
    scheduler = build_scheduler(optimizer, 1, total)
    clip, sam = make_batches(shapes, device)
    streams = {"clip": RepeatStream(clip), "sam": RepeatStream(sam)}
    options = LoopOptions(micro_batch_sizes={"clip": shapes.clip_micro, "sam": 1}, autocast_dtype=autocast)
    env = DistEnv(0, 1, 0, device)
    flops, state = StepFlops(), StageState()
    peak = device_peak_tflops(device, args.peak_tflops)
    with tempfile.TemporaryDirectory() as tmp:
        # One log line per phase (log_every = the phase's last step): the measured window is one line.
        for last_step in (args.warmup, total):
            if last_step == total and device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            tracker = Tracker(
                tmp, "multitask", enabled=True, log_every=last_step, last_step=last_step,
                start_step=state.step, progress=False, peak_tflops=peak,
            )  # fmt: skip
            started = time.perf_counter()
            state = train_stage(
                task, task.student, optimizer, scheduler, streams, state, last_step, stage="multitask",
                options=options, env=env, tracker=tracker, checkpointer=NoCheckpoints(), flops=flops,
            )  # fmt: skip
            seconds = time.perf_counter() - started
        line = read_metrics(Path(tmp) / "metrics.jsonl")[-1]
    config = task.student.config
    heads, head_dim = config.num_heads, config.embed_dim // config.num_heads
    kernels = {
        f"{size}px": sdpa_kernel_choice(
            batch,
            heads,
            (size // config.patch_size) ** 2,
            head_dim,
            dtype=autocast or torch.float32,
            device=device,
        )
        for size, batch in ((shapes.clip_resolution, shapes.clip_micro), (shapes.sam_frame, 1))
    }
    return {
        "arm": name,
        "teacher": teacher,
        "attention": args.attention,
        "shapes": f"{shapes.clip_images} x {shapes.clip_resolution} CLIP + 1 x {shapes.sam_frame} SAM, {shapes.masks} masks",
        "steps": args.steps,
        "s_per_step": seconds / args.steps,
        "clip_images_per_s": shapes.clip_images * args.steps / seconds,
        "sam_images_per_s": args.steps / seconds,
        "tflops_per_step": line.get("flops_per_step", 0.0) / 1e12,
        "tflops_per_s": line.get("tflops_per_s"),
        "mfu": line.get("mfu"),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "sdpa_kernel_global_blocks": kernels,
        "loss": line.get("loss"),
    }


def count_on_meta(name: str, shapes: Shapes) -> dict:
    """The online step's model FLOPs and the teachers' image-encoder share, counted on meta tensors
    (no data, no device): what the cached arm removes. Data-dependent ops assume every element nonzero."""
    import torch.fx.experimental._config as fx_config

    fx_config.meta_nonzero_assume_all_nonzero = True
    meta = torch.device("meta")
    task = build_task(shapes, "online", "sdpa", torch.device("cpu")).to(meta)
    clip, sam = make_batches(shapes, meta)
    batches, micro = {"clip": clip, "sam": sam}, {"clip": shapes.clip_micro, "sam": 1}
    parts = {
        "step": lambda: forward_backward(
            task, task.student, batches, micro_batch_sizes=micro, env=DistEnv(0, 1, 0, meta)
        ),
        "clip_teacher": lambda: task.clip_teacher.encode_image(clip.images),
        "sam_teacher_image_encoder": lambda: task.sam_teacher.image_embeddings(sam.images),
    }
    tflops = {}
    with torch.device(meta):
        for part, run in parts.items():
            counter = StepFlops()
            with counter.count({part: None}):
                run()
            tflops[part] = counter.last / 1e12
    cached = tflops["step"] - tflops["clip_teacher"] - tflops["sam_teacher_image_encoder"]
    return {"arm": name, "tflops_online_step": tflops["step"], "tflops_cached_step": cached,
            "tflops_clip_teacher": tflops["clip_teacher"],
            "tflops_sam_teacher_image_encoder": tflops["sam_teacher_image_encoder"],
            "online_over_cached": tflops["step"] / cached}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models on the CPU, 2 steps: checks the script runs"
    )
    parser.add_argument("--arms", nargs="+", default=None, help="CLIP resolutions to run (224 448)")
    parser.add_argument("--teacher", choices=["online", "cached", "both"], default="both")
    parser.add_argument("--attention", choices=["sdpa", "flex", "math"], default="sdpa")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    parser.add_argument("--compile-teachers", action="store_true")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 peak (default: the known table)"
    )
    parser.add_argument(
        "--flops-only", action="store_true", help="count the step's FLOPs on meta tensors and stop"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.flops_only:
        for arm in args.arms or list(SMOKE if args.smoke else PAPER):
            print(json.dumps(count_on_meta(arm, (SMOKE if args.smoke else PAPER)[arm])), flush=True)
        return
    if args.smoke:
        device, table = torch.device("cpu"), SMOKE
        args.steps, args.warmup = min(args.steps, 2), 1
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: this benchmark is for a GPU (use --smoke for the CPU check)")
        device, table = torch.device("cuda"), PAPER
    arms = args.arms or list(table)
    unknown = sorted(set(arms) - set(table))
    if unknown:
        parser.error(f"--arms {unknown}: known {list(table)}")
    teachers = ["online", "cached"] if args.teacher == "both" else [args.teacher]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}, attention {args.attention}, {args.steps} steps after {args.warmup}"
    )
    results = []
    for arm in arms:
        for teacher in teachers:
            result = run_arm(arm, table[arm], args, teacher, device)
            results.append(result)
            print(json.dumps(result), flush=True)
    print(
        "| arm | teacher | s/step | CLIP images/s | SAM images/s | TFLOP/step | TFLOP/s | MFU | peak GiB "
        "| SDPA kernel (CLIP / SAM size) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        memory = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        kernels = " / ".join(r["sdpa_kernel_global_blocks"].values())
        print(
            f"| {r['shapes']} | {r['teacher']} | {r['s_per_step']:.3f} | {r['clip_images_per_s']:.0f} | "
            f"{r['sam_images_per_s']:.1f} | {r['tflops_per_step']:.3g} | "
            f"{(r['tflops_per_s'] or 0):.1f} | {mfu} | {memory} | {kernels} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
