"""Per-core throughput of the D_CLIP and D_SAM streams, before and after, next to raw JPEG decode of the same files.

    python benchmarks/bench_data.py

Writes SA-1B-sized samples (1500x2250 JPEGs, 128 overlapping ragged masks of real-length RLE: what
``samclip-data synth --world throughput`` writes) and 512x384 web JPEGs to a temporary directory, then
alternates, ``--repeats`` times: decoding every file with PIL (``load`` + RGB), and running each stream
in-process (``num_workers=0``, one torch thread: what one DataLoader worker on one core does), on its
former pipeline (``builder.reference``: full decode, PIL resize, float images; D_SAM decodes every sampled
mask at full size) and on the current one. Ratios are medians of the paired runs. Also prints how far the
current pixels are from the former ones (draft decode, torch's uint8 resize), in grey levels, and where a
D_CLIP sample's time goes (``clip_breakdown``).

Two web sizes: 512x384 (img2dataset's ``keep_ratio_largest`` at 512, DataComp's setting: the long side 512)
and 683x512 (``keep_ratio`` at 512: the short side 512). Only the second lets a 224 crop of scale (0.9, 1)
decode at half scale. ``--only clip`` skips D_SAM (about half the run).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import statistics
import tarfile
import tempfile
import time
from functools import partial

import numpy as np
import torch
from PIL import Image

from samclip.data.batches import ClipBatch
from samclip.data.clip_stream import ClipStream, crop_view_pixels, draw_crop_view, view_decode_size
from samclip.data.images import decode_image, decode_pixels_reduced, to_tensor
from samclip.data.sam_stream import SamStream
from samclip.data.shards import iter_tar
from samclip.data.synth import SA1B_SIZE, WEB_SIZE, make_web_image, write_tar, write_throughput_data

SHORT_SIDE_512 = (512, 683)  # (height, width): img2dataset keep_ratio at 512


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


def clip_breakdown(tar: str, resolution: int, draft: bool = True) -> dict[str, dict[str, float]]:
    """Microseconds of CPU per D_CLIP sample, stage by stage, former pipeline and current, on the same views.

    Each stage runs over all samples on its own (inputs prepared beforehand), so a stage's time is its
    own (the least disturbed of three passes); what the stream spends besides (the RNG draws, the
    builder's Python) is the stream's per-sample time minus their sum.
    """
    raws = list(iter_tar(tar))
    count = len(raws)
    rng = np.random.default_rng(0)

    def timed(run) -> float:  # the least disturbed of three passes
        best = math.inf
        for _ in range(3):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
        return best / count * 1e6

    web = timed(lambda: list(iter_tar(tar)))
    datas = [r["jpg"] for r in raws]
    full = [decode_image(d) for d in datas]
    views = [draw_crop_view(im.width, im.height, (0.9, 1.0), rng) for im in full]
    sizes = [
        view_decode_size(v, resolution, False, im.width, im.height) if draft else (im.width, im.height)
        for v, im in zip(views, full, strict=True)
    ]
    out: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    out["before"]["webdataset (tar read, group by key)"] = web
    out["before"]["decode (PIL, full size)"] = timed(lambda: [decode_image(d) for d in datas])

    def pil_crop_resize() -> list:
        rendered = []
        for im, v in zip(full, views, strict=True):
            crop = im.crop((v.left, v.top, v.left + v.width, v.top + v.height))
            crop = crop.resize((resolution, resolution), Image.Resampling.BICUBIC)
            rendered.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if v.flip else crop)
        return rendered

    out["before"]["crop + resize + flip (PIL bicubic)"] = timed(pil_crop_resize)
    rendered = pil_crop_resize()
    out["before"]["conversion (PIL -> float tensor)"] = timed(lambda: [to_tensor(im) for im in rendered])
    batch = torch.empty(count, 3, resolution, resolution)
    floats = [to_tensor(im) for im in rendered]

    def collate(target: torch.Tensor, items: list) -> None:
        for j, item in enumerate(items):
            target[j] = item
        ClipBatch(images=target, resolution=resolution, keys=[r["__key__"] for r in raws])

    out["before"]["collate (write into the batch)"] = timed(lambda: collate(batch, floats))

    out["after"]["webdataset (tar read, group by key)"] = web
    decode_sizes = iter(sizes * 6)
    label = "decode (uint8 tensor" + (", half scale where the crop allows)" if draft else ")")
    out["after"][label] = timed(
        lambda: [decode_pixels_reduced(d, lambda w, h: next(decode_sizes)) for d in datas]
    )
    decoded = [decode_pixels_reduced(d, lambda w, h, s=s: s) for d, s in zip(datas, sizes, strict=True)]
    reduced = sum(d.scale[0] < 1 for d in decoded)
    out["after"]["crop + resize + flip (torch uint8 bicubic)"] = timed(
        lambda: [crop_view_pixels(d, v, resolution) for d, v in zip(decoded, views, strict=True)]
    )
    out["after"]["conversion (none: uint8 to the device)"] = 0.0
    pixels = [crop_view_pixels(d, v, resolution) for d, v in zip(decoded, views, strict=True)]
    uint8 = torch.empty(count, 3, resolution, resolution, dtype=torch.uint8)
    out["after"]["collate (write into the batch)"] = timed(lambda: collate(uint8, pixels))
    out["after"]["samples decoded at reduced scale (%)"] = 100.0 * reduced / count
    return out


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
    parser.add_argument("--only", choices=["clip", "all"], default="all", help="clip: skip D_SAM")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        sam_tar, web_tar = write_throughput_data(root, 0, args.sam_images, args.web_images)
        rng = np.random.default_rng((0, 3))
        tall_tar = os.path.join(root, "clip512", "00000.tar")
        write_tar(
            tall_tar,
            [
                (f"{index:09d}.{ext}", data)
                for index in range(args.web_images)
                for ext, data in (("jpg", make_web_image(*SHORT_SIDE_512, rng, noise_std=10)), ("txt", b"c"))
            ],
        )
        sam_files, web_files, tall_files = jpegs(sam_tar), jpegs(web_tar), jpegs(tall_tar)
        print(
            f"wrote data in {time.perf_counter() - start:.0f}s: {len(sam_files)} SA-1B-sized JPEGs "
            f"(mean {np.mean([len(f) for f in sam_files]) / 1e3:.0f} kB, json "
            f"{(os.path.getsize(sam_tar) - sum(map(len, sam_files))) / len(sam_files) / 1e3:.0f} kB with "
            f"128 masks), {len(web_files)} web-sized JPEGs (mean {np.mean([len(f) for f in web_files]) / 1e3:.0f} kB), "
            f"{len(tall_files)} short-side-512 JPEGs (mean {np.mean([len(f) for f in tall_files]) / 1e3:.0f} kB)"
        )

        def clip(resolution: int, reference: bool, draft: bool = True, tar: str = web_tar) -> ClipStream:
            stream = ClipStream(
                tar,
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
        tall = f"{SHORT_SIDE_512[1]}x{SHORT_SIDE_512[0]} JPEG"
        cases = {}
        for resolution in (224, 448):
            for files, tar, source in ((web_files, web_tar, web), (tall_files, tall_tar, tall)):
                for when, reference in (("before", True), ("after", False)):
                    name = f"D_CLIP -> {resolution}px (RRC + flip), {source}, {when}"
                    cases[name] = (partial(clip, resolution, reference, tar=tar), files, source)
        if args.only == "all":
            cases.update(
                {
                    "D_SAM -> 1024px, 32 masks + prompts, before": (lambda: sam(True), sam_files, sa1b),
                    "D_SAM -> 1024px, 32 masks + prompts, after": (lambda: sam(False), sam_files, sa1b),
                    "D_SAM after, + gt_masks painted at 1024": (lambda: sam(False, True), sam_files, sa1b),
                }
            )
        results: dict[str, list[tuple[tuple[float, float], tuple[float, float]]]] = {n: [] for n in cases}
        for _ in range(args.repeats):
            for name, (make, files, _) in cases.items():
                decode = decode_rate(files)
                results[name].append((stream_rate(make()), decode))

        breakdowns = {
            f"{resolution}px, {source}": clip_breakdown(tar, resolution)
            for resolution in (224, 448)
            for tar, source in ((web_tar, web), (tall_tar, tall))
        }

        # How far the current pixels are from the former ones, on the same views.
        differences = {}
        for resolution in (224, 448):
            for tar, source in ((web_tar, web), (tall_tar, tall)):
                for draft in (False, True):
                    before = [b.images for b in clip(resolution, True, tar=tar)]
                    after = [b.to("cpu").images for b in clip(resolution, False, draft, tar=tar)]
                    differences[f"D_CLIP {resolution}, {source}, draft {'on' if draft else 'off'}"] = (
                        level_difference(torch.cat(before), torch.cat(after))
                    )
        if args.only == "all":
            for draft in (False, True):
                before = [b.images for b in sam(True)]
                after = [b.to("cpu").images for b in sam(False, draft=draft)]
                differences[f"D_SAM 1024, draft {'on' if draft else 'off'}"] = level_difference(
                    torch.cat(before), torch.cat(after)
                )
    end_load = os.getloadavg()[0]

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads 1, "
        f"median of {args.repeats}, started {started}, load average {load:.1f} before the run, "
        f"{end_load:.1f} after\n"
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
    prefixes = [n.removesuffix(", before") for n in results if n.endswith(", before")]
    for prefix in prefixes:
        pairs = zip(results[f"{prefix}, before"], results[f"{prefix}, after"], strict=True)
        speedups = [after[0][1] / before[0][1] for before, after in pairs]
        print(
            f"\n{prefix}: after / before = {statistics.median(speedups):.2f}x (CPU time, median of runs)",
            end="",
        )
    print("\n\nD_CLIP per sample, microseconds of CPU by stage (each stage timed alone, same views):")
    for name, parts in breakdowns.items():
        for when, stages in parts.items():
            cost = " | ".join(f"{stage} {value:.0f}" for stage, value in stages.items())
            print(f"| {name}, {when} | {cost} |")
    print("\n| pixels after vs before | max levels | mean levels | fraction differing |")
    print("|---|---:|---:|---:|")
    for name, (most, mean, fraction) in differences.items():
        print(f"| {name} | {most:.0f} | {mean:.4f} | {fraction:.4f} |")


if __name__ == "__main__":
    main()
