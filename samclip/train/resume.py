"""What a resume may change: the resolved config is compared with the one the checkpoint recorded.

A value that changes what trains (lr, schedule, loss weights, batch, data, model, teachers, seed) must
not differ silently: the differences are listed key by key and the resume is refused unless
``resume.allow_config_change=true``. Keys that only say where and how to log or checkpoint may change.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Top-level groups (and single trainer keys) whose values change training.
_TRAINING_GROUPS = ("model", "teacher", "data", "loss", "optim", "seed")
_TRAINER_KEYS = ("trainer.max_grad_norm", "trainer.precision")
# Inside those groups: how fast data is read, not what is read; how attention is computed (same math).
_IGNORED_LEAVES = ("num_workers", "prefetch_factor", "attention")
_OPTIONAL_LEAVES = (".cache",)
ALLOW_KEY = "resume.allow_config_change"


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()  # a key one of the two configs lacks


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (lists are leaves, compared whole)."""
    if not isinstance(values, Mapping):
        return {prefix: values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _relevant(key: str, stage: str) -> bool:
    if key.rsplit(".", 1)[-1] in _IGNORED_LEAVES:
        return False
    return (
        key.split(".", 1)[0] in _TRAINING_GROUPS
        or key in _TRAINER_KEYS
        or key == f"stage.{stage}"
        or key.startswith(f"stage.{stage}.")
    )


def training_changes(
    saved: Mapping[str, Any], current: Mapping[str, Any], stage: str
) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, current value) for every training-relevant key that differs."""
    old, new = flatten(saved), flatten(current)
    keys = sorted(key for key in set(old) | set(new) if _relevant(key, stage))
    changes = []
    for key in keys:
        a, b = old.get(key, ABSENT), new.get(key, ABSENT)
        if key.endswith(_OPTIONAL_LEAVES) and a in (ABSENT, None) and b in (ABSENT, None):
            continue  # a key added since, at its off value (teacher caches), changes nothing
        if a != b:
            changes.append((key, a, b))
    return changes


def check_resume_config(
    path: str | Path, saved: Mapping[str, Any] | None, current: Mapping[str, Any], stage: str, allow: bool
) -> list[tuple[str, Any, Any]]:
    """Refuse (``ValueError``) a resume whose config changes training, unless ``allow``; returns the changes."""
    if saved is None:
        return []
    changes = training_changes(saved, current, stage)
    if not changes or allow:
        return changes
    lines = "\n".join(f"  {key}: {a!r} in the checkpoint, {b!r} now" for key, a, b in changes)
    hint = ""
    if any(key.endswith(".urls") for key, _, _ in changes):
        hint = " (a changed shard list then continues from the same epoch and step with fresh shard cursors)"
    raise ValueError(
        f"resume from {path}: the config differs from the checkpoint's in {len(changes)} value(s) that change "
        f"training:\n{lines}\nRestore them, or set {ALLOW_KEY}=true to resume with the new values{hint}."
    )
