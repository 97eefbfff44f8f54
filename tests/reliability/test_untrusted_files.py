"""A planted pickle never runs: every place a checkpoint is read refuses it, naming the file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from planted import compose_smoke, literal, plant_trap, with_assets

import samclip
from samclip.cli.predict import main as predict_main
from samclip.models import create_model
from samclip.models.final_checkpoint import ClipTeacherSpec, load_final_checkpoint
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.serve.export import load_student
from samclip.serve.merged import MergedSamClip, TextEncoder
from samclip.train.checkpoint import load_training_checkpoint
from samclip.train.runner import run

REPO = Path(__file__).parents[2]


def test_the_trap_runs_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    # The test's premise: without weights_only the planted file does write the marker.
    marker = tmp_path / "marker"
    torch.load(plant_trap(tmp_path / "trap.pt", marker), weights_only=False)
    assert marker.read_text() == "code ran"


def _predict(checkpoint: Path) -> None:
    image = checkpoint.with_name("photo.png")
    Image.new("RGB", (32, 24)).save(image)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            predict_main(
                [
                    str(image),
                    "--checkpoint",
                    str(checkpoint),
                    "--labels",
                    "a,b",
                    "--out",
                    str(image) + ".out.png",
                ]
            )
    except SystemExit as exit:  # the CLI prints user errors as one line and exits 2
        assert exit.code == 2
        raise ValueError(stderr.getvalue()) from None


LOADERS: dict[str, Callable[[Path], object]] = {
    "training checkpoint": load_training_checkpoint,
    "final.pt": load_final_checkpoint,
    "samclip.load": samclip.load,
    "samclip.from_pretrained": samclip.from_pretrained,
    "export (final.pt)": lambda path: load_student(path),
    "export (state dict)": lambda path: load_student(path, "samclip_tiny"),
    "ClipTeacher file": lambda path: ClipTeacher("samclip-tiny-clip", str(path)),
    "TextEncoder file": lambda path: TextEncoder.from_open_clip("samclip-tiny-clip", str(path)),
    "SamTeacher file": lambda path: SamTeacher(path, "samclip_tiny"),
    "create_model sam_checkpoint": lambda path: create_model("samclip_tiny", sam_checkpoint=path),
    "predict": lambda path: _predict(path),
}


@pytest.mark.parametrize("shape", ["state_dict", "final", "training"])
@pytest.mark.parametrize("where", sorted(LOADERS))
def test_every_loader_refuses_a_planted_pickle(tmp_path: Path, where: str, shape: str) -> None:
    marker = tmp_path / "marker"
    trap = plant_trap(tmp_path / "planted.pt", marker, shape)
    with pytest.raises(ValueError, match=literal(str(trap))):
        LOADERS[where](trap)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["resume", "init_from"])
def test_training_refuses_a_planted_pickle(tmp_path: Path, assets: Path, where: str) -> None:
    marker = tmp_path / "marker"
    run_dir = tmp_path / "run"
    if where == "resume":
        trap = plant_trap(run_dir / "head_probe" / "checkpoints" / "step_00000002.pt", marker, "training")
        overrides = ["stages=[head_probe]"]
    else:
        trap = plant_trap(tmp_path / "elsewhere" / "final.pt", marker, "final")
        overrides = ["stages=[multitask]", f"init_from={trap}"]
    cfg = compose_smoke(run_dir, *with_assets(assets), *overrides)
    with pytest.raises(ValueError, match=literal(str(trap))):
        run(cfg)
    assert not marker.exists()


@pytest.mark.slow
def test_evaluate_cli_refuses_a_planted_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    trap = plant_trap(tmp_path / "final.pt", marker, "final")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "samclip.cli.eval",
            "eval=zeroshot_cls",
            f"checkpoint={trap}",
            f"run_dir={tmp_path}",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert f"checkpoint {trap} is not a readable PyTorch checkpoint" in result.stderr
    assert not marker.exists()


def _export(directory: Path) -> Path:
    model = create_model("samclip_tiny")
    text = TextEncoder.from_open_clip("samclip-tiny-clip", None)
    return MergedSamClip(model, text, ClipTeacherSpec("samclip-tiny-clip", None)).save_pretrained(directory)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("export") / "merged")


def _edited(exported: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    directory = tmp_path / "edited"
    directory.mkdir()
    (directory / "model.safetensors").symlink_to(exported / "model.safetensors")
    config = json.loads((exported / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_an_intact_export_loads(exported: Path) -> None:
    merged = samclip.load(exported)
    assert merged.config == create_model("samclip_tiny").config


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["model_config"].update(embed_dim=1 << 20),
            "model_config.embed_dim=1048576 is outside the published",
        ),
        (
            lambda c: c["model_config"].update(depth=10_000),
            "model_config.depth=10000 is outside the published",
        ),
        (
            lambda c: c["model_config"].update(decoder_mlp_dim="big"),
            "model_config.decoder_mlp_dim='big' is outside",
        ),
        (lambda c: c["model_config"].update(extra=1), "model_config: unknown model config keys ['extra']"),
        (lambda c: c.update(run_this="rm -rf /"), "unknown keys ['run_this']"),
        (
            lambda c: c.update(text_model="hf-hub:someone/clip"),
            "text_model='hf-hub:someone/clip' names a hub location",
        ),
        (
            lambda c: c.update(tokenizer="hf-hub:someone/clip"),
            "tokenizer='hf-hub:someone/clip' names a hub location",
        ),
        (
            lambda c: c.update(text_model="no-such-model"),
            "text_model='no-such-model' is not an open_clip model name",
        ),
    ],
)
def test_an_untrusted_export_config_is_validated_before_anything_is_built(
    exported: Path,
    tmp_path: Path,
    edit: Callable[[dict], None],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = _edited(exported, tmp_path, edit)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built before config.json was validated")

    monkeypatch.setattr("samclip.serve.merged.create_model_from_config", no_build)
    monkeypatch.setattr("samclip.serve.merged.open_clip.create_model", no_build)
    with pytest.raises(ValueError, match=literal(f"{directory / 'config.json'}: {message}")):
        samclip.load(directory)


def test_a_hub_text_model_is_fetched_only_with_the_opt_in(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _edited(exported, tmp_path, lambda c: c.update(text_model="hf-hub:someone/clip"))
    fetched = []

    def fake_fetch(name: str, pretrained: object = None) -> None:
        fetched.append(name)
        raise RuntimeError("offline")

    monkeypatch.setattr("samclip.serve.merged.open_clip.create_model", fake_fetch)
    with pytest.raises(ValueError, match="names a hub location"):
        samclip.load(directory)
    assert fetched == []
    with pytest.raises(RuntimeError, match="offline"):
        samclip.load(directory, allow_hub=True)
    assert fetched == ["hf-hub:someone/clip"]


def test_a_training_checkpoint_where_a_final_pt_is_expected_says_so(tmp_path: Path) -> None:
    path = tmp_path / "step_00000002.pt"
    torch.save({"format": "samclip-training", "stage": "head_probe", "student": {}}, path)
    with pytest.raises(
        ValueError, match=literal(f"{path} is a training checkpoint (step_*.pt, to resume a stage); use")
    ):
        samclip.load(path)
