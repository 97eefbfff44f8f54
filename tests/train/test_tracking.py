"""metrics.jsonl lines, resume truncation, and wandb falling back to offline without a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from samclip.train.tracking import Tracker, WandbLogger, read_metrics


def test_metrics_lines_and_truncation_on_resume(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, "head_probe", enabled=True, log_every=2, last_step=5, progress=False)
    assert [s for s in range(1, 6) if tracker.due(s)] == [2, 4, 5]
    for step in (2, 4, 5):
        tracker.count_images(clip=8, sam=0)
        tracker.log(step, {"loss": float(step)})
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [(m["step"], m["stage"], m["loss"]) for m in lines] == [
        (2, "head_probe", 2.0),
        (4, "head_probe", 4.0),
        (5, "head_probe", 5.0),
    ]
    assert all(m["images_per_s/clip"] > 0 and m["images_per_s/sam"] == 0 for m in lines)
    # Resuming from step 4's checkpoint: step 5 will be logged again, so its line goes.
    Tracker(tmp_path, "head_probe", enabled=True, log_every=2, last_step=5, start_step=4, progress=False)
    assert [m["step"] for m in read_metrics(tmp_path / "metrics.jsonl")] == [2, 4]
    # Non-zero ranks write nothing.
    other = tmp_path / "rank1"
    Tracker(other, "head_probe", enabled=False, log_every=1, last_step=1).log(1, {"loss": 1.0})
    assert not other.exists()


@pytest.mark.slow
def test_wandb_is_offline_without_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="samclip-test", name="smoke/head_probe", directory=tmp_path, mode="auto")
    assert logger.run.settings.mode == "offline"
    logger.log({"head_probe/loss": 1.0}, step=1)
    logger.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
