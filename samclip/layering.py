"""samclip's layers, lowest first, and the import graph between its subpackages, read from the source by AST.

A module imports from its own layer and the layers below, never from one above, and the subpackages import
one another without a cycle. ``tests/test_layering.py`` asserts both; ``scripts/import_graph.py`` draws the
graph. Every import counts: one inside a function or under ``TYPE_CHECKING`` couples the modules just the same.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "samclip"

# (layer, its units), lowest first. A unit is a subpackage or flat module of samclip (``samclip.`` left off);
# a longer unit wins over the subpackage holding it. The base units are leaves (they import nothing from
# samclip), so every layer may use them: ``train.distributed`` is the one module touching torch.distributed,
# which the data layer's teacher-cache writer needs too.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("config_root", "cli_errors", "layering", "train.distributed")),
    ("models", ("models",)),
    ("data", ("data",)),
    ("losses", ("losses", "dense_losses")),
    ("train", ("train",)),
    ("serve", ("serve",)),
    ("eval", ("eval",)),
    ("proxy", ("proxy",)),
    ("api", (PACKAGE,)),  # samclip/__init__.py: the public names
    ("cli", ("cli",)),
)


@dataclass(frozen=True)
class Import:
    """One import statement of a samclip module by another."""

    source: str  # the importing module, e.g. "samclip.serve.merged"
    target: str  # the imported module, e.g. "samclip.models.teachers"
    path: Path
    line: int


@dataclass(frozen=True)
class Arrow:
    """An edge of the unit graph: ``source`` imports ``target``, for the reasons in ``imports``."""

    source: str
    target: str
    imports: tuple[Import, ...]

    def __str__(self) -> str:
        where = ", ".join(f"{i.path.name}:{i.line} imports {i.target}" for i in self.imports[:3])
        more = f" (+{len(self.imports) - 3} more)" if len(self.imports) > 3 else ""
        return f"{self.source} -> {self.target}: {where}{more}"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package rooted at ``package_dir``."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> list[Import]:
    """Every samclip module that ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            # ``from samclip.models import teachers`` imports the module samclip.models.teachers.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in dict.fromkeys(targets):  # ``from m import a, b`` is one import of m
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.append(Import(module, target, path, node.lineno))
    return found


def unit_of(module: str, units: frozenset[str] | set[str]) -> str:
    """The declared unit holding ``module`` (the longest that matches), else its first name under samclip."""
    if module == PACKAGE:
        return PACKAGE
    rest = module.removeprefix(PACKAGE + ".")
    matches = [u for u in units if u != PACKAGE and (rest == u or rest.startswith(u + "."))]
    return max(matches, key=len) if matches else rest.split(".")[0]


def layer_index(extra_units: Mapping[str, str] | None = None) -> dict[str, int]:
    """Unit -> its layer's position (0 the lowest); ``extra_units`` maps more units to layer names."""
    position = {layer: i for i, (layer, _) in enumerate(LAYERS)}
    index = {unit: position[layer] for layer, units in LAYERS for unit in units}
    for unit, layer in (extra_units or {}).items():
        index[unit] = position[layer]
    return index


def unit_graph(package_dir: Path, extra_units: Mapping[str, str] | None = None) -> list[Arrow]:
    """The arrows between units (self-loops left out), sorted."""
    units = set(layer_index(extra_units))
    modules = module_names(package_dir)
    reasons: dict[tuple[str, str], list[Import]] = {}
    for module, path in modules.items():
        for imp in imports_of(module, path, modules):
            edge = (unit_of(imp.source, units), unit_of(imp.target, units))
            if edge[0] != edge[1]:
                reasons.setdefault(edge, []).append(imp)
    return [Arrow(s, t, tuple(reasons[s, t])) for s, t in sorted(reasons)]


def leaf_violations(package_dir: Path) -> list[Import]:
    """Imports of samclip made by a base-layer unit, which must import nothing from samclip."""
    base = LAYERS[0][1]
    modules = module_names(package_dir)
    return [
        imp
        for module, path in modules.items()
        if unit_of(module, set(base)) in base
        for imp in imports_of(module, path, modules)
    ]


def undeclared(arrows: list[Arrow], extra_units: Mapping[str, str] | None = None) -> set[str]:
    """Units in the graph that no layer declares."""
    index = layer_index(extra_units)
    return {unit for a in arrows for unit in (a.source, a.target) if unit not in index}


def back_arrows(arrows: list[Arrow], extra_units: Mapping[str, str] | None = None) -> list[Arrow]:
    """Arrows from a lower layer into a higher one (undeclared units are left to ``undeclared``)."""
    index = layer_index(extra_units)
    return [
        a for a in arrows if a.source in index and a.target in index and index[a.target] > index[a.source]
    ]


def cycles(arrows: list[Arrow]) -> list[list[str]]:
    """The graph's strongly connected components of more than one unit (each holds at least one cycle)."""
    successors: dict[str, list[str]] = {}
    for a in arrows:
        successors.setdefault(a.source, []).append(a.target)
        successors.setdefault(a.target, [])
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph has a dozen nodes
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for succ in successors[node]:
            if succ not in order:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], order[succ])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(successors):
        if node not in order:
            visit(node)
    return sorted(components)
