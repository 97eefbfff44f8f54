"""A run's outputs: ``results.json`` and a Markdown table of the same numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(run_dir: str | Path, task: str, results: dict[str, Any]) -> Path:
    """Write ``results.json`` and ``results.md`` into ``run_dir``; returns the json path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.json"
    path.write_text(json.dumps({"task": task, **results}, indent=2, default=float) + "\n")
    (run_dir / "results.md").write_text(to_markdown(task, results))
    return path


def to_markdown(task: str, results: dict[str, Any]) -> str:
    """Scalars in one table; each nested mapping (e.g. ``per_class``) or list of rows in its own table."""
    lines = [f"# {task}", ""]
    source = results.get("provenance")
    results = {key: value for key, value in results.items() if key != "provenance"}
    if source is not None:
        checkpoint = source.get("checkpoint") or {}
        lines += [
            f"checkpoint `{checkpoint.get('path')}` (stage {checkpoint.get('stage', '-')}, "
            f"step {checkpoint.get('step', '-')}); samclip {source.get('samclip_version')} "
            f"at {source.get('git_commit') or 'an unknown commit'}; eval config in results.json",
            "",
        ]
    scalars = {key: value for key, value in results.items() if not isinstance(value, dict | list)}
    if scalars:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in scalars.items()]
        lines.append("")
    for key, value in results.items():
        if isinstance(value, dict) and value:
            lines += [f"## {key}", "", "| name | value |", "|---|---|"]
            lines += [f"| {name} | {_fmt(item)} |" for name, item in value.items()]
            lines.append("")
        elif isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            columns = list(dict.fromkeys(column for row in value for column in row))
            lines += [f"## {key}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in value]
            lines.append("")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
