"""experiment=proxy and the λ ablation's overrides compose, instantiate and pass the trainer's checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from samclip.cli.data import main as data_main
from samclip.models.teachers import ClipTeacher
from samclip.proxy.cli import main as proxy_main
from samclip.proxy.study import STUDY_SIZES, ablation_overrides, compose_recipe
from samclip.train import builder
from samclip.train.distributed import DistEnv

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_recipe_config_targets_the_proxy_teachers(tmp_path: Path) -> None:
    cfg = compose_recipe(tmp_path, tmp_path / "recipe", STUDY_SIZES["quick"])
    assert cfg.teacher.clip.pretrained == f"{tmp_path}/teachers/clip_proxy.pt"
    assert cfg.teacher.sam.checkpoint == f"{tmp_path}/teachers/sam_proxy.pth"
    assert cfg.stage.multitask.stop_step == int(0.8 * STUDY_SIZES["quick"].multitask_steps)
    model = instantiate(cfg.model, sam_checkpoint=None)
    # The student's CLIP head must land in the teacher's embedding space.
    assert model.config.clip_embed_dim == ClipTeacher(cfg.teacher.clip.model_name, None).embed_dim
    stages = builder.plan_run(cfg, ENV, tmp_path / "recipe")
    assert [s.name for s in stages] == ["head_probe", "multitask", "res_adapt"]


@pytest.mark.parametrize("sam_weight", [0.0, 1.0, 100.0])
def test_ablation_runs_multitask_alone_from_head_probe(tmp_path: Path, sam_weight: float) -> None:
    head_probe = tmp_path / "recipe" / "head_probe" / "final.pt"
    head_probe.parent.mkdir(parents=True)
    head_probe.touch()
    cfg = compose_recipe(tmp_path, tmp_path / "ablation", STUDY_SIZES["quick"],
                         *ablation_overrides(sam_weight, head_probe))  # fmt: skip
    assert cfg.loss.sam_weight == sam_weight
    (stage,) = builder.plan_run(cfg, ENV, tmp_path / "ablation")
    assert stage.name == "multitask"
    assert builder.init_source(cfg, [stage], 0, tmp_path / "ablation") == head_probe
    # λ = 0: no SA-1B stream and a frozen SAM head (the trainer refuses a trained head without loss).
    assert (stage.sam is None) == (sam_weight == 0.0)


def test_data_cli_writes_the_shapes_world(tmp_path: Path) -> None:
    data_main(["synth", "--out", str(tmp_path), "--world", "shapes", "--size", "test"])
    assert sorted(p.name for p in (tmp_path / "classification").iterdir()) == [
        "circle", "cross", "square", "triangle"
    ]  # fmt: skip
    assert (tmp_path / "voc" / "VOC2012" / "classnames.txt").is_file()


def test_proxy_cli_refuses_unknown_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        proxy_main(["--out", "x", "--size", "huge"])
    assert "invalid choice" in capsys.readouterr().err
