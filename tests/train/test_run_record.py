"""One trainer per run directory, and every invocation's config kept beside the first (never rewritten)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from samclip.train.run_record import RunDirLock, RunDirLocked, record_config


def test_a_second_trainer_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    first = RunDirLock(tmp_path)
    first.acquire()
    with pytest.raises(RunDirLocked, match=r"in use by another trainer \(pid \d+ on "):
        RunDirLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / "train.lock").exists()
    second = RunDirLock(tmp_path)
    second.acquire()
    second.release()


def test_a_stale_lock_on_this_host_is_taken_over_and_another_hosts_is_trusted(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    lock_file = tmp_path / "train.lock"
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid}))
    lock = RunDirLock(tmp_path)
    lock.acquire()  # the dead process's lock is taken over
    assert json.loads(lock_file.read_text())["pid"] != dead_pid
    lock.release()
    lock_file.write_text(json.dumps({"host": "another-node", "pid": dead_pid}))
    with pytest.raises(RunDirLocked, match="another-node"):
        RunDirLock(tmp_path).acquire()


def test_each_invocation_adds_a_config_and_the_first_is_never_rewritten(tmp_path: Path) -> None:
    paths = [
        record_config(OmegaConf.create({"loss": {"sam_weight": w}}), tmp_path) for w in (10.0, 1.0, 100.0)
    ]
    assert paths == [
        tmp_path / "config.yaml",
        tmp_path / "configs" / "config.1.yaml",
        tmp_path / "configs" / "config.2.yaml",
    ]
    assert [OmegaConf.load(p).loss.sam_weight for p in paths] == [10.0, 1.0, 100.0]


def test_the_trainer_refuses_a_locked_run_dir_and_releases_its_own(tmp_path: Path) -> None:
    from test_configs import _compose, _with_assets

    from samclip.train.runner import run

    assets = tmp_path / "assets"
    from samclip.train.smoke import prepare_smoke_assets

    prepare_smoke_assets(str(assets / "data"), str(assets / "teachers" / "clip_tiny.pt"), "samclip-tiny-clip",
                         str(assets / "teachers" / "sam_tiny.pth"), "samclip_tiny")  # fmt: skip
    cfg = _compose(tmp_path / "run", *_with_assets(assets), "stages=[head_probe]", "trainer.max_steps=1")
    holder = RunDirLock(Path(cfg.run_dir))
    holder.acquire()
    with pytest.raises(RunDirLocked, match="in use by another trainer"):
        run(cfg)
    holder.release()
    run_dir = run(cfg)
    assert not (run_dir / "train.lock").exists() and (run_dir / "config.yaml").is_file()
    run(_compose(tmp_path / "run", *_with_assets(assets), "stages=[head_probe]", "trainer.max_steps=1"))
    assert (run_dir / "configs" / "config.1.yaml").is_file()  # the second invocation's record
