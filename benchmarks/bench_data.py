"""Per-worker throughput of the D_CLIP and D_SAM streams next to the raw JPEG decode rate of the same files.

    python benchmarks/bench_data.py

Writes SA-1B-sized (1500x2250, >= 32 masks) and web-sized (512x384) JPEGs in their real tar layouts to a
temporary directory, then alternates, ``--repeats`` times: decoding every file with PIL (``load`` +
RGB), and running each stream in-process (``num_workers=0``, one torch thread: what one DataLoader worker
does). The ratio stream/decode uses medians from the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from samclip.data.clip_stream import ClipStream
from samclip.data.images import decode_image, to_tensor
from samclip.data.prompts_sampling import sample_prompts
from samclip.data.sa1b import check_rle, nearest_indices, parse_annotation_file
from samclip.data.sam_stream import SamStream
from samclip.data.synth import make_sa1b_files, make_web_image, write_tar
from samclip.models.preprocess import pad_to_square, resized_longest_side_shape

SAM_SIZE = (1500, 2250)
WEB_SIZE = (384, 512)


def write_data(root: str, num_sam: int, num_web: int, seed: int) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    sam_members, num_masks = [], []
    for image_id in range(1, num_sam + 1):
        jpg, annotation = make_sa1b_files(
            image_id, *SAM_SIZE, num_masks=64, rng=rng, noise_std=5, max_radius=0.1
        )
        num_masks.append(len(json.loads(annotation)["annotations"]))
        sam_members += [(f"sa_{image_id}.jpg", jpg), (f"sa_{image_id}.json", annotation)]
    if min(num_masks) < 32:
        raise RuntimeError(f"a synthetic SA-1B image has only {min(num_masks)} masks; the benchmark needs 32")
    web_members = []
    for index in range(num_web):
        key = f"{index:09d}"
        web_members += [
            (f"{key}.jpg", make_web_image(*WEB_SIZE, rng, noise_std=10)),
            (f"{key}.txt", b"caption"),
        ]
    sam_tar, web_tar = os.path.join(root, "sa_000000.tar"), os.path.join(root, "00000.tar")
    write_tar(sam_tar, sam_members)
    write_tar(web_tar, web_members)
    return sam_tar, web_tar


def jpegs(tar_path: str) -> list[bytes]:
    with tarfile.open(tar_path) as tar:
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")]


def decode_rate(files: list[bytes]) -> float:
    start = time.perf_counter()
    for data in files:
        image = Image.open(io.BytesIO(data))
        image.load()
        image.convert("RGB")
    return len(files) / (time.perf_counter() - start)


def sam_stage_times(tar_path: str, masks_per_image: int = 32) -> dict[str, float]:
    """Milliseconds per image of each step of the D_SAM pipeline, run one by one on the same files."""
    with tarfile.open(tar_path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    times = dict.fromkeys(
        [
            "JPEG decode",
            "image resize + pad",
            "32 masks: pycocotools decode",
            "32 masks: resample",
            "prompts",
        ],
        0.0,
    )
    rng = np.random.default_rng(0)
    keys = sorted(name[:-4] for name in files if name.endswith(".jpg"))
    for key in keys:
        record = parse_annotation_file(files[f"{key}.json"])
        rles = [
            check_rle(a["segmentation"], record.height, record.width)
            for a in record.annotations[:masks_per_image]
        ]
        height, width = resized_longest_side_shape(record.height, record.width, 1024)
        t0 = time.perf_counter()
        image = decode_image(files[f"{key}.jpg"])
        t1 = time.perf_counter()
        pad_to_square(to_tensor(image.resize((width, height), Image.Resampling.BILINEAR))[None], 1024)
        t2 = time.perf_counter()
        full = [mask_utils.decode([rle]) for rle in rles]
        t3 = time.perf_counter()
        rows, cols = nearest_indices(record.height, height), nearest_indices(record.width, width)
        masks = np.stack([m[:, :, 0].T[cols][:, rows].T for m in full]).view(bool)
        t4 = time.perf_counter()
        sample_prompts(masks, 0, rng, 0.5, 1, 0.1, 20.0)
        t5 = time.perf_counter()
        for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            times[name] += 1e3 * dt / len(keys)
    return times


def stream_rate(stream: ClipStream | SamStream) -> float:
    start = time.perf_counter()
    count = sum(len(batch.keys) for batch in stream)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sam-images", type=int, default=10)
    parser.add_argument("--web-images", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        sam_tar, web_tar = write_data(root, args.sam_images, args.web_images, seed=0)
        sam_files, web_files = jpegs(sam_tar), jpegs(web_tar)
        print(
            f"wrote data in {time.perf_counter() - start:.0f}s: {len(sam_files)} SA-1B-sized JPEGs "
            f"(mean {np.mean([len(f) for f in sam_files]) / 1e3:.0f} kB), {len(web_files)} web-sized JPEGs "
            f"(mean {np.mean([len(f) for f in web_files]) / 1e3:.0f} kB)"
        )

        def clip(resolution: int) -> ClipStream:
            return ClipStream(
                web_tar,
                resolutions=[resolution],
                base_batch_size=32,
                base_resolution=resolution,
                num_workers=0,
                steps_per_epoch=args.web_images // 32,
            )

        def sam() -> SamStream:
            return SamStream(
                sam_tar,
                global_batch_size=1,
                masks_per_image=32,
                image_size=1024,
                max_points=1,
                box_prompt_fraction=0.5,
                num_workers=0,
                steps_per_epoch=args.sam_images,
            )

        # Each stream run right after a decode run of its own files; the ratio is taken per pair.
        cases = {
            "D_CLIP -> 224px (RRC + flip)": (
                lambda: clip(224),
                web_files,
                f"{WEB_SIZE[1]}x{WEB_SIZE[0]} JPEG",
            ),
            "D_CLIP -> 448px (RRC + flip)": (
                lambda: clip(448),
                web_files,
                f"{WEB_SIZE[1]}x{WEB_SIZE[0]} JPEG",
            ),
            "D_SAM -> 1024px, 32 masks + prompts": (sam, sam_files, f"{SAM_SIZE[1]}x{SAM_SIZE[0]} JPEG"),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, (make, files, _) in cases.items():
                decode = decode_rate(files)
                results[name].append((stream_rate(make()), decode))
        stages = sam_stage_times(sam_tar)

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads 1, "
        f"median of {args.repeats}\n"
    )
    print("| stream | source | stream images/s per worker | raw JPEG decode images/s | stream / decode |")
    print("|---|---|---:|---:|---:|")
    for name, pairs in results.items():
        stream = statistics.median(p[0] for p in pairs)
        decode = statistics.median(p[1] for p in pairs)
        ratio = statistics.median(p[0] / p[1] for p in pairs)
        print(f"| {name} | {cases[name][2]} | {stream:.1f} | {decode:.1f} | {ratio:.2f} |")
    print("\nD_SAM per image, step by step (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
