"""Fixtures shared by the eval, serve and cli tests: a constructed merged model, its checkpoints and classifier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
from constructed import (
    CLASSNAMES,
    CLIP_NAME,
    COLORS,
    constant_images,
    dual_basis,
    fit_clip_head,
    random_student,
    write_red_box_voc,
)

from samclip.models import SamClipModel
from samclip.models.final_checkpoint import ClipTeacherSpec, save_final_checkpoint
from samclip.models.zeroshot_classifier import build_text_classifier
from samclip.serve.merged import MergedSamClip, load


@pytest.fixture(scope="session")
def clip_tower_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(open_clip.create_model(CLIP_NAME).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def classifier(clip_tower_file: Path) -> torch.Tensor:
    clip = open_clip.create_model(CLIP_NAME, pretrained=str(clip_tower_file)).eval()
    return build_text_classifier(clip, open_clip.get_tokenizer(CLIP_NAME), CLASSNAMES)


@pytest.fixture(scope="session")
def make_final(tmp_path_factory: pytest.TempPathFactory, clip_tower_file: Path) -> Callable[..., Path]:
    """``make_final(model, name)`` writes a final.pt whose CLIP teacher is the tiny tower."""
    folder = tmp_path_factory.mktemp("final")

    def make(model: SamClipModel, name: str = "final.pt") -> Path:
        path = folder / name
        save_final_checkpoint(path, model, ClipTeacherSpec(CLIP_NAME, str(clip_tower_file)), "multitask", 7)
        return path

    return make


@pytest.fixture(scope="session")
def final_checkpoint(make_final: Callable[..., Path]) -> Path:
    return make_final(random_student(0), "random.pt")


@pytest.fixture(scope="session")
def merged(final_checkpoint: Path) -> MergedSamClip:
    return load(final_checkpoint)


@pytest.fixture(scope="session")
def classifying_checkpoints(make_final: Callable[..., Path], classifier: torch.Tensor) -> dict[str, Path]:
    """Two students built to classify the colour images: "right" maps colour c to class c, "shifted" to c+1.

    Their CLIP heads are solved at 224 px, the resolution the tests evaluate them at.
    """
    targets = dual_basis(classifier).T  # [C, D]
    images = constant_images(COLORS, 224)
    paths = {}
    for name, shift in (("right", 0), ("shifted", 1)):
        model = random_student(0)
        fit_clip_head(model, images, targets.roll(-shift, dims=0))
        paths[name] = make_final(model, f"{name}.pt")
    return paths


@pytest.fixture(scope="session")
def red_box_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train and 4 val images of a red box (class 1) on a plain background (class 0), boxes on the 16-px grid."""
    return write_red_box_voc(tmp_path_factory.mktemp("red_box") / "VOC2012", num_train=8, num_val=4)
