"""The proxy study's Markdown table and plots, from its ``results.json`` dictionary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

METRICS = ("zeroshot_top1", "box_miou", "point_miou", "semseg_miou_clip", "semseg_miou_composed")
HEADERS = ("zero-shot top-1", "box mIoU", "point mIoU", "semseg mIoU (CLIP head)", "semseg mIoU (composed)")


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def results_markdown(results: dict[str, Any], size: str, seed: int, timings: dict[str, float]) -> str:
    """The study's numbers as Markdown tables (percent; IoU against ground-truth masks)."""
    teachers = results["teachers"]
    rows = [
        ("chance", {"zeroshot_top1": results["chance_top1"]}),
        ("CLIP teacher", teachers["clip"]),
        ("SAM teacher", teachers["sam"]),
        *((f"stage {name}", metrics) for name, metrics in results["stages"].items()),
        ("**merged** (after res_adapt)", results["merged"]),
    ]
    lines = [
        f"# Proxy study (`--size {size} --seed {seed}`)",
        "",
        "All numbers in percent; mIoU against the ground-truth masks of held-out images.",
        "",
        "| model | " + " | ".join(HEADERS) + " |",
        "|---|" + "---|" * len(HEADERS),
    ]
    lines += [f"| {name} | " + " | ".join(_cell(m.get(k)) for k in METRICS) + " |" for name, m in rows]
    lines += ["", "λ ablation (multitask stage, each from the same head_probe final.pt):", ""]
    lines += ["| λ (loss.sam_weight) | zero-shot top-1 | box mIoU |", "|---|---|---|"]
    lines += [
        f"| {row['sam_weight']:g} | {_cell(row['zeroshot_top1'])} | {_cell(row['box_miou'])} |"
        for row in results["lambda_ablation"]
    ]
    lines += ["", "Wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    return "\n".join(lines)


def plot_results(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``stages.png`` (top-1 and box mIoU per stage vs the teachers) and ``lambda.png`` (the λ trade-off)."""
    stages = list(results["stages"])
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (
        (
            "zeroshot_top1",
            "zero-shot top-1 (%)",
            results["teachers"]["clip"]["zeroshot_top1"],
            "CLIP teacher",
        ),
        ("box_miou", "box-prompted mIoU (%)", results["teachers"]["sam"]["box_miou"], "SAM teacher"),
    )
    for axis, (key, label, teacher, teacher_name) in zip(axes, panels, strict=True):
        axis.plot(stages, [results["stages"][s][key] for s in stages], "o-", label="merged student")
        axis.axhline(teacher, color="tab:red", linestyle="--", label=teacher_name)
        if key == "zeroshot_top1":
            axis.axhline(results["chance_top1"], color="gray", linestyle=":", label="chance")
        axis.set_ylabel(label)
        axis.set_ylim(0, 100)
        axis.set_title(f"{label.split(' (')[0]} per stage")
        axis.legend(loc="lower right")
    figure.suptitle("Proxy study: the merged model against its two teachers")
    figure.tight_layout()
    stages_path = out / "stages.png"
    figure.savefig(stages_path, dpi=120)
    plt.close(figure)

    rows = results["lambda_ablation"]
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    top1 = [r["zeroshot_top1"] for r in rows]
    box = [r["box_miou"] for r in rows]
    axis.plot(top1, box, "o-", label="multitask stage, λ = loss.sam_weight")
    for row, x, y in zip(rows, top1, box, strict=True):
        axis.annotate(f"λ={row['sam_weight']:g}", (x, y), textcoords="offset points", xytext=(6, 4))
    axis.axhline(results["teachers"]["sam"]["box_miou"], color="tab:red", linestyle="--", label="SAM teacher")
    axis.axvline(results["teachers"]["clip"]["zeroshot_top1"], color="tab:green", linestyle="--",
                 label="CLIP teacher")  # fmt: skip
    axis.set_xlabel("zero-shot top-1 (%)")
    axis.set_ylabel("box-prompted mIoU (%)")
    axis.set_title("λ trade-off: CLIP learning vs SAM forgetting")
    axis.legend(loc="lower left")
    figure.tight_layout()
    lambda_path = out / "lambda.png"
    figure.savefig(lambda_path, dpi=120)
    plt.close(figure)
    return stages_path, lambda_path
