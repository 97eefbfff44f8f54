"""experiment=proxy and the λ ablation's overrides compose, instantiate and pass the trainer's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from samclip.cli.data import main as data_main
from samclip.models.teachers import ClipTeacher
from samclip.proxy.cli import main as proxy_main
from samclip.proxy.study import (
    STUDY_SIZES,
    ablation_overrides,
    aggregate,
    combine_studies,
    compose_recipe,
    control_overrides,
)
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


def test_control_runs_stage_two_without_the_clip_term_then_res_adapt(tmp_path: Path) -> None:
    """The control row: stage 2 trains on D_SAM alone (no L_clip reaches the backbone), the CLIP head is frozen
    there, and res_adapt follows as in the recipe, all from the recipe's head_probe final.pt."""
    head_probe = tmp_path / "recipe" / "head_probe" / "final.pt"
    head_probe.parent.mkdir(parents=True)
    head_probe.touch()
    cfg = compose_recipe(tmp_path, tmp_path / "control", STUDY_SIZES["quick"], *control_overrides(head_probe))
    multitask, res_adapt = builder.plan_run(cfg, ENV, tmp_path / "control")
    assert (multitask.name, res_adapt.name) == ("multitask", "res_adapt")
    assert multitask.clip is None and multitask.sam is not None
    assert not any(pattern.startswith("clip_head") for pattern in multitask.trainable)
    assert builder.init_source(cfg, [multitask, res_adapt], 0, tmp_path / "control") == head_probe
    # res_adapt is the recipe's own: same stream, lengths and trainable parts.
    recipe = builder.plan_run(compose_recipe(tmp_path, tmp_path / "recipe", STUDY_SIZES["quick"]), ENV,
                              tmp_path / "recipe")  # fmt: skip
    assert res_adapt == recipe[2]


def test_aggregate_is_the_mean_and_standard_error_over_seeds() -> None:
    per_seed = [{"merged": {"zeroshot_top1": v}} for v in (60.0, 64.0, 68.0)]
    cell = aggregate(per_seed)["merged"]["zeroshot_top1"]
    # Hand computation: sample sd = 4, SE = 4 / sqrt(3).
    assert cell["mean"] == pytest.approx(64.0)
    assert cell["se"] == pytest.approx(4.0 / 3**0.5)
    assert cell["values"] == [60.0, 64.0, 68.0]
    assert aggregate([{"merged": {"box_miou": 50.0}}])["merged"]["box_miou"]["se"] == 0.0


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


def test_combine_pools_the_seeds_of_separate_studies(tmp_path: Path) -> None:
    """Two one-seed studies combine into the two-seed report; studies of other teachers are refused."""
    row = {"zeroshot_top1": 0.0, "box_miou": 50.0, "point_miou": 40.0}
    rows = (
        "head_probe",
        "multitask",
        "res_adapt",
        "control_no_clip/multitask",
        "control_no_clip",
        "lambda_10",
    )
    base = {"size": "test", "chance_top1": 25.0, "majority_top1": 31.0, "baselines": {"box_as_mask_miou": 58.0},
            "teachers": {"clip": {"zeroshot_top1": 90.0}, "sam": {"box_miou": 38.0, "point_miou": 32.0}},
            "sam_weights": [10.0]}  # fmt: skip
    dirs = []
    for seed, top1 in ((0, 40.0), (1, 50.0)):
        per_seed = {name: row | {"zeroshot_top1": top1} for name in rows}
        study = tmp_path / f"s{seed}"
        study.mkdir()
        (study / "results.json").write_text(
            json.dumps(base | {"seeds": [seed], "per_seed": {str(seed): per_seed}})
        )
        (study / "timings.json").write_text(json.dumps({"total": 1.0}))
        dirs.append(study)
    combined = combine_studies(tmp_path / "all", dirs)
    cell = combined["rows"]["res_adapt"]["zeroshot_top1"]
    assert combined["seeds"] == [0, 1] and cell["mean"] == 45.0 and cell["se"] == pytest.approx(5.0)
    assert (tmp_path / "all" / "lambda.png").is_file() and "45.0 ± 5.0" in (
        tmp_path / "all" / "results.md"
    ).read_text()
    other = json.loads((dirs[1] / "results.json").read_text())
    other["teachers"]["clip"]["zeroshot_top1"] = 80.0
    (dirs[1] / "results.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="other teachers"):
        combine_studies(tmp_path / "bad", dirs)
