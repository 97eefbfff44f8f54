"""A very small proxy world, written once per test session."""

from __future__ import annotations

import pytest
from proxy_sizes import TINY_WORLD

from samclip.proxy.world import ProxyWorld, write_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> ProxyWorld:
    return write_world(tmp_path_factory.mktemp("proxy_world"), TINY_WORLD, seed=0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept:DeprecationWarning"
    )
