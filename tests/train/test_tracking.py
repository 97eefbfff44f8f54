"""metrics.jsonl lines, resume truncation, and wandb falling back to offline without a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from samclip.train.tracking import (
    Tracker,
    WandbLogger,
    _panels,
    has_wandb_credentials,
    plot_curves,
    read_metrics,
)


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


def test_validation_lines_are_their_own_and_their_time_is_not_throughput(tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.logged: list = []

        def log(self, metrics: dict, step: int) -> None:
            self.logged.append((step, metrics))

        def close(self) -> None:
            pass

    wandb = Recorder()
    tracker = Tracker(
        tmp_path, "multitask", enabled=True, log_every=1, last_step=4, progress=False, wandb=wandb
    )
    tracker.count_images(clip=8, sam=2)
    tracker.log(2, {"loss": 1.0})
    start = tracker.window_start
    tracker.log_validation(2, {"val/clip_cosine": 0.5}, seconds=3.0)
    assert tracker.window_start == start + 3.0  # the next window starts after the validation
    assert read_metrics(tmp_path / "metrics.jsonl")[1] == {
        "step": 2,
        "stage": "multitask",
        "val/clip_cosine": 0.5,
    }
    assert wandb.logged[-1] == (2, {"multitask/val/clip_cosine": 0.5})
    # Resume from step 1 drops step 2's training and validation lines alike.
    Tracker(tmp_path, "multitask", enabled=True, log_every=1, last_step=4, start_step=1, progress=False)
    assert read_metrics(tmp_path / "metrics.jsonl") == []


@pytest.mark.slow
def test_wandb_is_offline_without_a_key_and_a_resumed_stage_continues_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="samclip-test", name="smoke/head_probe", directory=tmp_path, mode="auto")
    assert logger.run.settings.mode == "offline"
    logger.log({"head_probe/loss": 1.0}, step=1)
    first_id = logger.run.id
    logger.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    resumed = WandbLogger(project="samclip-test", name="smoke/head_probe", directory=tmp_path, mode="auto")
    assert resumed.run.id == first_id == (tmp_path / "wandb_run_id").read_text().strip()
    resumed.close()
    other_stage = WandbLogger(
        project="samclip-test", name="smoke/multitask", directory=tmp_path / "mt", mode="auto"
    )
    assert other_stage.run.id != first_id
    other_stage.close()


def test_wandb_login_in_netrc_counts_as_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc_file = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert not has_wandb_credentials()
    netrc_file.write_text("machine example.org login user password other\n")
    netrc_file.chmod(0o600)
    assert not has_wandb_credentials()
    netrc_file.write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    assert has_wandb_credentials()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.mycompany.internal")
    assert not has_wandb_credentials()  # a self-hosted server needs its own entry
    monkeypatch.setenv("WANDB_API_KEY", "key")
    assert has_wandb_credentials()


def test_curves_show_losses_learning_rates_throughput_and_validation(tmp_path: Path) -> None:
    metrics = [
        {"step": s, "loss": 1.0 / s, "loss_sam": None, "grad_norm": 0.5, "lr/base": 1e-3 * s, "lr/backbone": 1e-4 * s,
         "images_per_s/clip": 10.0, "images_per_s/sam": 0.0, **({"val/clip_cosine": 0.9} if s % 2 == 0 else {})}
        for s in range(1, 5)
    ]  # fmt: skip
    assert [(title, keys) for title, keys in _panels(metrics)] == [
        ("total loss", ["loss"]),
        ("grad norm", ["grad_norm"]),
        ("learning rate", ["lr/base", "lr/backbone"]),
        ("images / s", ["images_per_s/clip", "images_per_s/sam"]),
        ("val/clip_cosine", ["val/clip_cosine"]),
    ]
    plot_curves(metrics, tmp_path / "curves.png", title="multitask")
    assert (tmp_path / "curves.png").stat().st_size > 0
