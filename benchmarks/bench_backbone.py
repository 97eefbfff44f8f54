"""Backbone forward+backward: samclip's timm-based encoder vs segment_anything's ImageEncoderViT.

Both get the same weights and the same input; timings are interleaved (A, B, A, B, ...) in one
process so that machine noise hits both alike, and the ratio of medians is reported. One torch thread
(``--threads``, default 1): on a shared 2-core machine two threads made the ratio unreproducible.

    python benchmarks/bench_backbone.py --model samclip_vit_b --size 1024 --batch 1 --iters 5 --attention sdpa math
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from timm.layers import resample_abs_pos_embed_nhwc

from samclip import create_model
from samclip.models.attention import set_attention_kernel
from samclip.models.sam_checkpoint import build_official_sam, to_official_state_dict


def time_step(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="samclip_vit_b")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--attention",
        nargs="+",
        default=["sdpa"],
        choices=["sdpa", "math", "flex"],
        help="samclip's attention kernel(s), each timed as its own encoder in the same interleaved run",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and OMP_NUM_THREADS)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    ours = create_model(args.model).backbone.to(device).train()
    reference = build_official_sam(create_model(args.model).config).image_encoder
    official = to_official_state_dict(ours.state_dict(), {})
    reference.load_state_dict({k.removeprefix("image_encoder."): v for k, v in official.items()})
    grid = args.size // ours.patch_size
    if grid != reference.pos_embed.shape[1]:
        # segment_anything only runs at its native size; give it the same resampled position embedding
        # our backbone uses (its relative-position tables interpolate by themselves).
        resampled = resample_abs_pos_embed_nhwc(reference.pos_embed.detach(), [grid, grid])
        reference.pos_embed = torch.nn.Parameter(resampled)
    reference.to(device).train()
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)

    with torch.no_grad():
        max_diff = (ours(images).neck - reference(images)).abs().max().item()

    def step_ours(kernel: str) -> Callable[[], None]:
        def step() -> None:
            set_attention_kernel(ours, kernel)
            ours.zero_grad(set_to_none=True)
            ours(images).neck.float().square().mean().backward()

        return step

    def step_reference() -> None:
        reference.zero_grad(set_to_none=True)
        reference(images).float().square().mean().backward()

    steps = {f"samclip ({kernel})": step_ours(kernel) for kernel in args.attention}
    steps["segment_anything"] = step_reference
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.iters):
        for name, step in steps.items():
            times[name].append(time_step(step, device))

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {device}"
    )
    print(
        f"{args.model} backbone fwd+bwd, batch {args.batch} at {args.size}px, {args.iters} interleaved iterations"
    )
    print(f"max |neck difference| on the same input: {max_diff:.2e}")
    print("| encoder | median s/iter | images/s |")
    print("|---|---|---|")
    for name, median in medians.items():
        print(f"| {name} | {median:.3f} | {args.batch / median:.2f} |")
    for kernel in args.attention:
        ratio = medians["segment_anything"] / medians[f"samclip ({kernel})"]
        print(f"speed-up of samclip ({kernel}) over segment_anything (ratio of medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
