"""Backbone forward+backward: samclip's timm-based encoder vs segment_anything's ImageEncoderViT.

Both get the same weights and the same input; timings are interleaved (A, B, A, B, ...) in one
process so that machine noise hits both alike, and the ratio of medians is reported. One torch thread
(``--threads``, default 1): on a shared 2-core machine two threads made the ratio unreproducible.

    python benchmarks/bench_backbone.py --model samclip_vit_b --size 1024 --batch 1 --iters 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from timm.layers import resample_abs_pos_embed_nhwc, set_fused_attn

from samclip import create_model
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
        "--no-fused-attn", action="store_true", help="timm's explicit softmax attention instead of SDPA"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and OMP_NUM_THREADS)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    if args.no_fused_attn:
        set_fused_attn(False)
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

    def step_ours() -> None:
        ours.zero_grad(set_to_none=True)
        ours(images).neck.float().square().mean().backward()

    def step_reference() -> None:
        reference.zero_grad(set_to_none=True)
        reference(images).float().square().mean().backward()

    for _ in range(args.warmup):
        step_ours()
        step_reference()
    times: dict[str, list[float]] = {"samclip (timm)": [], "segment_anything": []}
    for _ in range(args.iters):
        times["samclip (timm)"].append(time_step(step_ours, device))
        times["segment_anything"].append(time_step(step_reference, device))

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
    ratio = medians["segment_anything"] / medians["samclip (timm)"]
    print(f"speed-up of samclip over segment_anything (ratio of medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
