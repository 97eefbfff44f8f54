"""Draw samclip's subpackage import graph, one row per layer (lowest at the bottom), as a PNG.

    python scripts/import_graph.py                       # -> docs/import_graph.png
    python scripts/import_graph.py --package OTHER/samclip --unit inference=serve --out before.png

Arrows against the layer order are red; the title counts them and the cycles (``samclip.layering``).
Units no layer declares sit on a top row of their own, in orange.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's samclip, not whichever one is installed

from samclip import layering  # noqa: E402


def draw(package_dir: Path, out: Path, extra_units: dict[str, str], title: str) -> tuple[int, int]:
    arrows = layering.unit_graph(package_dir, extra_units)
    back = {(a.source, a.target) for a in layering.back_arrows(arrows, extra_units)}
    cycles = layering.cycles(arrows)
    index = layering.layer_index(extra_units)
    units = sorted({u for a in arrows for u in (a.source, a.target)} | set(index))
    rows: dict[int, list[str]] = {}
    for unit in units:
        rows.setdefault(index.get(unit, len(layering.LAYERS)), []).append(unit)
    position = {}
    for row, members in rows.items():
        for i, unit in enumerate(members):
            # one-unit rows swing left and right, so arrows skipping a layer do not run over the one between
            x = 0.5 + 0.32 * math.sin(1.9 * row) if len(members) == 1 else (i + 1) / (len(members) + 1)
            position[unit] = (x, row)

    fig, ax = plt.subplots(figsize=(11, 9))
    in_cycle = {u for c in cycles for u in c}
    for a in arrows:
        is_back = (a.source, a.target) in back
        ax.annotate(
            "",
            xy=position[a.target],
            xytext=position[a.source],
            arrowprops={
                "arrowstyle": "-|>",
                "color": "crimson" if is_back else "0.55",
                "lw": 2.0 if is_back else 0.9,
                "shrinkA": 18,
                "shrinkB": 18,
                "connectionstyle": "arc3,rad=0.08",
            },
        )
    for unit, (x, y) in position.items():
        color = "orange" if unit not in index else ("mistyrose" if unit in in_cycle else "lightsteelblue")
        ax.text(x, y, unit, ha="center", va="center", fontsize=10, bbox={"boxstyle": "round", "fc": color})
    names = [layer for layer, _ in layering.LAYERS] + (["undeclared"] if len(layering.LAYERS) in rows else [])
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_title(f"{title}\n{len(back)} arrows against the layer order (red), {len(cycles)} cycles")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return len(back), len(cycles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, default=REPO / "samclip", help="the samclip package folder")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "import_graph.png")
    parser.add_argument(
        "--unit", action="append", default=[], help="UNIT=LAYER for a unit LAYERS does not name (old layouts)"
    )
    parser.add_argument("--title", default="samclip import graph (subpackages; every import, lazy ones too)")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.unit)
    num_back, num_cycles = draw(args.package, args.out, extra, args.title)
    print(f"{args.out}: {num_back} back-arrows, {num_cycles} cycles")


if __name__ == "__main__":
    main()
