"""Parameter groups by name pattern, AdamW, and the warmup + cosine schedule.

A stage names what it trains and how fast with fnmatch patterns over parameter names
(``clip_head.*``, ``backbone.*``); everything else is frozen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import torch
from torch import nn

# Norm weights and biases are 1-d; position embeddings (absolute and the relative tables) are not,
# so they are excluded by name. Our choice, as in timm and open_clip.
DEFAULT_NO_WEIGHT_DECAY = ("*pos_embed*", "*rel_pos*")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def set_trainable(model: nn.Module, trainable: Sequence[str]) -> list[str]:
    """``requires_grad`` on parameters matching ``trainable``, off elsewhere; returns the trainable names."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(_matches(name, trainable))
        if param.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"trainable patterns {list(trainable)} match no parameter of the model")
    return names


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    lr_multipliers: Mapping[str, float] | None = None,
    no_weight_decay: Sequence[str] = DEFAULT_NO_WEIGHT_DECAY,
) -> list[dict]:
    """AdamW groups over the trainable parameters, one per (lr multiplier, decay) pair.

    ``lr_multipliers`` maps a module prefix or pattern (``backbone`` or ``backbone.*``) to a factor;
    the first matching entry wins, unmatched parameters get 1. Groups carry a ``name`` for logging.
    """
    rules = [
        (key, key if any(c in key for c in "*?[") else f"{key}.*", float(mult))
        for key, mult in (lr_multipliers or {}).items()
    ]
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        rule_name, mult = next(
            ((key, m) for key, pattern, m in rules if fnmatchcase(name, pattern)), ("base", 1.0)
        )
        decay = param.ndim > 1 and not _matches(name, no_weight_decay)
        group = groups.setdefault(
            (rule_name, decay),
            {
                "name": rule_name if decay else f"{rule_name}/no_decay",
                "params": [],
                "lr": lr * mult,
                "lr_multiplier": mult,
                "weight_decay": weight_decay if decay else 0.0,
            },
        )
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    lr_multipliers: Mapping[str, float] | None = None,
    no_weight_decay: Sequence[str] = DEFAULT_NO_WEIGHT_DECAY,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; ``fused=None`` is fused when they all live on a GPU.

    Fused AdamW is one kernel per group, and skips a step on the device when told ``found_inf``
    (the loop's non-finite steps), so skipping needs no host synchronisation.
    """
    groups = build_param_groups(model, lr, weight_decay, lr_multipliers, no_weight_decay)
    if fused is None:
        fused = all(p.is_cuda for group in groups for p in group["params"]) or None
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


class WarmupCosine:
    """Linear warmup to 1 over ``warmup_steps``, then cosine to ``min_ratio`` at ``total_steps``.

    A multiplier on each group's lr (a ``LambdaLR`` lambda); a callable object so its state pickles.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        if total_steps <= 0:
            raise ValueError(f"the schedule needs a positive length, got total_steps={total_steps}")
        self.warmup_steps = min(warmup_steps, total_steps)
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))
