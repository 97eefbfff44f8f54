"""``samclip-data``: write synthetic data in the real layouts, an SA-1B subset manifest, or a teacher cache."""

from __future__ import annotations

import argparse
import os
import sys

from samclip.cli_errors import pop_debug_flag, user_errors
from samclip.data.manifest import scan_image_ids, split_subset, write_manifest
from samclip.data.shards import expand_urls
from samclip.data.synth import make_synthetic_data, write_throughput_data


def _synth(args: argparse.Namespace) -> None:
    if args.world == "shapes":
        from samclip.proxy.world import write_world

        world = write_world(args.out, args.size, seed=args.seed)
        print(f"proxy world ({args.size}) in {world.root}: clip/, sam/, sam_val/, classification/, voc/")
        return
    if args.world == "throughput":
        sam_tar, web_tar = write_throughput_data(args.out, args.seed, args.sam_images, args.web_images)
        print(f"SA-1B-sized D_SAM: {sam_tar} ({args.sam_images} images); 512x384 D_CLIP: {web_tar}")
        return
    data = make_synthetic_data(args.out, seed=args.seed)
    print(f"D_CLIP: {len(data.clip_shards)} shards, {data.clip_pattern}")
    print(f"D_SAM:  {len(data.sam_shards)} tars, {data.sam_pattern}")
    print(f"SA-1B held-out split: {data.sam_train_manifest}, {data.sam_val_manifest}")


def _sa1b_manifest(args: argparse.Namespace) -> None:
    shards = expand_urls(args.inputs)
    ids = scan_image_ids(shards)
    if not ids:
        raise SystemExit(f"no SA-1B image (sa_<id>.jpg with its .json) found in {args.inputs}")
    train, val = split_subset(ids, args.fraction, args.val_fraction, args.seed)
    train_path = os.path.join(args.out_dir, "train.txt")
    val_path = os.path.join(args.out_dir, "val.txt")
    write_manifest(train_path, train)
    write_manifest(val_path, val)
    print(
        f"{len(ids)} images in {len(shards)} shards -> {len(train)} train ({train_path}), {len(val)} val ({val_path})"
    )


def _preview(args: argparse.Namespace) -> None:
    from samclip.data.clip_stream import ClipStream
    from samclip.data.preview import read_captions, save_clip_preview, save_sam_preview
    from samclip.data.sam_stream import SamStream

    common = dict(seed=args.seed, num_workers=0, resampled=True, steps_per_epoch=1)
    if args.stream == "sam":
        stream = SamStream(
            args.urls,
            global_batch_size=args.num_images,
            image_size=args.resolution or 1024,
            masks_per_image=args.masks_per_image,
            max_points=args.max_points,
            return_gt_masks=True,
            **common,
        )
        path = save_sam_preview(next(iter(stream)), args.out)
    else:
        resolution = args.resolution or 224
        stream = ClipStream(
            args.urls,
            resolutions=[resolution],
            base_batch_size=args.num_images,
            base_resolution=resolution,
            **common,
        )
        batch = next(iter(stream))
        captions = None if args.no_captions else read_captions(args.urls, batch.keys)
        path = save_clip_preview(batch, args.out, captions=captions)
    print(f"wrote {path}")


def _cache_teacher(args: argparse.Namespace) -> None:
    from samclip.train.cache_teacher import cache_teacher

    cache_teacher(args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="samclip-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser(
        "synth", help="small deterministic D_CLIP and D_SAM data in their real layouts"
    )
    synth.add_argument("--out", required=True, help="output directory (gets clip/ and sam/)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--world",
        choices=["random", "shapes", "throughput"],
        default="random",
        help="random: the smoke data; shapes: the proxy world (samclip.proxy.world) with held-out splits; "
        "throughput: SA-1B-sized images (1500x2250, 128 overlapping ragged masks) and 512x384 web JPEGs",
    )
    synth.add_argument("--sam-images", type=int, default=10, help="--world throughput only")
    synth.add_argument("--web-images", type=int, default=384, help="--world throughput only")
    synth.add_argument(
        "--size", choices=["test", "quick", "full"], default="quick", help="--world shapes only"
    )
    synth.set_defaults(func=_synth)

    manifest = commands.add_parser(
        "sa1b-manifest", help="deterministic subset of SA-1B with a held-out split"
    )
    manifest.add_argument("inputs", nargs="+", help="SA-1B tars or directories (brace patterns allowed)")
    manifest.add_argument("--out-dir", required=True, help="writes train.txt and val.txt here")
    manifest.add_argument(
        "--fraction", type=float, default=0.057, help="fraction of the images to use (paper: 5.7%%)"
    )
    manifest.add_argument("--val-fraction", type=float, default=0.01, help="fraction of the subset held out")
    manifest.add_argument("--seed", type=int, default=0)
    manifest.set_defaults(func=_sa1b_manifest)

    preview = commands.add_parser(
        "preview",
        help="a PNG of one batch as the trainer sees it (SAM: masks, boxes, points; CLIP: crops, captions)",
    )
    preview.add_argument("stream", choices=["sam", "clip"])
    preview.add_argument("urls", nargs="+", help="shards or directories (brace patterns allowed)")
    preview.add_argument("--out", required=True, help="PNG to write")
    preview.add_argument("--num-images", type=int, default=4)
    preview.add_argument("--resolution", type=int, default=None, help="SAM frame (1024) or CLIP crop (224)")
    preview.add_argument("--masks-per-image", type=int, default=32)
    preview.add_argument("--max-points", type=int, default=1)
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument(
        "--no-captions", action="store_true", help="clip: crops only (captions are read from the shards)"
    )
    preview.set_defaults(func=_preview)

    from samclip.data.cache_teacher_cli import add_cache_teacher_parser

    add_cache_teacher_parser(commands, _cache_teacher)

    argv, debug = pop_debug_flag(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    # cache-teacher's KEY=VALUE overrides may follow its options, where argparse no longer takes positionals.
    if args.command == "cache-teacher" and extra and not any(a.startswith("-") for a in extra):
        args.inputs += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    with user_errors(f"samclip-data {args.command}", debug=debug or None):
        args.func(args)


if __name__ == "__main__":
    main()
