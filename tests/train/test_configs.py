"""Every config composes and instantiates at tiny size; each config error fails before any work, naming its key."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from samclip.models import create_model
from samclip.models.final_checkpoint import ClipTeacherSpec, save_final_checkpoint
from samclip.train import builder
from samclip.train.distributed import DistEnv
from samclip.train.runner import CONFIG_DIR, _build_student, run
from samclip.train.smoke import prepare_smoke_assets

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
GROUPS = (
    "model",
    "teacher",
    "data",
    "stage",
    "loss",
    "task",
    "optim",
    "trainer",
    "checkpoint",
    "logger",
    "validation",
    "experiment",
)


def _compose(tmp_path: Path, *overrides: str) -> DictConfig:
    """experiment=smoke unless ``overrides`` name another experiment."""
    experiment = [] if any(o.startswith("experiment=") for o in overrides) else ["experiment=smoke"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*experiment, f"run_dir={tmp_path / 'run'}", *overrides])
    return cfg


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke experiment's data and tiny teachers, written once for this module."""
    root = tmp_path_factory.mktemp("smoke_assets")
    prepare_smoke_assets(
        str(root / "data"),
        str(root / "teachers/clip_tiny.pt"),
        "samclip-tiny-clip",
        str(root / "teachers/sam_tiny.pth"),
        "samclip_tiny",
    )
    return root


def _with_assets(assets: Path) -> list[str]:
    return [
        f"data.clip.urls='{assets}/data/clip/{{00000..00003}}.tar'",
        f"data.sam.urls=[{assets}/data/sam/sa_000000.tar,{assets}/data/sam/sa_000001.tar]",
        f"data.sam.manifest={assets}/data/sam/train.txt",
        f"data.sam.val_manifest={assets}/data/sam/val.txt",
        f"teacher.clip.pretrained={assets}/teachers/clip_tiny.pt",
        f"teacher.sam.checkpoint={assets}/teachers/sam_tiny.pth",
        "prepare=null",
    ]


def test_every_group_option_is_listed_and_its_targets_accept_their_keys() -> None:
    """Each YAML's ``_target_`` imports and its keys bind to the target's signature (no download needed)."""
    found = set()
    for group in GROUPS:
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            found.add(group)
            node = OmegaConf.load(path)
            for target_node in _target_nodes(node):
                target = get_method(target_node["_target_"])
                # micro_batch_size configures the trainer, stream_parts the builder, a teacher's cache
                # the trainer (not the target).
                trainer_keys = (*builder._TRAINER_STREAM_KEYS, *builder.TEACHER_TRAINER_KEYS, "stream_parts")
                kwargs = {
                    k: v for k, v in target_node.items() if not k.startswith("_") and k not in trainer_keys
                }
                inspect.signature(target).bind_partial(**kwargs)
    assert found == set(GROUPS)


def _target_nodes(node: object) -> list[dict]:
    if not isinstance(node, DictConfig):
        return []
    raw = OmegaConf.to_container(node, resolve=False)
    out = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            if "_target_" in value:
                out.append(value)
            for child in value.values():
                walk(child)

    walk(raw)
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["logger=wandb", "logger.wandb.mode=disabled"],
        ["trainer=default", "trainer.device=cpu"],
        [
            "loss.sam_weight=100",
            "loss.sam.soft_targets=true",
            "loss.sam_outputs=all",
            "loss.sam.iou_weight=2",
        ],
        # The paper's full recipe at tiny size: its stages, batches and resolutions, tiny model and data.
        [
            "experiment=samclip_vit_b",
            "model=samclip_tiny",
            "teacher=tiny",
            "data=synthetic",
            "logger=jsonl",
            "stage.multitask.sam.resolution=256",
            "data.clip.num_samples=100000000",
            "data.sam.num_samples=600000",
        ],
    ],
    ids=["smoke", "wandb", "gpu_trainer", "loss", "samclip_vit_b_tiny"],
)
def test_configs_compose_and_instantiate_every_stage(
    tmp_path: Path, assets: Path, overrides: list[str]
) -> None:
    cfg = _compose(tmp_path, *_with_assets(assets), *overrides)
    run_dir = Path(cfg.run_dir)
    stages = builder.plan_run(cfg, ENV, run_dir)
    assert [s.name for s in stages] == ["head_probe", "multitask", "res_adapt"]
    builder.check_files(cfg, stages)
    for stage in stages:
        model = builder.build_model(cfg, from_sam_checkpoint=stage.previous is None)
        validator = builder.build_validator(
            cfg, stage, ENV, run_dir / stage.name, image_size=model.config.image_size, save_best=print
        )
        assert validator.metric_names == [f"val/{name}" for name in cfg.validation.stages[stage.name]]
        task = builder.build_task(cfg, stage, model, validator.teachers)
        assert task.term("sam").outputs == cfg.loss.sam_outputs
        if task.teachers["sam"] is not None:
            assert task.term("sam").loss_fn.iou_weight == cfg.loss.sam.iou_weight
        assert (task.teachers["clip"] is not None, task.teachers["sam"] is not None) == (
            "clip" in stage.streams,
            "sam" in stage.streams,
        )
        streams = builder.build_streams(cfg, stage, ENV)
        assert set(streams) == set(stage.streams)
        builder.set_trainable(model, stage.trainable)
        optimizer = builder.build_stage_optimizer(cfg, stage, model)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        assert max(lrs.values()) == stage.lr
        tracker = builder.build_tracker(cfg, run_dir / stage.name, stage, ENV, 0, 1)
        tracker.close()
        assert (
            stage.stop_length(getattr(streams.get("clip"), "steps_per_epoch", None), cfg.trainer.max_steps)
            >= 1
        )


def test_paper_numbers_are_in_the_full_experiment(tmp_path: Path) -> None:
    """DESIGN.md's recipe table, read back from experiment=samclip_vit_b."""
    cfg = _compose(tmp_path, "experiment=samclip_vit_b")
    hp, mt, ra = (builder.build_stage(cfg, n) for n in ("head_probe", "multitask", "res_adapt"))
    assert (hp.trainable, ra.trainable) == (["clip_head.*"], ["clip_head.*"])
    # Head_SAM is the mask decoder (paper §3): the prompt encoder stays as in the SAM checkpoint.
    assert mt.trainable == ["backbone.*", "clip_head.*", "sam_head.mask_decoder.*"]
    assert (hp.lr, mt.lr, ra.lr) == (8e-4, 4e-5, 8e-4)
    assert mt.lr_multipliers == {"backbone": 0.1, "sam_head": 0.1}
    assert (hp.schedule_epochs, mt.schedule_epochs, mt.stop_epoch, ra.schedule_epochs) == (20, 20, 16, 3)
    assert (list(hp.streams), list(mt.streams), list(ra.streams)) == (["clip"], ["clip", "sam"], ["clip"])
    assert list(hp.clip.resolutions) == [224, 448] and list(ra.clip.resolutions) == [224, 448, 1024]
    assert hp.clip.batch_size == mt.clip.batch_size == ra.clip.batch_size == 2048
    assert (mt.sam.batch_size, mt.sam.masks_per_image, mt.sam.resolution) == (32, 32, 1024)
    assert (
        cfg.loss.sam_weight == 10.0 and cfg.loss.sam.focal_weight == 20.0 and cfg.loss.sam.dice_weight == 1.0
    )
    assert (cfg.model.name, cfg.teacher.clip.model_name, cfg.teacher.clip.pretrained) == (
        "samclip_vit_b",
        "ViT-L-14",
        "datacomp_xl_s13b_b90k",
    )
    hydra = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml"), resolve=False)["hydra"]
    assert (hydra["run"]["dir"], hydra["job"]["chdir"]) == ("${run_dir}", False)
    assert not any("${now:" in p.read_text() for p in CONFIG_DIR.rglob("*.yaml")), (
        "run dirs must not use the clock"
    )


def test_multitask_length_is_16_of_20_epochs() -> None:
    from samclip.train.stages import ClipStreamSpec, SamStreamSpec, Stage

    stage = Stage(
        name="multitask",
        trainable=["*"],
        lr=4e-5,
        warmup_steps=10,
        schedule_epochs=20,
        stop_epoch=16,
        clip=ClipStreamSpec([224, 448], 2048, 224),
        sam=SamStreamSpec(1024, 32, 32),
    )
    assert stage.schedule_length(steps_per_epoch=100) == 2000
    assert stage.stop_length(steps_per_epoch=100) == 1600
    assert stage.stop_length(steps_per_epoch=100, max_steps=7) == 7


def _final(path: Path) -> Path:
    save_final_checkpoint(
        path, create_model("samclip_tiny"), ClipTeacherSpec("samclip-tiny-clip", None), "head_probe", 1
    )
    return path


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["stages=[head_probe,finetune]"], ValueError, "stages: unknown stage 'finetune'"),
        (
            ["stage.res_adapt.clip.resolutions=[64,100]"],
            ValueError,
            "stage.res_adapt.clip.resolutions: 100 is not a multiple of the patch size 16",
        ),
        (
            ["loss.sam_outputs=multi"],
            ValueError,
            "loss.sam_outputs must be one of ('single', 'all'), got 'multi'",
        ),
        (
            ["stage.res_adapt.clip.resolutions=[64,128]"],
            ValueError,
            "stage.res_adapt.clip.sam_frame_resolutions: [256] are not among stage.res_adapt.clip.resolutions",
        ),
        (
            ["stage.multitask.sam.resolution=264"],
            ValueError,
            "stage.multitask.sam.resolution: 264 is not a multiple",
        ),
        (["loss.sam_weight=0"], ValueError, "loss.sam_weight is 0 but stage multitask trains sam_head"),
        (["loss.clip_weight=0"], ValueError, "loss.clip_weight is 0 but stage head_probe trains clip_head"),
        (["stages=[multitask]"], FileNotFoundError, "stage.multitask.previous: stage multitask starts from"),
        (
            ["stages=[multitask]", "init_from=/nonexistent/final.pt"],
            FileNotFoundError,
            "init_from: stage multitask starts from /nonexistent/final.pt",
        ),
        (
            ["teacher.sam.checkpoint=/nonexistent/sam.pth", "stages=[multitask]", "init_from=FINAL"],
            FileNotFoundError,
            "teacher.sam.checkpoint: /nonexistent/sam.pth does not exist",
        ),
        (
            ["teacher.clip.pretrained=/nonexistent/clip.pt"],
            FileNotFoundError,
            "teacher.clip.pretrained: /nonexistent/clip.pt does not exist",
        ),
        (
            ["model.sam_checkpoint=/nonexistent/sam.pth"],
            FileNotFoundError,
            "model.sam_checkpoint: /nonexistent/sam.pth does not exist",
        ),
        (["data.clip.micro_batch_size=0"], ValueError, "data.clip.micro_batch_size must be >= 1"),
        (
            ["validation.stages.multitask=[clip_cosine,zeroshot]"],
            ValueError,
            "validation.stages.multitask: unknown evaluator 'zeroshot'",
        ),
        (["validation.every_steps=-1"], ValueError, "validation.every_steps must be >= 0"),
        (
            ["checkpoint.keep_best=val/zeroshot_top1"],
            ValueError,
            "checkpoint.keep_best: val/zeroshot_top1 is not produced by the validation of any stage",
        ),
        (
            ["data.clip.split=all"],
            ValueError,
            "validation.evaluators.clip_cosine.data: holds out (fraction, seed) = (0.25, 0) but data.clip "
            "reads split=all",
        ),
        (
            ["data.sam.manifest=null"],
            ValueError,
            "validation.evaluators.sam_iou_to_teacher.data: validation and training read the same SA-1B shards",
        ),
        (["trainer.precision=fp16"], ValueError, "trainer.precision must be auto, bf16 or fp32, got 'fp16'"),
    ],
)
def test_config_errors_fail_before_any_work(
    tmp_path: Path,
    assets: Path,
    overrides: list[str],
    error: type,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = _final(tmp_path / "elsewhere" / "final.pt")
    overrides = [o.replace("FINAL", str(final)) for o in overrides]
    cfg = _compose(tmp_path, *_with_assets(assets), *overrides)

    def no_stage(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stage started before the config error was raised")

    monkeypatch.setattr("samclip.train.runner.run_stage", no_stage)
    with pytest.raises(error, match=_literal(message)):
        run(cfg)
    run_dir = Path(cfg.run_dir)
    written = [p for p in run_dir.rglob("*") if p.is_file()] if run_dir.exists() else []
    assert all(p.name in ("config.yaml",) for p in written), written  # no stage started


def test_batch_not_divisible_by_world_size_names_the_key(tmp_path: Path, assets: Path) -> None:
    cfg = _compose(tmp_path, *_with_assets(assets))
    three_ranks = DistEnv(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(
        ValueError,
        match=_literal("stage.head_probe.clip.batch_size: 16 images are not divisible by the world size 3"),
    ):
        builder.plan_run(cfg, three_ranks, Path(cfg.run_dir))
    cfg = _compose(
        tmp_path,
        *_with_assets(assets),
        "stage.multitask.clip.batch_size=12",
        "stage.multitask.sam.batch_size=3",
    )
    two_ranks = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(
        ValueError,
        match=_literal("stage.multitask.sam.batch_size: 3 images are not divisible by the world size 2"),
    ):
        builder.plan_run(cfg, two_ranks, Path(cfg.run_dir))


@pytest.mark.parametrize(
    ("overrides", "device", "dtype"),
    [
        (["trainer=default"], "cuda", torch.bfloat16),
        (["trainer=default"], "cpu", None),
        (["trainer=default", "trainer.precision=bf16"], "cpu", torch.bfloat16),
        (["trainer.precision=fp32"], "cuda", None),
    ],
)
def test_trainer_precision_picks_the_autocast_dtype(
    tmp_path: Path, overrides: list[str], device: str, dtype: torch.dtype | None
) -> None:
    cfg = _compose(tmp_path, *overrides)
    assert builder.loop_options(cfg, torch.device(device)).autocast_dtype == dtype


@pytest.mark.parametrize("enabled", [True, False])
def test_trainer_grad_checkpointing_reaches_the_student(tmp_path: Path, enabled: bool) -> None:
    cfg = _compose(tmp_path, f"trainer.grad_checkpointing={enabled}", "model.sam_checkpoint=null")
    stage = builder.build_stage(cfg, "multitask")
    model = _build_student(cfg, stage, from_sam_checkpoint=True, source=None)
    assert model.backbone.grad_checkpointing is enabled and model.clip_head.grad_checkpointing is enabled


def test_init_from_a_final_checkpoint_is_accepted(tmp_path: Path, assets: Path) -> None:
    source = _final(tmp_path / "elsewhere" / "final.pt")
    cfg = _compose(tmp_path, *_with_assets(assets), "stages=[multitask,res_adapt]", f"init_from={source}")
    stages = builder.plan_run(cfg, ENV, Path(cfg.run_dir))
    assert builder.init_source(cfg, stages, 0, Path(cfg.run_dir)) == source
    assert (
        builder.init_source(cfg, stages, 1, Path(cfg.run_dir)) == Path(cfg.run_dir) / "multitask" / "final.pt"
    )


def _literal(text: str) -> str:
    import re

    return re.escape(text)


def test_zeroshot_top1_composes_for_a_stage_that_lists_it(tmp_path: Path, assets: Path) -> None:
    from PIL import Image

    from samclip.train.validation import ZeroshotTop1

    for name in ("cat", "dog"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "folder" / name / "0.png")
    cfg = _compose(
        tmp_path,
        *_with_assets(assets),
        "validation.stages.res_adapt=[zeroshot_top1]",
        f"validation.evaluators.zeroshot_top1.root={tmp_path / 'folder'}",
        "validation.evaluators.zeroshot_top1.resolution=64",
    )
    stages = builder.plan_run(cfg, ENV, Path(cfg.run_dir))
    validator = builder.build_validator(
        cfg, stages[2], ENV, tmp_path / "res_adapt", image_size=256, save_best=print
    )
    (evaluator,) = validator.evaluators.values()
    assert isinstance(evaluator, ZeroshotTop1) and evaluator.classnames == ["cat", "dog"]
    assert validator.teachers == ("clip",)
