"""Metrics of a stage: ``metrics.jsonl`` (one line per log step), wandb when configured, a progress line.

Only rank 0 writes; other ranks get a tracker that does nothing. Every value logged is already
global (all-reduced) when it reaches here.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from samclip.train.flops import achieved

log = logging.getLogger(__name__)

# Keys of a training line that measure speed, so differ between two runs of the same training.
TIMING_KEYS = ("s_per_step", "tflops_per_s", "mfu")


def is_timing_key(key: str) -> bool:
    return key.startswith("images_per_s/") or key in TIMING_KEYS


class WandbLogger:
    """wandb run of one stage. ``mode="auto"`` is online when wandb has credentials (``WANDB_API_KEY`` or a
    ``wandb login`` entry in the netrc file) and offline otherwise (``wandb sync`` later).

    The run id is kept in ``<stage_dir>/wandb_run_id`` so that a resumed stage continues the same wandb run;
    the stages of a run share a ``group`` (the run name).
    """

    ID_FILE = "wandb_run_id"

    def __init__(
        self,
        project: str,
        name: str,
        directory: str | Path,
        config: dict[str, Any] | None = None,
        entity: str | None = None,
        mode: str = "auto",
        group: str | None = None,
    ) -> None:
        import wandb

        if mode == "auto":
            mode = "online" if has_wandb_credentials() else "offline"
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        id_file = directory / self.ID_FILE
        kwargs: dict[str, Any] = dict(
            project=project, name=name, entity=entity, group=group, dir=str(directory), config=config
        )
        if id_file.is_file():  # a resumed stage: the same wandb run
            kwargs.update(id=id_file.read_text().strip(), resume="allow")
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as error:  # no network: keep the run, sync it later with `wandb sync`
            log.warning("wandb %s init failed (%s); logging offline", mode, error)
            self.run = wandb.init(mode="offline", **kwargs)
        id_file.write_text(f"{self.run.id}\n")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def has_wandb_credentials() -> bool:
    """``WANDB_API_KEY``, or a netrc entry for wandb's host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


class Tracker:
    """Decides when to log (every ``log_every`` steps and at the stage's last step) and writes the line."""

    def __init__(
        self,
        stage_dir: str | Path,
        stage: str,
        *,
        enabled: bool,
        log_every: int,
        last_step: int,
        start_step: int = 0,
        wandb: WandbLogger | None = None,
        progress: bool = True,
        peak_tflops: float | None = None,
    ) -> None:
        """``peak_tflops``: the device's bf16 peak, for the logged MFU (none logged without it)."""
        if log_every < 1:
            raise ValueError(f"logger.log_every must be >= 1, got {log_every}")
        self.stage = stage
        self.enabled = enabled
        self.log_every = log_every
        self.last_step = last_step
        self.path = Path(stage_dir) / "metrics.jsonl"
        self.wandb = wandb if enabled else None
        self.images: dict[str, int] = {}
        self.peak_tflops = peak_tflops
        self.window_steps = 0
        self.window_start = time.perf_counter()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _truncate_after(self.path, start_step)
        self.bar = (
            tqdm(total=last_step, initial=start_step, desc=stage, dynamic_ncols=True)
            if enabled and progress and sys.stderr.isatty()
            else None
        )

    def count_images(self, **images: int) -> None:
        """Images since the last count, by stream name (throughput is logged for every stream ever counted)."""
        for name, count in images.items():
            self.images[name] = self.images.get(name, 0) + count

    def step_done(self) -> None:
        """One more optimizer step in the window (for s/step) and on the progress bar."""
        self.window_steps += 1
        if self.bar is not None:
            self.bar.update(1)

    def due(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.last_step

    def log(self, step: int, metrics: dict[str, Any], flops: float | None = None) -> None:
        """Append one JSON line with throughput since the previous log step (rank 0 only).

        ``flops``: this rank's model FLOPs since the previous log step, for ``tflops_per_s`` and ``mfu``.
        """
        steps, self.window_steps = self.window_steps, 0
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        line = {
            "step": step,
            "stage": self.stage,
            **metrics,
            **{f"images_per_s/{name}": count / elapsed for name, count in self.images.items()},
            **({"s_per_step": elapsed / steps} if steps else {}),
            **(achieved(flops, elapsed, self.peak_tflops) if flops else {}),
        }
        self.images = dict.fromkeys(self.images, 0)
        self.window_start = time.perf_counter()
        with self.path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        if self.wandb is not None:
            self.wandb.log(
                {f"{self.stage}/{k}": v for k, v in line.items() if k not in ("step", "stage")}, step
            )
        if self.bar is not None:
            postfix = {"loss": f"{line.get('loss', float('nan')):.4f}"}
            if "mfu" in line:
                postfix["mfu"] = f"{100 * line['mfu']:.1f}%"
            self.bar.set_postfix(postfix, refresh=False)
        else:
            rates = [f"{line[f'images_per_s/{name}']:.3g} {name} img/s" for name in self.images]
            if "s_per_step" in line:
                rates.append(f"{line['s_per_step']:.3g} s/step")
            if "tflops_per_s" in line:
                rates.append(f"{line['tflops_per_s']:.3g} TFLOP/s")
            if "mfu" in line:
                rates.append(f"MFU {100 * line['mfu']:.1f}%")
            log.info(
                "%s step %d/%d loss %.4g  %s",
                self.stage,
                step,
                self.last_step,
                line.get("loss", float("nan")),
                "  ".join(rates),
            )

    def log_validation(self, step: int, metrics: dict[str, Any], seconds: float) -> None:
        """Append one ``val/...`` line; its ``seconds`` are kept out of the training throughput."""
        self.window_start += seconds
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, "stage": self.stage, **metrics}) + "\n")
        if self.wandb is not None:
            self.wandb.log({f"{self.stage}/{k}": v for k, v in metrics.items()}, step)
        log.info(
            "%s step %d validation: %s (%.1f s)",
            self.stage,
            step,
            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
            seconds,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.close()
        if self.enabled and self.path.is_file():
            plot_curves(read_metrics(self.path), self.path.with_name("curves.png"), title=self.stage)


def _truncate_after(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint we resume from (they will be logged again).

    A torn line (a kill or a full disk mid-write) is dropped too, with a warning: it must never stop a run.
    """
    if not path.is_file():
        return
    kept = [json.dumps(line) for line in read_metrics(path) if line["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl``; unparseable ones (a torn last write) are skipped with a warning."""
    metrics, torn = [], []
    for number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("step"), int):
            metrics.append(parsed)
        else:
            torn.append(number)
    if torn:
        log.warning("%s: dropped %d torn or unparseable line(s) (line %s)", path, len(torn), torn)
    return metrics


CURVES = (("loss", "total loss"), ("loss_clip", "L_clip"), ("loss_sam", "L_sam"), ("grad_norm", "grad norm"))
# Families drawn as one panel each, a line per key: learning rates per group, throughput per stream.
CURVE_FAMILIES = (("lr/", "learning rate"), ("images_per_s/", "images / s"))


def _panels(metrics: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(title, keys) per panel: the losses and grad norm, the families, then each ``val/`` metric."""
    logged = list(dict.fromkeys(key for m in metrics for key, value in m.items() if value is not None))
    panels = [(label, [key]) for key, label in CURVES if key in logged]
    for prefix, label in CURVE_FAMILIES:
        keys = [key for key in logged if key.startswith(prefix)]
        if keys and any(m.get(k) for m in metrics for k in keys):
            panels.append((label, keys))
    panels += [(key, [key]) for key in logged if key.startswith("val/")]
    return panels


def plot_curves(metrics: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """One panel per logged curve (losses, grad norm, learning rates, throughput, validation) against the step."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    panels = _panels(metrics)
    if not panels:
        return
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.9 * rows), squeeze=False)
    for axis, (label, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), int | float)]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            name = key.split("/", 1)[1] if len(keys) > 1 else None
            axis.plot(steps, values, marker="." if len(points) < 50 else None, label=name)
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if len(keys) > 1:
            axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
