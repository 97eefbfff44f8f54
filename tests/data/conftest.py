"""Data written in the real layouts (img2dataset shards, SA-1B tars) for the data tests."""

from __future__ import annotations

import pytest

from samclip.data.synth import SyntheticData, make_synthetic_data


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticData:
    return make_synthetic_data(str(tmp_path_factory.mktemp("synth")), seed=0)


def pytest_configure(config: pytest.Config) -> None:
    # pycocotools 2.0.x under numpy 2 warns on every decode; it is not ours to fix.
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept:DeprecationWarning"
    )
