"""Wise-FT (Wortsman et al.): evaluate ``(1 - α)·θ₀ + α·θ₁`` for a sweep of α.

θ₁ is the run's ``checkpoint``; θ₀ (``checkpoint_a``) is another final.pt of the same shape, or an official
SAM checkpoint (the paper's Figure 8: SAM at α=0), whose missing CLIP head is then θ₁'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from samclip.eval.report import write_results
from samclip.models import SamClipModel
from samclip.models.final_checkpoint import load_final_checkpoint
from samclip.models.sam_checkpoint import read_sam_checkpoint, split_sam_state_dict, validate_sam_state_dict
from samclip.serve.merged import MergedSamClip

Task = Callable[..., dict[str, Any]]


def interpolate_state_dicts(
    zero: Mapping[str, torch.Tensor], one: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * zero + alpha * one`` for float tensors; other tensors must agree and are copied."""
    if set(zero) != set(one):
        diff = sorted(set(zero) ^ set(one))
        raise ValueError(f"the two endpoints have different keys (e.g. {diff[:3]})")
    out = {}
    for key, value in one.items():
        other = zero[key]
        if other.shape != value.shape:
            raise ValueError(f"endpoint shapes differ at {key}: {tuple(other.shape)} vs {tuple(value.shape)}")
        if value.is_floating_point():
            # lerp is exact at both ends, so α=0 and α=1 reproduce the endpoints bit for bit.
            out[key] = torch.lerp(other.to(value.dtype), value, alpha)
        else:
            if not torch.equal(other, value):
                raise ValueError(f"non-float entry {key} differs between the endpoints")
            out[key] = value.clone()
    return out


def endpoint_state_dict(path: str | Path, like: SamClipModel) -> dict[str, torch.Tensor]:
    """θ₀ as a full student state dict, from a final.pt or an official SAM checkpoint."""
    path = Path(path)
    try:
        final = load_final_checkpoint(path)
    except ValueError:
        sam_state = read_sam_checkpoint(path)
        validate_sam_state_dict(sam_state, like.config, source=str(path))
        backbone, head = split_sam_state_dict(sam_state)
        state = {key: value.clone() for key, value in like.state_dict().items()}
        state.update({f"backbone.{key}": value for key, value in backbone.items()})
        state.update({f"sam_head.{key}": value for key, value in head.items()})
        return state
    if final.model_config != like.config:
        raise ValueError(f"{path} holds a {final.model_config} model; the other endpoint is {like.config}")
    return final.model_state


def evaluate_wiseft(
    model: MergedSamClip | None,
    run_dir: Path,
    *,
    checkpoint_a: str,
    alphas: Sequence[float],
    tasks: Mapping[str, Task],
) -> dict[str, Any]:
    """Each α gets its own ``run_dir/alpha_<α>/<task>/`` and one row of scalar metrics in ``points``."""
    if model is None:
        raise ValueError("wiseft needs checkpoint=FILE (the α=1 endpoint)")
    if not tasks:
        raise ValueError("wiseft needs at least one task under eval.tasks")
    one = {key: value.detach().cpu() for key, value in model.model.state_dict().items()}
    zero = endpoint_state_dict(checkpoint_a, model.model)
    point = copy.deepcopy(model)  # one copy reloaded per α; the text tower and its classifiers are shared
    points = []
    for alpha in alphas:
        point.model.load_state_dict(interpolate_state_dicts(zero, one, float(alpha)), strict=True)
        row: dict[str, Any] = {"alpha": float(alpha)}
        for name, task in tasks.items():
            task_dir = Path(run_dir) / f"alpha_{alpha:.2f}" / name
            results = task(model=point, run_dir=task_dir)
            write_results(task_dir, f"{name} (Wise-FT α={alpha})", results)
            row.update(
                {f"{name}/{key}": value for key, value in results.items() if isinstance(value, int | float)}
            )
        points.append(row)
    plot_sweep(points, Path(run_dir) / "wiseft.png")
    return {"checkpoint_a": str(checkpoint_a), "points": points}


def plot_sweep(points: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Each task's metrics against α (the paper's Figure 8): one panel per task, a line per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(key for row in points for key in row if key != "alpha"))
    tasks = list(dict.fromkeys(key.split("/", 1)[0] for key in metrics))
    if not tasks:
        return
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        # Counts (num_images, num_classes) are not metrics to plot against α.
        for key in (
            m for m in metrics if m.startswith(f"{task}/") and not m.split("/")[-1].startswith("num_")
        ):
            series = [(row["alpha"], row[key]) for row in points if isinstance(row.get(key), int | float)]
            if series:
                axis.plot(*zip(*series, strict=True), marker="o", label=key.split("/", 1)[1])
        axis.set_title(task)
        axis.set_xlabel("α  (0: checkpoint_a, 1: checkpoint)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle("Wise-FT weight interpolation")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
