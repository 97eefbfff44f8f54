"""``samclip-data cache-teacher NAME`` for any teacher of the train config: a cached DINOv2 (a dense teacher)
holds its online outputs of each stored view, and a step on the cache computes the online step's loss."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from samclip.cli.data import main as data_cli
from samclip.config_root import config_dir
from samclip.data.clip_stream import draw_crop_view, render_crop_view
from samclip.data.shards import expand_urls
from samclip.data.teacher_cache import StaleCacheError, TeacherCache, view_generator
from samclip.models.dino_teacher import DinoTeacher, write_random_dino_checkpoint
from samclip.train import builder, runner
from samclip.train.distributed import DistEnv
from samclip.train.smoke import prepare_smoke_dino_assets
from samclip.train.step import forward_backward
from samclip.train.tasks.streams import Micro
from samclip.train.tracking import read_metrics

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
VIEWS = 3
# A multiple of DINOv2's patch (14) and the student's (16): at the student's resolution the online teacher
# sees exactly the pixels the cache's teacher saw (no resize between them).
SIDE = 112
BF16_REL = 2.0**-7  # two bf16 roundings relative to the largest value
COMMON = ["experiment=smoke_dino", "prepare=null", f"teacher.dino.image_size={SIDE}", "logger.progress=false"]
AT_SIDE = f"stage.head_probe.clip={{resolutions: [{SIDE}], batch_size: 8, base_resolution: {SIDE}}}"


def write_dino_with_live_blocks(path: Path) -> None:
    """A random tiny DINOv2 whose blocks act: LayerScale at 1, not DINOv2's 1e-5 init, under which the CLS
    token is the same for every image to 1e-5 (all of it lost to bf16 storage, and nothing for PHI-S to fit)."""
    write_random_dino_checkpoint(path, "samclip_tiny_dino", seed=2)
    state = torch.load(path, weights_only=True)
    torch.save({k: torch.ones_like(v) if k.endswith(".gamma") else v for k, v in state.items()}, path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dino_cache")
    teachers = root / "teachers"
    teachers.mkdir()
    write_dino_with_live_blocks(teachers / "dino_tiny.pth")
    prepare_smoke_dino_assets(
        str(root / "data"),
        str(teachers / "clip_tiny.pt"),
        "samclip-tiny-clip",
        str(teachers / "sam_tiny.pth"),
        "samclip_tiny",
        str(teachers / "dino_tiny.pth"),
        "samclip_tiny_dino",
    )
    # URLS omitted: the shards of the stream the dino term reads (data.clip.urls); overrides after the options.
    data_cli(
        ["cache-teacher", "dino", "--out", str(root / "dino_cache"), "--views", str(VIEWS), "--verify", "3",
         f"run_dir={root}", *COMMON]
    )  # fmt: skip
    return root


def _compose(run_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir("train.yaml")), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", *COMMON, *overrides])


def _teacher(run_dir: Path) -> DinoTeacher:
    return DinoTeacher("samclip_tiny_dino", str(run_dir / "teachers/dino_tiny.pth"), image_size=SIDE)


def _close(cached: torch.Tensor, online: torch.Tensor) -> bool:
    return bool(((cached - online).abs() <= BF16_REL * online.abs().max()).all())


def test_a_cached_dino_holds_the_teachers_online_summary_and_patches_of_each_stored_view(
    run_dir: Path,
) -> None:
    cache = TeacherCache(run_dir / "dino_cache", "dino")
    manifest = json.loads((run_dir / "dino_cache/manifest.json").read_text())
    assert (manifest["stream_kind"], manifest["input_size"], manifest["views_per_sample"]) == (
        "images",
        SIDE,
        VIEWS,
    )
    assert {n: o["shape"] for n, o in manifest["outputs"].items()} == {"summary": [32], "patches": [32, 8, 8]}
    teacher = _teacher(run_dir)
    checked = 0
    for url in expand_urls(str(run_dir / "data/clip/{00000..00003}.tar"))[:2]:
        with tarfile.open(url) as tar:
            images = {
                Path(m.name).stem: Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                for m in tar if m.name.endswith(".jpg")
            }  # fmt: skip
        for key in sorted(images)[:3]:
            image = images[key]
            rng = view_generator(key, 0)  # the stream's crop rule from the (view seed, key) generator
            views = [draw_crop_view(image.width, image.height, (0.9, 1.0), rng) for _ in range(VIEWS)]
            stored = cache.views(url, key).tolist()
            assert stored == [[v.left, v.top, v.width, v.height, int(v.flip)] for v in views]
            online = [teacher.encode(render_crop_view(image, v, SIDE)[None]) for v in views]
            for k in range(VIEWS):
                entry = cache.entry(url, key, row=k)
                assert _close(entry["summary"], online[k].summary[0]), (key, k)
                assert _close(entry["patches"], online[k].patches[0]), (key, k)
                # The comparison tells the views apart: another view's outputs are not within bf16.
                other = online[(k + 1) % VIEWS]
                assert not _close(entry["patches"], other.patches[0]), (key, k)
                checked += 1
    assert checked == 2 * 3 * VIEWS


def _first_step(task: object, batch: object) -> tuple[object, torch.Tensor]:
    """The step's losses and the gradient of the DINO adaptor (flattened)."""
    task.student.zero_grad(set_to_none=True)
    losses = forward_backward(task, task.student, {"clip": batch}, micro_batch_sizes={"clip": 4}, env=ENV)
    grads = [p.grad.flatten() for n, p in task.student.named_parameters() if n.startswith("adaptors.dino.")]
    return losses, torch.cat(grads)


def test_a_step_on_the_cached_dino_gives_the_online_steps_loss_dino(run_dir: Path) -> None:
    cached_cfg = _compose(run_dir, AT_SIDE, f"teacher.dino.cache={run_dir / 'dino_cache'}")
    online_cfg = _compose(run_dir, AT_SIDE)
    stage = builder.build_stage(cached_cfg, "head_probe")
    torch.manual_seed(0)
    student = builder.build_model(cached_cfg, from_sam_checkpoint=False)
    cached = builder.build_task(cached_cfg, stage, copy.deepcopy(student))
    assert cached.teachers["dino"] is None and cached.cached_terms == {"clip": "dino"}
    runner.fit_terms(cached, cached_cfg, stage, ENV, student)  # PHI-S on the cache's outputs
    batch = next(iter(builder.build_streams(cached_cfg, stage, ENV, student)["clip"])).to("cpu")
    assert set(batch.teacher_embeds) == {"summary", "patches"}

    online = builder.build_task(online_cfg, stage, copy.deepcopy(student))
    assert isinstance(online.teachers["dino"], DinoTeacher) and not online.cached_terms
    # PHI-S fitted on the same images (the cached stream's views), the teacher run on them.
    fit_stream = builder.build_streams(cached_cfg, stage, ENV, student)["clip"]
    online.term("dino").fit((Micro(b.to("cpu").images) for b in fit_stream), ENV)

    cached_term, online_term = cached.term("dino"), online.term("dino")
    for name in ("summary_standardizer", "feature_standardizer"):  # PHI-S fitted alike: mean and scale
        fitted, reference = getattr(cached_term, name), getattr(online_term, name)
        assert torch.allclose(fitted.mean, reference.mean, rtol=1e-2, atol=1e-2 * float(reference.scale)), (
            name
        )
        assert float(fitted.scale) == pytest.approx(float(reference.scale), rel=1e-2), name

    cached_losses, _ = _first_step(cached, batch)
    online_batch = replace(batch, teacher_embeds=None)
    online_losses, _ = _first_step(online, online_batch)
    assert cached_losses.streams["clip"] == online_losses.streams["clip"]  # online in both
    assert cached_losses.streams["dino"] == pytest.approx(online_losses.streams["dino"], rel=2e-3)
    for part in ("dino_summary", "dino_features"):
        assert cached_losses.parts[part] == pytest.approx(online_losses.parts[part], rel=2e-3), part
    # With one standardizer (PHI-S rotates within near-equal eigenvalues as their fit moves), the targets,
    # and so the gradients, differ by the bf16 storage alone.
    online_term.summary_standardizer = cached_term.summary_standardizer
    online_term.feature_standardizer = cached_term.feature_standardizer
    _, cached_grad = _first_step(cached, batch)
    _, online_grad = _first_step(online, online_batch)
    assert (cached_grad - online_grad).norm() <= 1e-2 * online_grad.norm()
    # Not trivially equal: the outputs of another sample's view give another gradient.
    rolled = {name: value.roll(1, 0) for name, value in batch.teacher_embeds.items()}
    _, wrong_grad = _first_step(cached, replace(batch, teacher_embeds=rolled))
    assert (wrong_grad - online_grad).norm() > 1e-1 * online_grad.norm()


@pytest.mark.slow  # two short trainer runs (~15 s)
def test_smoke_dino_trains_on_the_cache_without_building_the_dino_teacher(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the DINOv2 teacher was built")

    monkeypatch.setattr(DinoTeacher, "__init__", refuse)
    target = tmp_path / "run"
    for name in ("data", "teachers"):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).symlink_to(run_dir / name)
    cfg = _compose(
        target, AT_SIDE, f"teacher.dino.cache={run_dir / 'dino_cache'}", "stages=[head_probe]",
        "trainer.max_steps=2", "validation.stages.head_probe=[]", "checkpoint.keep_best=null",
    )  # fmt: skip
    runner.run(cfg)
    losses = [m["loss_dino"] for m in read_metrics(target / "head_probe/metrics.jsonl") if "loss_dino" in m]
    assert len(losses) == 2 and all(0 < value < 10 for value in losses)


def test_bad_names_and_mismatched_caches_are_one_line_errors_naming_the_key(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        data_cli(["cache-teacher", "dinov3", "--out", str(tmp_path / "x"), f"run_dir={run_dir}", *COMMON])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "unknown teacher 'dinov3'" in error and "['clip', 'sam', 'dino']" in error
    with pytest.raises(SystemExit):
        data_cli(
            ["cache-teacher", "orphan", "--out", str(tmp_path / "x"), f"run_dir={run_dir}", *COMMON,
             "+teacher.orphan._target_=toy_teacher.MeanColourTeacher"]
        )  # fmt: skip
    assert "teacher.orphan is read by no distillation term" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data_cli(
            [
                "cache-teacher",
                "dino",
                "--out",
                str(tmp_path / "x"),
                f"run_dir={run_dir}",
                *COMMON,
                "nosuch.key=1",
            ]
        )
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "nosuch.key" in error
    # A dense teacher's cache is not the SAM teacher's, nor a cache of another input side.
    cfg = _compose(run_dir, f"teacher.sam.cache={run_dir / 'dino_cache'}")
    with pytest.raises(StaleCacheError, match=r"teacher.sam.cache: .* holds dino teacher outputs, not sam's"):
        builder.build_streams(cfg, builder.build_stage(cfg, "multitask"), ENV)
    cfg = _compose(run_dir, f"teacher.dino.cache={run_dir / 'dino_cache'}", "model.adaptors={dino: 16}")
    model = builder.build_model(cfg, from_sam_checkpoint=False)
    with pytest.raises(
        ValueError,
        match=r"teacher.dino.cache: .* holds 32-d features but the student's adaptor dino has width 16",
    ):
        builder.build_streams(cfg, builder.build_stage(cfg, "head_probe"), ENV, model)
    cfg = _compose(run_dir, f"teacher.dino.cache={run_dir / 'dino_cache'}", "teacher.dino.image_size=56")
    with pytest.raises(
        ValueError, match=rf"teacher.dino.cache: .* {SIDE} px views, teacher.dino.image_size is 56"
    ):
        builder.build_streams(cfg, builder.build_stage(cfg, "head_probe"), ENV)
