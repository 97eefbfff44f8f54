"""Reliability tests import their helpers from ``planted`` (next to this file) and shard builders from tests/data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from samclip.train.smoke import prepare_smoke_assets

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "data"))  # sample_layouts: shards built member by member


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke experiment's data and tiny teachers, written once."""
    root = tmp_path_factory.mktemp("reliability_assets")
    prepare_smoke_assets(
        str(root / "data"),
        str(root / "teachers/clip_tiny.pt"),
        "samclip-tiny-clip",
        str(root / "teachers/sam_tiny.pth"),
        "samclip_tiny",
    )
    return root
