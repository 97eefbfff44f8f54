"""How the stage-2 step's cost grows: CLIP batch, CLIP resolution, SAM batch, prompts per SAM image.

    python benchmarks/bench_growth.py                  # meta counts (tiny, ViT-B) + CPU time and RSS (tiny)
    python benchmarks/bench_growth.py --time vit_b     # also time ViT-B on the CPU where a point fits

One axis varies at a time, on the step of the stream it belongs to alone (a CLIP-only step for the CLIP
axes, a SAM-only step for the SAM axes: the multitask step is their sum), with the teachers online, as
``gpu_step.py`` builds it (``build_task``: stage 2's trainable parameters, ViT-L/14 and SAM teachers for
ViT-B; the tiny teachers for tiny). Per point:

- model FLOPs of forward + backward, counted on meta tensors (``torch.utils.flop_counter``, as
  ``gpu_step.py --flops-only``); teachers included;
- the peak of the bytes saved for backward, counted on meta (``saved_tensors_hooks``: the tensors
  autograd keeps, each tensor once while it lives, weights and their views left out; a micro-batch's
  are freed by its backward; views of one activation count separately, so an upper bound): the
  activation memory, for the CPU's attention path (SDPA's math path keeps the attention probabilities;
  flash/memory-efficient kernels on a GPU do not);
- on the CPU (one thread, a fresh subprocess per point): CPU seconds per step of forward + backward +
  AdamW (process time, so other jobs on a shared machine count less; wall clock beside it), the median
  of ``--iters`` after one warm-up step, and the peak RSS growth over the process's size before
  the first step (``resource.getrusage`` maxrss: activations plus gradients and AdamW state, the latter
  constant along every axis).

The exponent is the least-squares slope of log(cost) on log(axis) over the points; the local slope
between the last two points shows where a super-linear term takes over.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
import weakref
from dataclasses import asdict, dataclass

import numpy as np
import torch
from gpu_step import Shapes, build_task

from samclip.data.batches import ClipBatch, SamBatch
from samclip.models import SamPrompts
from samclip.train.distributed import DistEnv
from samclip.train.flops import StepFlops
from samclip.train.optim import build_optimizer
from samclip.train.step import forward_backward

# (student, CLIP teacher, SAM frame): each student's SAM side runs at its own frame (tiny: 256).
MODELS = {"tiny": ("samclip_tiny", "samclip-tiny-clip", 256), "vit_b": ("samclip_vit_b", "ViT-L-14", 1024)}


@dataclass(frozen=True)
class Point:
    clip_images: int = 0
    clip_resolution: int = 224
    sam_images: int = 0
    prompts: int = 32


AXES = {
    "CLIP batch": ("clip_images", [Point(clip_images=b) for b in (1, 2, 4, 8)]),
    "CLIP resolution": (
        "clip_resolution",
        [Point(clip_images=1, clip_resolution=r) for r in (224, 448, 1024)],
    ),
    "SAM batch": ("sam_images", [Point(sam_images=s) for s in (1, 2, 4)]),
    "prompts per SAM image": ("prompts", [Point(sam_images=1, prompts=p) for p in (4, 16, 64)]),
}


def make_batches(point: Point, frame: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    batches = {}
    if point.clip_images:
        size = (point.clip_images, 3, point.clip_resolution, point.clip_resolution)
        batches["clip"] = ClipBatch(torch.rand(size, generator=generator), point.clip_resolution).to(device)
    if point.sam_images:
        half = point.prompts // 2
        prompts = []
        for i in range(point.sam_images):
            corner = torch.rand(half, 2, generator=generator) * frame / 2
            prompts.append(SamPrompts(i, boxes=torch.cat([corner, corner + frame / 4], dim=1)))
            prompts.append(
                SamPrompts(
                    i,
                    point_coords=torch.rand(point.prompts - half, 1, 2, generator=generator) * frame,
                    point_labels=torch.ones(point.prompts - half, 1, dtype=torch.int64),
                )
            )
        sizes = torch.full((point.sam_images, 2), frame)
        images = torch.rand(point.sam_images, 3, frame, frame, generator=generator)
        batches["sam"] = SamBatch(images, sizes, sizes, prompts).to(device)
    return batches


def shapes_of(model: str, point: Point) -> Shapes:
    student, clip_teacher, frame = MODELS[model]
    return Shapes(student, clip_teacher, point.clip_images, point.clip_resolution, 32, frame, point.prompts)


def step(task, batches: dict, device: torch.device) -> None:
    micro = {"clip": 32, "sam": 1}
    forward_backward(task, task.student, batches, micro_batch_sizes=micro, env=DistEnv(0, 1, 0, device))


@functools.cache
def meta_task(model: str):
    """The model's task moved to meta, built once (open_clip builds on the CPU; a task's modules do not
    depend on the batch shapes)."""
    return build_task(shapes_of(model, Point()), "online", "sdpa", torch.device("cpu")).to("meta")


def count_on_meta(model: str, point: Point) -> dict:
    """FLOPs and saved-for-backward bytes of one step, on meta tensors (no data, no compute)."""
    import torch.fx.experimental._config as fx_config

    fx_config.meta_nonzero_assume_all_nonzero = True
    meta = torch.device("meta")
    task = meta_task(model)
    batches = make_batches(point, MODELS[model][2], meta)
    live: dict[int, int] = {}  # saved tensors alive now: freed with their micro-batch's graph
    peak = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        weight = isinstance(tensor, torch.nn.Parameter) or isinstance(tensor._base, torch.nn.Parameter)
        if not weight and id(tensor) not in live:  # a weight is saved too, but held anyway
            live[id(tensor)] = tensor.numel() * tensor.element_size()
            weakref.finalize(tensor, live.pop, id(tensor), None)
            peak[0] = max(peak[0], sum(live.values()))
        return tensor

    counter = StepFlops()
    keep = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with torch.device(meta), counter.count({"point": None}), keep:
        step(task, batches, meta)
    return {"gflops": counter.last / 1e9, "saved_mib": peak[0] / 2**20}


def time_on_cpu(model: str, point: Point, iters: int) -> dict:
    """s/step and peak RSS growth on the CPU, one thread (run in a fresh subprocess by ``main``)."""
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    task = build_task(shapes_of(model, point), "online", "sdpa", cpu)
    optimizer = build_optimizer(task.student, lr=4e-5, weight_decay=0.1)
    batches = make_batches(point, MODELS[model][2], cpu)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, walls = [], []
    for _ in range(1 + iters):
        start, wall = time.process_time(), time.perf_counter()
        step(task, batches, cpu)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.process_time() - start)
        walls.append(time.perf_counter() - wall)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    return {
        "s_per_step": statistics.median(seconds[1:]),  # CPU seconds of this one-thread process
        "wall_s_per_step": statistics.median(walls[1:]),
        "peak_rss_growth_mib": peak / 1024,
    }


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(least-squares slope of log y on log x, slope between the last two points)."""
    lx, ly = np.log(xs), np.log(ys)
    slope = float(np.polyfit(lx, ly, 1)[0])
    return slope, float((ly[-1] - ly[-2]) / (lx[-1] - lx[-2]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--time", nargs="*", default=["tiny"], choices=list(MODELS), help="models to time on the CPU"
    )
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="skip CPU timing of a point above this"
    )
    parser.add_argument("--axes", nargs="+", default=list(AXES), choices=list(AXES))
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)  # the subprocess's job
    args = parser.parse_args()
    if args.point is not None:
        model, fields = json.loads(args.point)
        print(json.dumps(time_on_cpu(model, Point(**fields), args.iters)))
        return
    rows = []
    for axis in args.axes:
        field, points = AXES[axis]
        for model in MODELS:
            measured = []
            skip_rest = False
            for point in points:
                row = {
                    "axis": axis,
                    "model": model,
                    "x": getattr(point, field),
                    **count_on_meta(model, point),
                }
                if model in args.time and not skip_rest:
                    started = time.perf_counter()
                    job = json.dumps([model, asdict(point)])
                    out = subprocess.run(
                        [sys.executable, __file__, "--point", job, "--iters", str(args.iters)],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
                    # The next point along an axis costs at least as much: stop before the budget.
                    skip_rest = time.perf_counter() - started > args.max_seconds / 2
                print(json.dumps(row), flush=True)
                measured.append(row)
            rows.append((axis, model, measured))
    print("\n| axis | model | points | GFLOP per step | exponent (local, last two) | saved MiB | exponent "
          "| CPU s/step | exponent | peak RSS growth MiB | exponent |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for axis, model, measured in rows:
        xs = [r["x"] for r in measured]
        cells = [axis, model, " / ".join(str(x) for x in xs)]
        for key in ("gflops", "saved_mib", "s_per_step", "peak_rss_growth_mib"):
            have = [r for r in measured if key in r]
            values = " / ".join(f"{r[key]:.3g}" for r in have) or "-"
            if len(have) >= 2 and all(r[key] > 0 for r in have):
                slope, local = fit([r["x"] for r in have], [r[key] for r in have])
                exponent = f"{slope:.2f} ({local:.2f})"
            else:
                exponent = "-"
            cells += [values, exponent]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
