"""Per-core throughput of the D_CLIP and D_SAM streams, before and after, next to raw JPEG decode of the same files.

    python benchmarks/bench_data.py

Writes SA-1B-sized samples (1500x2250 JPEGs, 128 overlapping ragged masks of real-length RLE: what
``samclip-data synth --world throughput`` writes) and 512x384 web JPEGs to a temporary directory, then
alternates, ``--repeats`` times: decoding every file with PIL (``load`` + RGB), and running each stream
in-process (``num_workers=0``, one torch thread: what one DataLoader worker on one core does), on its
former pipeline (``builder.reference``: full decode, PIL resize, float images; D_SAM decodes every sampled
mask at full size) and on the current one. Ratios are medians of the paired runs. Also prints how far the
current pixels are from the former ones (draft decode, torch's uint8 resize), in grey levels.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tarfile
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from samclip.data.clip_stream import ClipStream
from samclip.data.sam_stream import SamStream
from samclip.data.synth import SA1B_SIZE, WEB_SIZE, write_throughput_data


def jpegs(tar_path: str) -> list[bytes]:
    with tarfile.open(tar_path) as tar:
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")]


def rates(count: int, wall_start: float, cpu_start: float) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process): on a shared machine the second
    is the per-core figure, the first also counts the time other jobs held the core."""
    return count / (time.perf_counter() - wall_start), count / (time.process_time() - cpu_start)


def decode_rate(files: list[bytes]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for data in files:
        image = Image.open(io.BytesIO(data))
        image.load()
        image.convert("RGB")
    return rates(len(files), wall, cpu)


def stream_rate(stream: ClipStream | SamStream) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(len(batch.keys) for batch in stream)  # uint8 batches convert on the device, not here
    return rates(count, wall, cpu)


def level_difference(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float, float]:
    """(max, mean, fraction of values that differ) of |after - before| in grey levels."""
    levels = (after.float() * 255 - before.float() * 255).abs().round()
    return float(levels.max()), float(levels.mean()), float((levels > 0).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sam-images", type=int, default=10)
    parser.add_argument("--web-images", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        sam_tar, web_tar = write_throughput_data(root, 0, args.sam_images, args.web_images)
        sam_files, web_files = jpegs(sam_tar), jpegs(web_tar)
        print(
            f"wrote data in {time.perf_counter() - start:.0f}s: {len(sam_files)} SA-1B-sized JPEGs "
            f"(mean {np.mean([len(f) for f in sam_files]) / 1e3:.0f} kB, json "
            f"{(os.path.getsize(sam_tar) - sum(map(len, sam_files))) / len(sam_files) / 1e3:.0f} kB with "
            f"128 masks), {len(web_files)} web-sized JPEGs (mean {np.mean([len(f) for f in web_files]) / 1e3:.0f} kB)"
        )

        def clip(resolution: int, reference: bool, draft: bool = True) -> ClipStream:
            stream = ClipStream(
                web_tar,
                resolutions=[resolution],
                base_batch_size=32,
                base_resolution=resolution,
                num_workers=0,
                steps_per_epoch=args.web_images // 32,
                draft_decode=draft,
                pin_memory=False,
            )
            stream.builder.reference = reference
            return stream

        def sam(reference: bool, gt_masks: bool = False, draft: bool = True) -> SamStream:
            stream = SamStream(
                sam_tar,
                global_batch_size=1,
                masks_per_image=32,
                image_size=1024,
                max_points=1,
                box_prompt_fraction=0.5,
                return_gt_masks=gt_masks,
                num_workers=0,
                steps_per_epoch=args.sam_images,
                draft_decode=draft,
                pin_memory=False,
            )
            stream.builder.reference = reference
            return stream

        web, sa1b = f"{WEB_SIZE[1]}x{WEB_SIZE[0]} JPEG", f"{SA1B_SIZE[1]}x{SA1B_SIZE[0]} JPEG"
        cases = {
            "D_CLIP -> 224px (RRC + flip), before": (lambda: clip(224, True), web_files, web),
            "D_CLIP -> 224px (RRC + flip), after": (lambda: clip(224, False), web_files, web),
            "D_CLIP -> 448px (RRC + flip), before": (lambda: clip(448, True), web_files, web),
            "D_CLIP -> 448px (RRC + flip), after": (lambda: clip(448, False), web_files, web),
            "D_SAM -> 1024px, 32 masks + prompts, before": (lambda: sam(True), sam_files, sa1b),
            "D_SAM -> 1024px, 32 masks + prompts, after": (lambda: sam(False), sam_files, sa1b),
            "D_SAM after, + gt_masks painted at 1024": (lambda: sam(False, True), sam_files, sa1b),
        }
        results: dict[str, list[tuple[tuple[float, float], tuple[float, float]]]] = {n: [] for n in cases}
        for _ in range(args.repeats):
            for name, (make, files, _) in cases.items():
                decode = decode_rate(files)
                results[name].append((stream_rate(make()), decode))

        # How far the current pixels are from the former ones, on the same views.
        differences = {}
        for resolution in (224, 448):
            for draft in (False, True):
                before = [b.images for b in clip(resolution, True)]
                after = [b.to("cpu").images for b in clip(resolution, False, draft)]
                differences[f"D_CLIP {resolution}, draft {'on' if draft else 'off'}"] = level_difference(
                    torch.cat(before), torch.cat(after)
                )
        for draft in (False, True):
            before = [b.images for b in sam(True)]
            after = [b.to("cpu").images for b in sam(False, draft=draft)]
            differences[f"D_SAM 1024, draft {'on' if draft else 'off'}"] = level_difference(
                torch.cat(before), torch.cat(after)
            )

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads 1, "
        f"median of {args.repeats}, load average before the run {load:.1f}\n"
    )
    print(
        "| stream | source | images/s per core (CPU time) | raw JPEG decode, same | stream / decode "
        "| images/s wall clock | decode, wall |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, pairs in results.items():
        cpu, decode_cpu = (statistics.median(p[k][1] for p in pairs) for k in (0, 1))
        wall, decode_wall = (statistics.median(p[k][0] for p in pairs) for k in (0, 1))
        ratio = statistics.median(p[0][1] / p[1][1] for p in pairs)
        print(
            f"| {name} | {cases[name][2]} | {cpu:.1f} | {decode_cpu:.1f} | {ratio:.2f} "
            f"| {wall:.1f} | {decode_wall:.1f} |"
        )
    for prefix in (
        "D_CLIP -> 224px (RRC + flip)",
        "D_CLIP -> 448px (RRC + flip)",
        "D_SAM -> 1024px, 32 masks + prompts",
    ):
        pairs = zip(results[f"{prefix}, before"], results[f"{prefix}, after"], strict=True)
        speedups = [after[0][1] / before[0][1] for before, after in pairs]
        print(
            f"\n{prefix}: after / before = {statistics.median(speedups):.2f}x (CPU time, median of runs)",
            end="",
        )
    print("\n\n| pixels after vs before | max levels | mean levels | fraction differing |")
    print("|---|---:|---:|---:|")
    for name, (most, mean, fraction) in differences.items():
        print(f"| {name} | {most:.0f} | {mean:.4f} | {fraction:.4f} |")


if __name__ == "__main__":
    main()
