"""The ``cache-teacher`` subcommand of ``samclip-data``: its arguments (the run is ``samclip.train.cache_teacher``).

    samclip-data cache-teacher NAME [URLS ...] --out DIR [KEY=VALUE ...]

NAME is a teacher of the train config (``teacher.<NAME>``), composed with the ``KEY=VALUE`` overrides as
``samclip-train`` takes them; URLS default to the shards of the stream its term reads.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import OmegaConf

from samclip.config_root import config_dir

DEFAULT_TOLERANCE = 0.02  # relative; bf16 rounds to 2**-8, so a larger deviation is not storage
# A Hydra override (key=value, +key=value, ++key=value, ~key): what a shard path or URL never starts like.
_OVERRIDE = re.compile(r"^((\+{1,2})?[A-Za-z_][\w.@/-]*=|~[A-Za-z_][\w.@/-]*(=|$))")


def recipe_clip_epochs(stage_dir: Path | None = None) -> int:
    """The most epochs one stage of the recipe reads D_CLIP (head_probe: 20): K, so no view repeats in a stage."""
    stage_dir = stage_dir or config_dir("train.yaml") / "stage"
    epochs = []
    for path in sorted(stage_dir.glob("*.yaml")):
        stage = OmegaConf.load(path)
        if stage.get("clip") is not None and stage.get("schedule_epochs") is not None:
            epochs.append(int(stage.get("stop_epoch") or stage.schedule_epochs))
    return max(epochs, default=1)


def split_overrides(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(data shards, Hydra overrides) of the positional arguments: an override is ``key=value`` (``~key``)."""
    urls, overrides = [], []
    for value in inputs:
        (overrides if _OVERRIDE.match(value) else urls).append(value)
    return urls, overrides


def add_cache_teacher_parser(commands: argparse._SubParsersAction, func: Callable) -> None:
    parser = commands.add_parser(
        "cache-teacher",
        help="run a frozen teacher of the train config once over the data its term reads and store its outputs",
        description="NAME is a teacher of the train config (teacher.<NAME>: clip, sam, dino, ...); KEY=VALUE "
        "overrides compose that config as samclip-train's do. Its term's stream decides what it reads: D_CLIP "
        "crop views (K per sample) or D_SAM frames. Run under torchrun to split the shards over ranks; a rerun resumes.",
    )
    parser.add_argument("name", help="the teacher, teacher.<NAME> of the train config")
    parser.add_argument(
        "inputs",
        nargs="*",
        help="the data shards (brace patterns allowed, local; default: data.<stream>.urls) and KEY=VALUE overrides",
    )
    parser.add_argument(
        "--out", required=True, help="cache directory (manifest.json, one sidecar tar per shard)"
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="sets teacher.<NAME>.model_name (clip: an open_clip name; sam: samclip_vit_b)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="sets the teacher's weights (teacher.<NAME>.pretrained, or .checkpoint for SAM): a tag or a file",
    )
    parser.add_argument(
        "--views", type=int, default=None, help="crop views per sample (default: the recipe's epochs)"
    )
    parser.add_argument(
        "--crop-scale", type=float, nargs=2, default=None,
        help="the stream's crop_scale (default: data.<stream>.crop_scale, else 0.9 1.0)",
    )  # fmt: skip
    parser.add_argument("--view-seed", type=int, default=0)
    parser.add_argument(
        "--image-size", type=int, default=None, help="the D_SAM frame (default: the model's, 1024 for ViT-B)"
    )
    parser.add_argument(
        "--manifest", default=None,
        help="D_SAM: only these SA-1B image ids (train.txt; default: data.<stream>.manifest when URLS are omitted)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16, help="teacher inputs per forward")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--verify", type=int, default=0, metavar="N", help="recompute N random entries online"
    )
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="--verify's relative limit"
    )
    parser.set_defaults(func=func)
