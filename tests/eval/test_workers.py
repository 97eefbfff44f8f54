"""Eval loaders ask for no more workers than the CPUs the process may use: torch's own check stays quiet."""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from samclip.data.transforms import classification_transform
from samclip.eval.datasets import workers
from samclip.eval.datasets.classification import image_folder_loader


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's DataLoader checks the same affinity, so both see a 2-CPU machine.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    workers._log_cap.cache_clear()


def test_image_folder_loader_caps_workers_and_torch_does_not_warn(tmp_path, two_cpus, caplog) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name / "0.png")
    with caplog.at_level(logging.INFO, logger=workers.__name__):
        loader, _ = image_folder_loader(tmp_path, classification_transform(16), batch_size=2, num_workers=4)
        image_folder_loader(tmp_path, classification_transform(16), batch_size=2, num_workers=4)
    assert loader.num_workers == 2
    assert caplog.text.count("num_workers=4 capped to 2") == 1  # logged once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.check_worker_number_rationality()  # torch's own check of the worker count
    loader.num_workers = 4
    with pytest.warns(UserWarning, match="worker"):
        loader.check_worker_number_rationality()  # what the uncapped default did


def test_smaller_requests_pass_through(two_cpus) -> None:
    assert [workers.usable_num_workers(n) for n in (0, 1, 2, 8)] == [0, 1, 2, 2]
