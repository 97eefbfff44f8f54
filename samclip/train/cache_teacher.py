"""``samclip-data cache-teacher NAME``: compose the train config, build ``teacher.<NAME>``, cache its outputs.

The teacher is built from the config as training builds it (Hydra ``_target_``); the term that reads it says
what it reads and stores (:mod:`samclip.train.teacher_cache_plan`); the writer is
:class:`samclip.data.cache_writer.CacheWriter`. ``--model-name`` / ``--pretrained`` are overrides of
``teacher.<NAME>`` kept from the command's first form (``cache-teacher clip|sam``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from samclip.config_root import config_dir
from samclip.data.cache_inputs import cache_inputs
from samclip.data.cache_teacher_cli import recipe_clip_epochs, split_overrides
from samclip.data.cache_writer import CacheWriter, bytes_per_sample, manifest_ids, verify_cache
from samclip.data.shards import expand_urls
from samclip.data.teacher_cache import StaleCacheError
from samclip.models.config import get_model_config
from samclip.train import builder
from samclip.train.distributed import barrier, init_distributed, shutdown
from samclip.train.teacher_cache_plan import TeacherCachePlan, plan_teacher_cache


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """The train config with ``overrides``, as ``samclip-train`` composes it (a bad override: a ValueError)."""
    try:
        with initialize_config_dir(config_dir=str(config_dir("train.yaml")), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    except HydraException as error:
        raise ValueError(f"the train config with {list(overrides)}: {error}") from None


def apply_teacher_flags(cfg: DictConfig, name: str, model_name: str | None, pretrained: str | None) -> None:
    """``--model-name`` and ``--pretrained`` as ``teacher.<name>`` values (weights: its ``checkpoint`` key if it
    has one, as the SAM teacher does, else ``pretrained``)."""
    node = cfg.teacher[name]
    with open_dict(node):
        if model_name is not None:
            node.model_name = model_name
        if pretrained is not None:
            node["checkpoint" if "checkpoint" in node else "pretrained"] = pretrained


def stream_urls(cfg: DictConfig, stream: str) -> list[str]:
    """The shards of ``data.<stream>`` (a pattern, a list, or a weighted list of sources), flat."""
    urls = OmegaConf.select(cfg, f"data.{stream}.urls")
    if urls is None:
        raise ValueError(f"no URLS given and data.{stream}.urls is not set")
    values = OmegaConf.to_container(urls, resolve=True) if OmegaConf.is_config(urls) else urls
    if isinstance(values, str):
        return [values]
    return [u for source in values for u in ([source] if isinstance(source, str) else source)]


def teacher_side(teacher: torch.nn.Module, name: str) -> int:
    size = getattr(teacher, "image_size", None)
    if size is None:
        raise ValueError(
            f"teacher.{name} ({type(teacher).__name__}) has no image_size: caching D_CLIP crop views renders "
            "them at the teacher's input side"
        )
    return int(size)


def build_teacher(cfg: DictConfig, name: str) -> torch.nn.Module:
    try:
        return builder.build_teacher(cfg, name)
    except InstantiationException as error:
        if isinstance(error.__cause__, (ValueError, OSError)):  # the teacher's own check, naming its file
            raise error.__cause__ from None
        raise


def cache_teacher(args: argparse.Namespace) -> None:
    urls, overrides = split_overrides(args.inputs)
    if args.views is not None and args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    cfg = compose_train_config(overrides)
    plan = plan_teacher_cache(cfg, args.name)
    apply_teacher_flags(cfg, args.name, args.model_name, args.pretrained)
    stream = cfg.data.get(plan.stream) or {}
    manifest = args.manifest
    if not urls:
        urls = stream_urls(cfg, plan.stream)
        manifest = manifest or OmegaConf.select(cfg, f"data.{plan.stream}.manifest")
    expand_urls(urls)  # a missing shard fails before the teacher is built
    env = init_distributed(args.device)
    try:
        start = time.perf_counter()
        teacher = build_teacher(cfg, args.name).to(env.device)
        writer = CacheWriter(
            args.name,
            teacher,
            urls,
            args.out,
            identity=builder.configured_identity(cfg, cfg.teacher[args.name]),
            encode=plan.encoder(teacher),
            inputs=cache_inputs(
                plan.stream_kind,
                input_size=lambda: teacher_side(teacher, args.name),
                num_views=args.views or recipe_clip_epochs(),
                crop_scale=_crop_scale(args.crop_scale, stream),
                view_seed=args.view_seed,
                image_size=_frame(args.image_size, cfg, plan),
                keep_ids=manifest_ids(manifest),
            ),
            batch_size=args.batch_size,
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
        _report(args, plan, writer, records, time.perf_counter() - start)
        if args.verify:
            result = verify_cache(
                writer.encode, args.out, urls, args.verify,
                input_size=lambda: teacher_side(teacher, args.name), device=env.device,
            )  # fmt: skip
            print(
                f"verify: {result.checked} entries recomputed online, max deviation {result.max_deviation:.2e} "
                f"(relative to each output's largest value; tolerance {args.tolerance:g})"
            )
            if result.max_deviation > args.tolerance:
                raise StaleCacheError(
                    f"teacher cache {args.out}: verify found a deviation of {result.max_deviation:.3g} "
                    f"> tolerance {args.tolerance:g} (a corrupted or stale cache)"
                )
    finally:
        shutdown(env)


def _frame(flag: int | None, cfg: DictConfig, plan: TeacherCachePlan) -> int:
    """The D_SAM frame: ``--image-size``, else the student's (which the stream's resolution must equal)."""
    if flag is not None or plan.stream_kind != "prompted_images":
        return flag or 1024  # unused for crop views
    return get_model_config(cfg.model.name).image_size


def _crop_scale(flag: Sequence[float] | None, stream: Any) -> tuple[float, float]:
    scale = flag if flag is not None else stream.get("crop_scale", (0.9, 1.0))
    return float(scale[0]), float(scale[1])


def _report(
    args: argparse.Namespace, plan: TeacherCachePlan, writer: CacheWriter, records: list, seconds: float
) -> None:
    skipped = sum(sum(r.skipped.values()) for r in records)
    samples, per_sample = bytes_per_sample(args.out)
    print(
        f"{args.name} teacher cache {args.out} ({plan.stream_kind} of data.{plan.stream}, outputs "
        f"{', '.join(plan.term_kind.cache_outputs)}): {samples} samples, {per_sample:,.0f} bytes per sample "
        f"({len(writer.shards)} shards; this run wrote {len(records)} on rank 0, skipped {skipped} bad samples; "
        f"{seconds:.1f} s)"
    )
