"""A very small proxy world, written once per test session."""

from __future__ import annotations

import pytest

from samclip.proxy.world import ProxyWorld, WorldSize, write_world

TINY_WORLD = WorldSize(
    clip_images=40,
    sam_images=12,
    classification_images=16,
    semseg_images=6,
    sam_val_images=6,
    images_per_shard=20,
)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> ProxyWorld:
    return write_world(tmp_path_factory.mktemp("proxy_world"), TINY_WORLD, seed=0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept:DeprecationWarning"
    )
