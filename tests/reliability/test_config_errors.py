"""Config errors of any stage stop the run before the first stage trains, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from planted import compose_smoke, literal, with_assets

from samclip.train.runner import run


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage.res_adapt.lr=-1"], "stage.res_adapt.lr must be > 0, got -1"),
        (["stage.res_adapt.lr=fast"], "stage.res_adapt.lr must be a number, got 'fast'"),
        (["stage.multitask.warmup_steps=-3"], "stage.multitask.warmup_steps must be >= 0, got -3"),
        (["stage.res_adapt.schedule_steps=0"], "stage.res_adapt.schedule_steps must be >= 1, got 0"),
        (["stage.multitask.sam.batch_size=0"], "stage.multitask.sam.batch_size must be >= 1, got 0"),
        (
            ["stage.multitask.lr_multipliers.backbone=-0.1"],
            "stage.multitask.lr_multipliers.backbone must be >= 0",
        ),
        (["data.sam.urls=null"], "data.sam.urls is not set, but a stage of this run reads the sam stream"),
        (["data.sam.urls=[]"], "data.sam.urls is not set"),
        (["trainer.dist_timeout_s=0"], "trainer.dist_timeout_s must be > 0, got 0"),
        (["trainer.max_grad_norm=-1"], "trainer.max_grad_norm must be >= 0, got -1"),
        (["trainer.max_steps=0"], "trainer.max_steps must be >= 1, got 0"),
        (["trainer.max_steps=abc"], "trainer.max_steps must be an integer or null, got 'abc'"),
        (["trainer.max_steps=2.5"], "trainer.max_steps must be an integer or null, got 2.5"),
        (["loss.sam_weight=-10"], "loss.sam_weight must be >= 0, got -10"),
        (["loss.clip_weight=heavy"], "loss.clip_weight must be a number, got 'heavy'"),
        (["loss.sam.focal_weight=-20"], "loss.sam.focal_weight must be >= 0, got -20"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay must be >= 0"),
        (["data.clip.max_skip_fraction=1.5"], "data.clip.max_skip_fraction must be <= 1, got 1.5"),
    ],
)
def test_a_bad_value_in_any_stage_fails_before_the_first_stage_trains(
    tmp_path: Path, assets: Path, overrides: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_smoke(tmp_path / "run", *with_assets(assets), *overrides)

    def no_stage(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stage started before the config error was raised")

    monkeypatch.setattr("samclip.train.runner.run_stage", no_stage)
    with pytest.raises(ValueError, match=literal(message)):
        run(cfg)
