"""The proxy study's Markdown tables and plots, from its ``results.json`` dictionary.

Every student number is a mean over the study's seeds with its standard error (``± SE``; one seed
shows no spread and prints none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

METRICS = ("zeroshot_top1", "box_miou", "point_miou", "semseg_miou_clip", "semseg_miou_composed")
HEADERS = ("zero-shot top-1", "box mIoU", "point mIoU", "semseg mIoU (CLIP head)", "semseg mIoU (composed)")
CONTROL = "control_no_clip"  # samclip.proxy.study.CONTROL (the study imports this module, not back)
STUDENT_ROWS = (
    ("after head_probe", "head_probe"),
    ("after multitask (λ = 10)", "multitask"),
    ("**merged** (after res_adapt)", "res_adapt"),
    ("control: multitask without L_clip", f"{CONTROL}/multitask"),
    ("**control merged** (then res_adapt)", CONTROL),
)


def _cell(value: dict[str, Any] | float | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):
        return f"{value['mean']:.1f}" + (f" ± {value['se']:.1f}" if len(value["values"]) > 1 else "")
    return f"{value:.1f}"


def _mean(row: dict[str, Any], key: str) -> float:
    return row[key]["mean"]


def results_markdown(results: dict[str, Any], timings: dict[str, float]) -> str:
    """The study's numbers as Markdown tables (percent; IoU against ground-truth masks)."""
    teachers, rows, seeds = results["teachers"], results["rows"], results["seeds"]
    fixed = [
        ("chance", {"zeroshot_top1": results["chance_top1"]}),
        ("one class for every image (the majority)", {"zeroshot_top1": results.get("majority_top1")}),
        ("box as its own mask (no image)", {"box_miou": results["baselines"]["box_as_mask_miou"]}),
        ("CLIP teacher", teachers["clip"]),
        ("SAM teacher", teachers["sam"]),
    ]
    lines = [
        f"# Proxy study (`--size {results['size']}`, seeds {', '.join(map(str, seeds))})",
        "",
        "All numbers in percent; mIoU against the ground-truth masks of held-out images. Student rows: mean ±"
        " standard error over the seeds (world and teachers fixed, built from the first seed).",
        "",
        "| model | " + " | ".join(HEADERS) + " |",
        "|---|" + "---|" * len(HEADERS),
    ]
    lines += [f"| {name} | " + " | ".join(_cell(m.get(k)) for k in METRICS) + " |" for name, m in fixed]
    lines += [
        f"| {name} | " + " | ".join(_cell(rows[key].get(k)) for k in METRICS) + " |"
        for name, key in STUDENT_ROWS
        if key in rows
    ]
    if results.get("sam_teacher_curve"):
        points = ", ".join(
            f"{p['step']}: {p['box_miou']:.1f} / {p['point_miou']:.1f}" for p in results["sam_teacher_curve"]
        )
        lines += [
            "",
            f"SAM teacher's held-out box / point mIoU during its training (step: box / point): {points}.",
        ]
    lines += ["", "λ ablation (multitask stage, each from the same head_probe final.pt):", ""]
    lines += ["| λ (loss.sam_weight) | zero-shot top-1 | box mIoU | point mIoU |", "|---|---|---|---|"]
    for weight in results["sam_weights"]:
        row = rows[f"lambda_{weight:g}"]
        lines.append(
            f"| {weight:g} | {_cell(row['zeroshot_top1'])} | {_cell(row['box_miou'])} | {_cell(row['point_miou'])} |"
        )
    lines += ["", "Wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    return "\n".join(lines)


def _errorbar(axis: Any, xs: list[Any], rows: list[dict[str, Any]], key: str, **style: Any) -> None:
    axis.errorbar(xs, [r[key]["mean"] for r in rows], yerr=[r[key]["se"] for r in rows], capsize=4, **style)


def plot_results(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``stages.png`` (zero-shot and box mIoU per stage, recipe vs control, against the teachers and the
    baselines) and ``lambda.png`` (the λ trade-off with error bars)."""
    rows, teachers = results["rows"], results["teachers"]
    stages = ["head_probe", "multitask", "res_adapt"]
    control = [rows["head_probe"], rows[f"{CONTROL}/multitask"], rows[CONTROL]]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        ("zeroshot_top1", "zero-shot top-1 (%)", teachers["clip"]["zeroshot_top1"], "CLIP teacher"),
        ("box_miou", "box-prompted mIoU (%)", teachers["sam"]["box_miou"], "SAM teacher"),
    )
    for axis, (key, label, teacher, teacher_name) in zip(axes, panels, strict=True):
        _errorbar(axis, stages, [rows[s] for s in stages], key, fmt="o-", label="recipe (λ = 10)")
        _errorbar(axis, stages, control, key, fmt="s--", label="control: stage 2 without L_clip")
        axis.axhline(teacher, color="tab:red", linestyle="--", label=teacher_name)
        if key == "zeroshot_top1":
            axis.axhline(results["chance_top1"], color="gray", linestyle=":", label="chance")
            if results.get("majority_top1") is not None:
                axis.axhline(results["majority_top1"], color="black", linestyle=":", label="majority class")
        else:
            axis.axhline(results["baselines"]["box_as_mask_miou"], color="gray", linestyle=":",
                         label="box as its own mask")  # fmt: skip
        axis.set_ylabel(label)
        axis.set_ylim(0, 100)
        axis.set_title(f"{label.split(' (')[0]} after each stage")
        axis.legend(loc="lower right", fontsize=8)
    seeds = len(results["seeds"])
    figure.suptitle(f"Proxy study ({results['size']}): the merged model against its teachers, "
                    f"mean ± SE over {seeds} seed{'s' * (seeds > 1)}")  # fmt: skip
    figure.tight_layout()
    stages_path = out / "stages.png"
    figure.savefig(stages_path, dpi=120)
    plt.close(figure)

    lambda_path = out / "lambda.png"
    plot_lambda(results, lambda_path)
    return stages_path, lambda_path


def _padded_limits(values: list[float], pad: float = 2.0) -> tuple[float, float]:
    return max(0.0, min(values) - pad), min(100.0, max(values) + pad)


def plot_lambda(results: dict[str, Any], path: Path) -> Path:
    """``lambda.png``: the λ sweep (the multitask stage with ``loss.sam_weight`` = λ, each from the same head
    probe) with error bars: zero-shot and box mIoU per λ, and the two against each other. Axes are zoomed
    to the data, so a trade-off of a few points is visible; the teachers are dashed."""
    rows, teachers = results["rows"], results["teachers"]
    weights = results["sam_weights"]
    ablation = [rows[f"lambda_{w:g}"] for w in weights]
    labels = [f"{w:g}" for w in weights]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    panels = (
        (
            "zeroshot_top1",
            "zero-shot top-1 (%)",
            teachers["clip"]["zeroshot_top1"],
            "CLIP teacher",
            "tab:green",
        ),
        ("box_miou", "box-prompted mIoU (%)", teachers["sam"]["box_miou"], "SAM teacher", "tab:red"),
    )
    for axis, (key, label, teacher, teacher_name, colour) in zip(axes[:2], panels, strict=False):
        _errorbar(axis, labels, ablation, key, fmt="o-", label="after multitask")
        axis.axhline(teacher, color=colour, linestyle="--", label=teacher_name)
        values = [r[key]["mean"] + sign * r[key]["se"] for r in ablation for sign in (-1, 1)]
        axis.set_ylim(*_padded_limits([*values, teacher]))
        axis.set_xlabel("λ (loss.sam_weight)")
        axis.set_ylabel(label)
        axis.set_title(f"{label.split(' (')[0]} vs λ")
        axis.legend(loc="best", fontsize=8)
    axis = axes[2]
    xs, ys = [_mean(r, "zeroshot_top1") for r in ablation], [_mean(r, "box_miou") for r in ablation]
    axis.errorbar(
        xs, ys, xerr=[r["zeroshot_top1"]["se"] for r in ablation], yerr=[r["box_miou"]["se"] for r in ablation],
        fmt="o-", capsize=4, label="multitask stage, λ = loss.sam_weight",
    )  # fmt: skip
    for weight, x, y in zip(weights, xs, ys, strict=True):
        axis.annotate(f"λ={weight:g}", (x, y), textcoords="offset points", xytext=(6, 4))
    axis.axhline(teachers["sam"]["box_miou"], color="tab:red", linestyle="--", label="SAM teacher")
    axis.set_xlim(*_padded_limits(xs, pad=5.0))
    axis.set_ylim(*_padded_limits([*ys, teachers["sam"]["box_miou"]]))
    axis.set_xlabel("zero-shot top-1 (%)")
    axis.set_ylabel("box-prompted mIoU (%)")
    axis.set_title("the trade-off (up and right is better)")
    axis.legend(loc="lower left", fontsize=8)
    seeds = len(results["seeds"])
    figure.suptitle(f"Proxy study ({results['size']}): the λ sweep, CLIP learning vs SAM forgetting, "
                    f"mean ± SE over {seeds} seed{'s' * (seeds > 1)}")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


CURVE_METRICS = (
    ("zeroshot_top1", "zero-shot top-1 (%)", "clip"),
    ("box_miou", "box-prompted mIoU (%)", "sam"),
)


def stage_curve(stage_dirs: list[Path], metric: str) -> tuple[list[float], list[float], list[float]]:
    """``val/<metric>`` over the stages' ``metrics.jsonl`` in order, steps counted on from stage to stage;
    also the step where each stage ends (for the plot's dividers)."""
    from samclip.train.tracking import read_metrics

    steps, values, ends, offset = [], [], [], 0
    for directory in stage_dirs:
        if not (directory / "metrics.jsonl").is_file():  # a run moved or not kept: draw what there is
            break
        lines = read_metrics(directory / "metrics.jsonl")
        for line in lines:
            if line.get(f"val/{metric}") is not None:
                steps.append(offset + line["step"])
                values.append(float(line[f"val/{metric}"]))
        offset += max((line["step"] for line in lines), default=0)
        ends.append(offset)
    return steps, values, ends


def plot_curves(results: dict[str, Any], out: Path, runs: dict[str, dict[int, list[Path]]]) -> Path | None:
    """``curves.png``: held-out zero-shot and box mIoU during training (trainer validation), one line per run
    kind (e.g. recipe, control) with its mean ± SE band over seeds, stage ends dotted, teachers dashed.

    ``runs``: {label: {seed: [stage directory, ...]}}. None when no run logged validation."""
    from samclip.proxy.study import mean_se  # the study imports this module lazily; this is the way back

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    drawn = False
    for axis, (metric, label, teacher) in zip(axes, CURVE_METRICS, strict=True):
        for run_label, by_seed in runs.items():
            curves = [stage_curve(dirs, metric) for dirs in by_seed.values()]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            length = min(len(c[0]) for c in curves)
            steps = curves[0][0][:length]
            table = [c[1][:length] for c in curves]
            mean = [sum(column) / len(column) for column in zip(*table, strict=True)]
            spread = [mean_se(list(column))["se"] for column in zip(*table, strict=True)]
            axis.plot(
                steps, mean, marker=".", label=f"{run_label} ({len(curves)} seed{'s' * (len(curves) > 1)})"
            )
            axis.fill_between(steps, [m - s for m, s in zip(mean, spread, strict=True)],
                              [m + s for m, s in zip(mean, spread, strict=True)], alpha=0.2)  # fmt: skip
            for end in curves[0][2][:-1]:
                axis.axvline(end, color="gray", linestyle=":", linewidth=0.8)
            drawn = True
        teacher_value = results["teachers"][teacher].get(metric)
        if teacher_value is not None:
            axis.axhline(teacher_value, color="tab:red", linestyle="--", label=f"{teacher.upper()} teacher")
        axis.set_xlabel("training step (head_probe | multitask | res_adapt)")
        axis.set_ylabel(label)
        axis.set_ylim(0, 100)
        axis.set_title(f"held-out {label.split(' (')[0]} during training")
        axis.legend(loc="lower right", fontsize=8)
    if not drawn:
        plt.close(figure)
        return None
    figure.suptitle(f"Proxy study ({results['size']}): trainer validation on the held-out world, mean ± SE")
    figure.tight_layout()
    path = out / "curves.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
