"""A run directory's record: one trainer at a time (a lock), and every invocation's config kept, never rewritten.

``run_dir/config.yaml`` is the config the run was started with. Each later invocation (a resume, a sweep
re-run, an override allowed by ``resume.allow_config_change``) adds ``run_dir/configs/config.<n>.yaml``, so
what each part of the run was trained with stays on disk. ``run_dir/train.lock`` holds the trainer's host
and pid while it runs; a second trainer on the same directory is refused, and a lock whose process is gone
(a killed job on this host) is taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
CONFIG_FILE = "config.yaml"
HISTORY_DIR = "configs"


class RunDirLocked(ValueError):
    """Another trainer holds the run directory (a user error: one line at the command line)."""


class RunDirLock:
    """``run_dir/train.lock``, created exclusively; released by :meth:`release` (and on a clean exit)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                with open(self.path, "x") as handle:
                    json.dump(owner, handle)
                self.held = True
                return
            except FileExistsError:
                holder = _read_owner(self.path)
                if holder is not None and not _is_stale(holder):
                    raise RunDirLocked(
                        f"{self.path.parent} is in use by another trainer (pid {holder.get('pid')} on "
                        f"{holder.get('host')}); wait for it, or remove {self.path} if that job is gone"
                    ) from None
                log.warning("%s: taking over a stale lock (%s)", self.path, holder or "unreadable")
                self.path.unlink(missing_ok=True)
        raise RunDirLocked(f"{self.path}: could not take the lock (another trainer started at the same time)")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _is_stale(owner: dict) -> bool:
    """The lock's process is gone. Only decidable on its own host; elsewhere the lock is trusted."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def record_config(cfg: DictConfig, run_dir: Path) -> Path:
    """Keep this invocation's resolved config: ``config.yaml`` the first time, ``configs/config.<n>.yaml`` after."""
    run_dir = Path(run_dir)
    first = run_dir / CONFIG_FILE
    if not first.exists():
        OmegaConf.save(cfg, first, resolve=True)
        return first
    history = run_dir / HISTORY_DIR
    history.mkdir(exist_ok=True)
    number = 1 + max(
        (int(p.stem.split(".")[1]) for p in history.glob("config.*.yaml") if p.stem.split(".")[1].isdigit()),
        default=0,
    )
    path = history / f"config.{number}.yaml"
    OmegaConf.save(cfg, path, resolve=True)
    return path
