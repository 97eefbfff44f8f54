"""Faults a kill or a full disk leave behind never stop the next start: it resumes to the same final weights."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from planted import compose_smoke, literal, with_assets

from samclip.models.final_checkpoint import load_final_checkpoint
from samclip.train.checkpoint import Checkpointer, load_training_checkpoint
from samclip.train.runner import run
from samclip.train.tracking import is_timing_key, read_metrics


def _train(run_dir: Path, assets: Path, *overrides: str) -> Path:
    run(compose_smoke(run_dir, *with_assets(assets), "stages=[head_probe]", *overrides))
    return run_dir / "head_probe"


def _untimed(path: Path) -> list[dict]:
    return [{k: v for k, v in line.items() if not is_timing_key(k)} for line in read_metrics(path)]


@pytest.fixture(scope="module")
def straight(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("straight") / "run", assets)


@pytest.mark.slow
def test_resume_past_a_corrupt_newest_checkpoint_a_torn_metrics_line_and_partial_writes(
    straight: Path, assets: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stage = _train(tmp_path / "run", assets)
    # What a kill during the step-12 checkpoint write and a full disk during a metrics write leave behind.
    (stage / "final.pt").unlink()
    newest, older = stage / "checkpoints" / "step_00000012.pt", stage / "checkpoints" / "step_00000010.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    partial = stage / "checkpoints" / ".step_00000012.pt.abc123.tmp"
    partial.write_bytes(b"half a checkpoint")
    with (stage / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 13, "stage": "head_pro')
    with caplog.at_level(logging.INFO, logger="samclip"):
        _train(tmp_path / "run", assets)
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"{newest} is unreadable" in m and f"resuming from {older}" in m for m in messages), messages
    assert any("torn or unparseable line" in m for m in messages)
    assert not partial.exists()
    resumed, expected = (
        load_final_checkpoint(stage / "final.pt"),
        load_final_checkpoint(straight / "final.pt"),
    )
    assert resumed.model_state.keys() == expected.model_state.keys()
    assert all(torch.equal(resumed.model_state[k], expected.model_state[k]) for k in expected.model_state)
    assert _untimed(stage / "metrics.jsonl") == _untimed(straight / "metrics.jsonl")
    load_training_checkpoint(newest)  # rewritten whole by the resumed run


def test_every_checkpoint_unreadable_names_each_file(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, every_steps=2)
    for step in (2, 4):
        (tmp_path / f"step_{step:08d}.pt").write_bytes(b"not a zip")
    with pytest.raises(
        ValueError, match=f"no training checkpoint in {tmp_path} loads: step_00000004.pt: .*step_00000002.pt"
    ):
        checkpointer.load_latest()


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointer = Checkpointer(tmp_path, every_steps=2)
    state = {"format": "samclip-training", "weights": torch.arange(100_000.0)}
    first = checkpointer.save(2, state)
    real_fdopen = os.fdopen
    # A real ENOSPC: the bytes go to /dev/full, as they would to a full file system.
    monkeypatch.setattr(
        "samclip.models.checkpoint_files.os.fdopen",
        lambda fd, mode: (os.close(fd), real_fdopen(os.open("/dev/full", os.O_WRONLY), mode))[1],
    )
    second = tmp_path / "step_00000004.pt"
    with pytest.raises(OSError, match=literal(f"{second}: no space left on device")) as caught:
        checkpointer.save(4, state)
    assert caught.value.errno == errno.ENOSPC
    assert not second.exists() and not list(tmp_path.glob("*.tmp"))
    assert torch.equal(torch.load(first, weights_only=True)["weights"], state["weights"])


def test_a_torn_metrics_line_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 3, "lo')
    assert read_metrics(path) == lines


def _interrupted(straight: Path, tmp_path: Path) -> Path:
    """A copy of the straight run as a kill after step 10's checkpoint leaves it."""
    import shutil

    stage = tmp_path / "run" / "head_probe"
    shutil.copytree(straight.parent, tmp_path / "run")
    (stage / "final.pt").unlink()
    (stage / "checkpoints" / "step_00000012.pt").unlink()
    return stage


def test_a_changed_training_value_is_refused_key_by_key(straight: Path, assets: Path, tmp_path: Path) -> None:
    stage = _interrupted(straight, tmp_path)
    with pytest.raises(ValueError) as caught:
        _train(tmp_path / "run", assets, "stage.head_probe.lr=1e-3", "loss.clip_weight=2")
    message = str(caught.value)
    assert f"resume from {stage / 'checkpoints' / 'step_00000010.pt'}" in message
    assert "stage.head_probe.lr: 0.0008 in the checkpoint, 0.001 now" in message
    assert "loss.clip_weight: 1.0 in the checkpoint, 2 now" in message
    assert "resume.allow_config_change=true" in message
    assert not (stage / "final.pt").exists()


def test_a_changed_shard_list_names_the_option_that_allows_it(
    straight: Path, assets: Path, tmp_path: Path
) -> None:
    _interrupted(straight, tmp_path)
    fewer = f"data.clip.urls='{assets}/data/clip/{{00000..00002}}.tar'"
    with pytest.raises(
        ValueError, match=r"(?s)data\.clip\.urls: .*resume\.allow_config_change=true .*changed shard list"
    ):
        _train(tmp_path / "run", assets, fewer)


@pytest.mark.slow
def test_an_allowed_lr_change_takes_effect_from_the_resumed_step(
    straight: Path, assets: Path, tmp_path: Path
) -> None:
    stage = _interrupted(straight, tmp_path)
    _train(tmp_path / "run", assets, "stage.head_probe.lr=1e-3", "resume.allow_config_change=true")
    reference = _train(tmp_path / "reference", assets, "stage.head_probe.lr=1e-3")  # the new lr from step 1
    lrs = [
        {k: v for k, v in line.items() if k.startswith("lr/")}
        for line in read_metrics(stage / "metrics.jsonl")
        if "loss" in line  # training lines; validation writes its own val/ lines
    ]
    expected = [
        {k: v for k, v in line.items() if k.startswith("lr/")}
        for line in read_metrics(reference / "metrics.jsonl")
        if "loss" in line  # training lines; validation writes its own val/ lines
    ]
    old = [
        {k: v for k, v in line.items() if k.startswith("lr/")}
        for line in read_metrics(straight / "metrics.jsonl")
        if "loss" in line  # training lines; validation writes its own val/ lines
    ]
    assert lrs[:10] == old[:10] and lrs[10:] == expected[10:] and lrs[10:] != old[10:]


def test_a_checkpoint_of_another_stage_or_model_size_is_named_in_one_line(
    straight: Path, assets: Path, tmp_path: Path
) -> None:
    stage = _interrupted(straight, tmp_path)
    checkpoint = stage / "checkpoints" / "step_00000010.pt"
    with pytest.raises(ValueError, match=r"model\.clip_head_depth: <absent> in the checkpoint, 2 now"):
        _train(tmp_path / "run", assets, "+model.clip_head_depth=2")
    with pytest.raises(ValueError) as caught:
        _train(tmp_path / "run", assets, "+model.clip_head_depth=2", "resume.allow_config_change=true")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 500
    assert (
        f"training checkpoint {checkpoint} holds a different model (backbone width 64, 4 blocks)" in message
    )
    assert "missing and" in message
    other = tmp_path / "run" / "res_adapt" / "checkpoints"
    other.mkdir(parents=True)
    (other / checkpoint.name).write_bytes(checkpoint.read_bytes())
    with pytest.raises(
        ValueError,
        match=literal(
            f"training checkpoint {other / checkpoint.name} belongs to stage 'head_probe', not to stage 'res_adapt'"
        ),
    ):
        run(
            compose_smoke(
                tmp_path / "run",
                *with_assets(assets),
                "stages=[res_adapt]",
                f"init_from={straight / 'final.pt'}",
            )
        )
