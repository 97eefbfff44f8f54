"""The ``cache-teacher`` subcommand of ``samclip-data`` (argument parsing, teacher building, reporting)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

from samclip.config_root import config_dir
from samclip.data.teacher_cache import StaleCacheError, teacher_identity

DEFAULT_TOLERANCE = 0.02  # relative; bf16 rounds to 2**-8, so a larger deviation is not storage


def recipe_clip_epochs(stage_dir: Path | None = None) -> int:
    """The most epochs one stage of the recipe reads D_CLIP (head_probe: 20): K, so no view repeats in a stage."""
    stage_dir = stage_dir or config_dir("train.yaml") / "stage"
    epochs = []
    for path in sorted(stage_dir.glob("*.yaml")):
        stage = OmegaConf.load(path)
        if stage.get("clip") is not None and stage.get("schedule_epochs") is not None:
            epochs.append(int(stage.get("stop_epoch") or stage.schedule_epochs))
    return max(epochs, default=1)


def add_cache_teacher_parser(commands: argparse._SubParsersAction, func: Callable) -> None:
    parser = commands.add_parser(
        "cache-teacher",
        help="run a frozen teacher once over D_CLIP (K views per sample) or D_SAM and store its outputs",
        description="Run under torchrun to split the shards over ranks; a rerun resumes.",
    )
    parser.add_argument("kind", choices=["clip", "sam"])
    parser.add_argument("urls", nargs="+", help="the data shards (brace patterns allowed), local")
    parser.add_argument(
        "--out", required=True, help="cache directory (manifest.json, one sidecar tar per shard)"
    )
    parser.add_argument(
        "--model-name", default=None, help="clip: open_clip name (ViT-L-14); sam: samclip_vit_b"
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="clip: open_clip tag or checkpoint file; sam: the SAM checkpoint (omit: random weights, benchmarks only)",
    )
    parser.add_argument(
        "--views", type=int, default=None, help="clip: views per sample (default: the recipe's epochs)"
    )
    parser.add_argument(
        "--crop-scale", type=float, nargs=2, default=(0.9, 1.0), help="clip: the stream's crop_scale"
    )
    parser.add_argument("--view-seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=1024, help="sam: the D_SAM frame")
    parser.add_argument("--manifest", default=None, help="sam: only these SA-1B image ids (train.txt)")
    parser.add_argument("--batch-size", type=int, default=16, help="teacher inputs per forward")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--verify", type=int, default=0, metavar="N", help="recompute N random entries online"
    )
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="--verify's relative limit"
    )
    parser.set_defaults(func=func)


def build_cache_teacher(kind: str, model_name: str | None, pretrained: str | None) -> torch.nn.Module:
    from samclip.models.teachers import ClipTeacher, SamTeacher

    if kind == "clip":
        return ClipTeacher(model_name or "ViT-L-14", pretrained)
    return SamTeacher(pretrained, model_name=model_name or "samclip_vit_b")


def cache_teacher(args: argparse.Namespace) -> None:
    from samclip.data.cache_writer import CacheWriter, bytes_per_sample, manifest_ids, verify_cache
    from samclip.data.shards import expand_urls
    from samclip.train.distributed import barrier, init_distributed, shutdown

    if args.views is not None and args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    expand_urls(args.urls)  # a missing shard fails before the teacher is built
    env = init_distributed(args.device)
    try:
        start = time.perf_counter()
        teacher = build_cache_teacher(args.kind, args.model_name, args.pretrained).to(env.device)
        model_name = teacher.model_name if args.kind == "clip" else (args.model_name or "samclip_vit_b")
        writer = CacheWriter(
            args.kind,
            teacher,
            args.urls,
            args.out,
            identity=teacher_identity(model_name, args.pretrained),
            num_views=args.views or recipe_clip_epochs(),
            crop_scale=args.crop_scale,
            view_seed=args.view_seed,
            image_size=args.image_size,
            batch_size=args.batch_size,
            keep_ids=manifest_ids(args.manifest),
            device=env.device,
            autocast=torch.bfloat16 if env.device.type == "cuda" else None,
            rank=env.rank,
            world_size=env.world_size,
        )
        if env.is_main:
            writer.prepare_manifest()
        barrier(env)
        records = writer.run()
        barrier(env)
        if not env.is_main:
            return
        skipped = sum(sum(r.skipped.values()) for r in records)
        samples, per_sample = bytes_per_sample(args.out)
        print(
            f"{args.kind} teacher cache {args.out}: {samples} samples, {per_sample:,.0f} bytes per sample "
            f"({len(writer.shards)} shards; this run wrote {len(records)} on rank 0, skipped {skipped} bad samples; "
            f"{time.perf_counter() - start:.1f} s)"
        )
        if args.verify:
            result = verify_cache(args.kind, teacher, args.out, args.urls, args.verify, device=env.device)
            print(
                f"verify: {result.checked} entries recomputed online, max deviation {result.max_deviation:.2e} "
                f"(relative to the embedding's largest value; tolerance {args.tolerance:g})"
            )
            if result.max_deviation > args.tolerance:
                raise StaleCacheError(
                    f"teacher cache {args.out}: verify found a deviation of {result.max_deviation:.3g} "
                    f"> tolerance {args.tolerance:g} (a corrupted or stale cache)"
                )
    finally:
        shutdown(env)
