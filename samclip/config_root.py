"""Where the Hydra configs are: ``samclip/configs`` (a link to the repository's ``configs/``, shipped as
package data) or, when the link is missing, the repository's ``configs/`` next to the package."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir(primary_config: str) -> Path:
    """The folder holding ``primary_config`` (e.g. ``train.yaml`` or ``evaluate/evaluate.yaml``)'s root.

    ``config_dir("evaluate/evaluate.yaml")`` is ``configs/evaluate``: samclip-eval has its own config root,
    because under the trainer's, its ``checkpoint`` config group would take ``checkpoint=FILE`` for a group
    choice.
    """
    candidates = [root / primary_config for root in (PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.parent
    raise FileNotFoundError(
        f"no Hydra config {primary_config}: looked for {candidates[0]} and {candidates[1]}"
    )
