"""The package's import graph keeps to ``samclip.layering.LAYERS``: no import runs up a layer, no cycle."""

from __future__ import annotations

from pathlib import Path

import pytest

import samclip
from samclip import layering

PACKAGE_DIR = Path(samclip.__file__).resolve().parent


@pytest.fixture(scope="module")
def arrows() -> list[layering.Arrow]:
    return layering.unit_graph(PACKAGE_DIR)


def test_every_unit_has_a_layer(arrows: list[layering.Arrow]) -> None:
    top_level = {p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"}
    top_level |= {p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    declared = set(layering.layer_index())
    assert layering.undeclared(arrows) == set()
    assert top_level <= declared, (
        f"give these a layer in samclip.layering.LAYERS: {sorted(top_level - declared)}"
    )


def test_no_import_runs_up_the_layers(arrows: list[layering.Arrow]) -> None:
    back = layering.back_arrows(arrows)
    assert not back, "imports against samclip.layering.LAYERS:\n" + "\n".join(map(str, back))


def test_no_cycle_between_subpackages(arrows: list[layering.Arrow]) -> None:
    assert layering.cycles(arrows) == []


def test_base_units_are_leaves() -> None:
    leaks = layering.leaf_violations(PACKAGE_DIR)
    assert not leaks, "base units import samclip: " + ", ".join(
        f"{i.path}:{i.line} {i.target}" for i in leaks
    )


def test_the_checks_see_a_planted_back_arrow_and_cycle(tmp_path: Path) -> None:
    """A hand-built package: models imports serve lazily (up a layer), serve and eval import each other."""
    pkg = tmp_path / "samclip"
    files = {
        "__init__.py": "",
        "models/__init__.py": "def f():\n    from samclip.serve import x\n",
        "serve/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..eval import e\n",
        "eval/e.py": "from samclip.serve import merged\nfrom . import other\n",
        "eval/other.py": "import samclip.models\n",
        "serve/merged.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    arrows = layering.unit_graph(pkg)
    edges = {(a.source, a.target) for a in arrows}
    assert edges == {("models", "serve"), ("serve", "eval"), ("eval", "serve"), ("eval", "models")}
    assert {(a.source, a.target) for a in layering.back_arrows(arrows)} == {
        ("models", "serve"),
        ("serve", "eval"),
    }
    assert layering.cycles(arrows) == [["eval", "models", "serve"]]
