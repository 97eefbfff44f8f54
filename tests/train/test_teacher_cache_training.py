"""Training on teacher caches: the cached step is the online step, the cached teachers are never built,
and a run on caches resumes exactly."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from constructed import write_tiny_assets
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from samclip.cli.data import main as data_cli
from samclip.data.clip_stream import ClipStream
from samclip.data.sam_stream import SamStream
from samclip.losses import CosineDistillationLoss, MaskDistillationLoss
from samclip.models import create_model
from samclip.models.final_checkpoint import ClipTeacherSpec, save_final_checkpoint
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.train import builder
from samclip.train.distributed import DistEnv
from samclip.train.runner import CONFIG_DIR, run
from samclip.train.step import forward_backward
from samclip.train.tasks import SamClipTask

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache_training")
    write_tiny_assets(root)
    clip = ["--model-name", "samclip-tiny-clip", "--pretrained", str(root / "clip_tiny.pt"), "--views", "4"]
    data_cli(
        [
            "cache-teacher",
            "clip",
            str(root / "data/clip/{00000..00003}.tar"),
            "--out",
            str(root / "clip_cache"),
            *clip,
        ]
    )
    sam = ["--model-name", "samclip_tiny", "--pretrained", str(root / "sam_tiny.pth"), "--image-size", "256"]
    data_cli(
        [
            "cache-teacher",
            "sam",
            str(root / "data/sam/sa_{000000..000001}.tar"),
            "--out",
            str(root / "sam_cache"),
            *sam,
        ]
    )
    return root


def _compose(assets: Path, run_dir: Path, *overrides: str, cached: bool = True) -> DictConfig:
    values = [
        "experiment=smoke",
        f"run_dir={run_dir}",
        f"data.clip.urls='{assets}/data/clip/{{00000..00003}}.tar'",
        f"data.sam.urls=[{assets}/data/sam/sa_000000.tar,{assets}/data/sam/sa_000001.tar]",
        f"data.sam.manifest={assets}/data/sam/train.txt",
        f"data.sam.val_manifest={assets}/data/sam/val.txt",
        f"teacher.clip.pretrained={assets}/clip_tiny.pt",
        f"teacher.sam.checkpoint={assets}/sam_tiny.pth",
        "prepare=null",
    ]
    if cached:
        values += [f"teacher.clip.cache={assets}/clip_cache", f"teacher.sam.cache={assets}/sam_cache"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*values, *overrides])


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_cached_step_equals_the_online_step(assets: Path) -> None:
    torch.manual_seed(0)
    student = create_model("samclip_tiny")
    clip_teacher = ClipTeacher("samclip-tiny-clip", str(assets / "clip_tiny.pt"))
    sam_teacher = SamTeacher(assets / "sam_tiny.pth", "samclip_tiny")
    common = {"seed": 1, "num_workers": 0}
    clip = ClipStream(
        str(assets / "data/clip/{00000..00003}.tar"), resolutions=[64], base_batch_size=8, base_resolution=64,
        teacher_cache=str(assets / "clip_cache"), draft_decode=False, **common,
    )  # fmt: skip
    sam = SamStream(
        str(assets / "data/sam/sa_{000000..000001}.tar"), global_batch_size=2, image_size=256, masks_per_image=4,
        teacher_cache=str(assets / "sam_cache"), draft_decode=False, **common,
    )  # fmt: skip
    cached = {
        "clip": next(iter(clip)).to("cpu"),
        "sam": next(iter(sam)).to("cpu"),
    }  # as the trainer moves them
    assert all(b.teacher_embeds is not None for b in cached.values())
    # The same crops and prompts, the teachers run online instead.
    online = {name: replace(batch, teacher_embeds=None) for name, batch in cached.items()}

    def step(task_student: torch.nn.Module, batches: dict, teachers: tuple) -> tuple:
        task = SamClipTask(
            task_student, *teachers, CosineDistillationLoss(), MaskDistillationLoss(), 1.0, 10.0,
            cached_streams=("clip", "sam") if teachers[0] is None else (),
        )  # fmt: skip
        task_student.zero_grad(set_to_none=True)
        losses = forward_backward(
            task, task_student, batches, micro_batch_sizes={"clip": 3, "sam": 1}, env=ENV
        )
        return losses, _grads(task_student)

    online_losses, online_grads = step(copy.deepcopy(student), online, (clip_teacher, sam_teacher))
    headless = SamTeacher(assets / "sam_tiny.pth", "samclip_tiny", image_encoder=False)
    cached_losses, cached_grads = step(copy.deepcopy(student), cached, (None, headless))
    for name in ("clip", "sam"):
        assert cached_losses.units[name] == online_losses.units[name] > 0
        assert cached_losses.streams[name] == pytest.approx(online_losses.streams[name], rel=2e-3, abs=1e-5)
    assert cached_grads.keys() == online_grads.keys()
    for name, grad in online_grads.items():
        difference = (cached_grads[name] - grad).norm()
        assert difference <= 1e-2 * grad.norm() + 1e-7, name
    # Not trivially equal: a cached target of the wrong view would change the loss.
    shuffled = dict(
        cached, clip=replace(cached["clip"], teacher_embeds=cached["clip"].teacher_embeds.roll(1, 0))
    )
    _, wrong_grads = step(copy.deepcopy(student), shuffled, (None, headless))
    worst = max((wrong_grads[n] - g).norm() / (g.norm() + 1e-12) for n, g in online_grads.items())
    assert worst > 5e-2


def test_the_cached_teachers_are_not_built(
    assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CLIP teacher was built")

    monkeypatch.setattr("samclip.models.teachers.create_open_clip", refuse)
    cfg = _compose(assets, tmp_path / "run")
    stage = builder.build_stage(cfg, "multitask")
    model = builder.build_model(cfg, from_sam_checkpoint=False)
    task = builder.build_task(cfg, stage, model)
    assert task.teachers["clip"] is None and task.cached_streams == ("clip", "sam")
    assert not hasattr(task.teachers["sam"].sam, "image_encoder")
    assert task.find_unused_parameters  # both heads still take turns
    streams = builder.build_streams(cfg, stage, ENV, model)
    assert next(iter(streams["clip"])).teacher_embeds is not None
    with pytest.raises(InstantiationException, match="the CLIP teacher was built"):
        builder.build_task(cfg, stage, model, teachers=("clip",))  # validation needs it: built
    with pytest.raises(InstantiationException, match="the CLIP teacher was built"):
        builder.build_task(_compose(assets, tmp_path / "run", cached=False), stage, model)  # online default


@pytest.mark.slow  # three short runs of the trainer (~17 s)
def test_a_run_on_teacher_caches_resumes_exactly(
    assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "samclip.models.teachers.create_open_clip", None
    )  # the CLIP teacher must not be needed
    init = tmp_path / "init.pt"
    torch.manual_seed(0)
    save_final_checkpoint(
        init, create_model("samclip_tiny"), ClipTeacherSpec("samclip-tiny-clip", None), "head_probe", 0
    )
    common = [
        "stages=[multitask]",
        f"init_from={init}",
        "validation.stages.multitask=[]",
        "checkpoint.keep_best=null",
    ]
    common += ["checkpoint.every_steps=1"]
    run(_compose(assets, tmp_path / "straight", *common, "trainer.max_steps=2"))
    run(_compose(assets, tmp_path / "resumed", *common, "trainer.max_steps=1"))
    (tmp_path / "resumed/multitask/final.pt").unlink()  # as if stopped after step 1's checkpoint
    run(_compose(assets, tmp_path / "resumed", *common, "trainer.max_steps=2"))
    straight = torch.load(tmp_path / "straight/multitask/final.pt")
    resumed = torch.load(tmp_path / "resumed/multitask/final.pt")
    assert straight["step"] == resumed["step"] == 2
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert any(not torch.equal(v, torch.load(init)["model"][k]) for k, v in straight["model"].items())


def test_resume_treats_a_newly_added_unset_cache_key_as_no_change() -> None:
    from samclip.train.resume import training_changes

    before = {"teacher": {"clip": {"model_name": "m"}}}  # a checkpoint written before teacher caches
    unset = {"teacher": {"clip": {"model_name": "m", "cache": None}}}
    cached = {"teacher": {"clip": {"model_name": "m", "cache": "/cache/clip"}}}
    assert training_changes(before, unset, "multitask") == []
    assert [key for key, _, _ in training_changes(before, cached, "multitask")] == ["teacher.clip.cache"]
    assert [key for key, _, _ in training_changes(unset, cached, "multitask")] == ["teacher.clip.cache"]


def test_a_stale_cache_stops_the_trainer_naming_the_shard_and_other_tasks_refuse_caches(
    assets: Path, tmp_path: Path
) -> None:
    import shutil

    from samclip.data.teacher_cache import StaleCacheError

    data = tmp_path / "clip"
    shutil.copytree(assets / "data/clip", data)
    with open(data / "00003.tar", "ab") as f:
        f.write(b"\0" * 512)
    cfg = _compose(assets, tmp_path / "run", f"data.clip.urls='{data}/{{00000..00003}}.tar'")
    stage = builder.build_stage(cfg, "multitask")
    with pytest.raises(StaleCacheError, match=r"data shard .*00003\.tar changed"):
        builder.build_streams(cfg, stage, ENV)
    ovsam = compose_ovsam(assets, tmp_path)
    with pytest.raises(
        ValueError, match=r"teacher.sam.cache: the sam2clip task .* computes its teacher outputs online"
    ):
        builder.cached_streams(ovsam, builder.build_stage(ovsam, "sam2clip"))


def compose_ovsam(assets: Path, tmp_path: Path) -> DictConfig:
    overrides = [
        "experiment=ovsam_smoke",
        f"run_dir={tmp_path / 'ovsam'}",
        f"teacher.sam.cache={assets}/sam_cache",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)
