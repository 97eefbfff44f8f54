"""The three-teacher study's Markdown table and bar chart, from its ``three_teachers.json`` dictionary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from samclip.proxy.report import _cell

METRICS = ("zeroshot_top1", "box_miou", "point_miou", "knn_miou_tokens", "knn_miou_adaptor")
HEADERS = (
    "zero-shot top-1",
    "box mIoU",
    "point mIoU",
    "k-NN seg mIoU (tokens)",
    "k-NN seg mIoU (dense adaptor)",
)
ROWS = (
    ("two teachers (CLIP + SAM), merged", "two_teachers"),
    ("**three teachers** (+ dense), merged", "three_teachers"),
)


def three_teachers_markdown(results: dict[str, Any], timings: dict[str, float]) -> str:
    teachers, rows = results["teachers"], results["rows"]
    fixed = [
        ("CLIP teacher", teachers["clip"]),
        ("SAM teacher (the student before training)", teachers["sam"]),
        ("dense teacher (its patch tokens)", {"knn_miou_tokens": teachers["dense"]["knn_miou"]}),
        ("dense teacher's ViT untrained", {"knn_miou_tokens": teachers["dense_untrained"]["knn_miou"]}),
    ]
    seeds = ", ".join(map(str, results["seeds"]))
    lines = [
        f"# Three teachers on the proxy world (`--size {results['size']}`, seeds {seeds})",
        "",
        "Percent. k-NN seg: Hummingbird's label transfer (no training) from the world's VOC train set to its"
        " val set, on the features named in the column. Student rows: mean ± standard error over the seeds.",
        "",
        "| model | " + " | ".join(HEADERS) + " |",
        "|---|" + "---|" * len(HEADERS),
    ]
    lines += [f"| {name} | " + " | ".join(_cell(m.get(k)) for k in METRICS) + " |" for name, m in fixed]
    lines += [
        f"| {name} | " + " | ".join(_cell(rows[key].get(k)) for k in METRICS) + " |" for name, key in ROWS
    ]
    lines += ["", "Wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    return "\n".join(lines)


def plot_three_teachers(results: dict[str, Any], path: Path) -> Path:
    """Bars (mean ± SE) of each metric for the two- and three-teacher students, the teachers as lines."""
    rows, teachers = results["rows"], results["teachers"]
    panels = (
        ("zeroshot_top1", "zero-shot top-1", teachers["clip"]["zeroshot_top1"], "CLIP teacher"),
        ("box_miou", "box mIoU", teachers["sam"]["box_miou"], "SAM teacher"),
        ("knn_miou", "k-NN seg mIoU", teachers["dense"]["knn_miou"], "dense teacher"),
    )
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for axis, (key, label, teacher, teacher_name) in zip(axes, panels, strict=True):
        bars = []
        for name, row in (("two teachers", rows["two_teachers"]), ("three teachers", rows["three_teachers"])):
            keys = ["knn_miou_tokens", "knn_miou_adaptor"] if key == "knn_miou" else [key]
            for metric in keys:
                if metric in row:
                    suffix = {"knn_miou_tokens": " (tokens)", "knn_miou_adaptor": " (adaptor)"}.get(
                        metric, ""
                    )
                    bars.append((name + suffix, row[metric]))
        positions = range(len(bars))
        axis.bar(positions, [b[1]["mean"] for b in bars], yerr=[b[1]["se"] for b in bars], capsize=4,
                 color=["tab:blue" if b[0].startswith("two") else "tab:orange" for b in bars])  # fmt: skip
        axis.set_xticks(list(positions), [b[0] for b in bars], rotation=15, fontsize=8)
        axis.axhline(teacher, color="tab:red", linestyle="--", label=teacher_name)
        if key == "knn_miou":
            axis.axhline(
                teachers["sam"]["knn_miou_tokens"], color="gray", linestyle=":", label="SAM teacher's tokens"
            )
        axis.set_ylim(0, 100)
        axis.set_ylabel(f"{label} (%)")
        axis.set_title(label)
        axis.legend(loc="upper right", fontsize=8)
    seeds = len(results["seeds"])
    figure.suptitle(f"Three teachers vs two on the proxy world ({results['size']}): merged students, "
                    f"mean ± SE over {seeds} seed{'s' * (seeds > 1)}")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
