"""Checks on the run's values that must fail before any stage trains, each naming its key.

A value that would silently train the wrong thing (a negative clipping norm flips gradients, a negative
loss weight ascends, ``max_steps=0`` marks a stage done at step 0) is refused, and so is a value of the
wrong type (``trainer.max_steps=abc``), instead of surfacing as a bare ``int()`` error days later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf


def require_number(
    key: str,
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """``ValueError`` naming ``key`` unless ``value`` is a finite number (an int if ``integer``) in range."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        raise ValueError(f"{key} must be {kind}{' or null' if optional else ''}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value!r}")
    if above is not None and value <= above:
        raise ValueError(f"{key} must be > {above}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{key} must be <= {maximum}, got {value!r}")


def check_run_values(cfg: DictConfig, streams: Iterable[str]) -> None:
    """The trainer, loss, optimizer and data values of the whole run (stages check their own)."""
    trainer = cfg.trainer
    require_number("trainer.max_steps", trainer.max_steps, minimum=1, integer=True, optional=True)
    require_number("trainer.max_grad_norm", trainer.max_grad_norm, minimum=0, optional=True)
    require_number(
        "trainer.max_consecutive_nonfinite", trainer.max_consecutive_nonfinite, minimum=1, integer=True
    )
    require_number("trainer.dist_timeout_s", trainer.dist_timeout_s, above=0)
    require_number("trainer.peak_tflops", trainer.get("peak_tflops"), above=0, optional=True)
    for key, value in _leaves(cfg.loss, "loss"):
        if key.endswith("_weight"):
            require_number(key, value, minimum=0)
    require_number("optim.weight_decay", cfg.optim.weight_decay, minimum=0)
    require_number("optim.eps", cfg.optim.eps, above=0)
    for index, beta in enumerate(cfg.optim.betas):
        require_number(f"optim.betas[{index}]", beta, minimum=0, maximum=0.999999)
    require_number("checkpoint.every_steps", cfg.checkpoint.every_steps, minimum=0, integer=True)
    require_number("checkpoint.keep_last", cfg.checkpoint.keep_last, minimum=1, integer=True)
    require_number("logger.log_every", cfg.logger.log_every, minimum=1, integer=True)
    for name in streams:
        data = cfg.data[name]
        # Shard streams name their shards; the instance stream its annotations json (checked when built).
        source = "urls" if "urls" in data or "annotations" not in data else "annotations"
        if OmegaConf.is_missing(data, source) or not data.get(source):
            raise ValueError(
                f"data.{name}.{source} is not set, but a stage of this run reads the {name} stream"
            )
        require_number(
            f"data.{name}.max_skip_fraction",
            data.get("max_skip_fraction"),
            minimum=0,
            maximum=1,
            optional=True,
        )
        require_number(
            f"data.{name}.num_workers", data.get("num_workers"), minimum=0, integer=True, optional=True
        )
        require_number(
            f"data.{name}.num_samples", data.get("num_samples"), minimum=1, integer=True, optional=True
        )


def _leaves(node: DictConfig, prefix: str) -> list[tuple[str, Any]]:
    out = []
    for key in node:
        value = node[key]
        if isinstance(value, DictConfig):
            out += _leaves(value, f"{prefix}.{key}")
        else:
            out.append((f"{prefix}.{key}", value))
    return out
