"""Tiny merged models, CLIP towers and constructed benchmark data for the evaluation tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from samclip.eval.zeroshot import build_text_classifier
from samclip.inference import MergedSamClip, load
from samclip.models import SamClipModel, create_model
from samclip.models.final_checkpoint import ClipTeacherSpec, save_final_checkpoint

CLIP_NAME = "samclip-tiny-clip"
CLASSNAMES = ("dog", "cat", "horse", "car", "tree", "boat", "person", "bird")
# One flat colour per class: constant images survive any resize and crop unchanged.
COLORS = np.array(
    [
        [200, 30, 30],
        [30, 200, 30],
        [30, 30, 200],
        [200, 200, 30],
        [200, 30, 200],
        [30, 200, 200],
        [120, 60, 10],
        [250, 250, 250],
    ],
    dtype=np.uint8,
)


def random_student(seed: int) -> SamClipModel:
    """A tiny student whose every weight matters (SAM zero-initialises positions and some decoder parts)."""
    torch.manual_seed(seed)
    model = create_model("samclip_tiny")
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def dual_basis(classifier: torch.Tensor) -> torch.Tensor:
    """[D, C] unit class embeddings -> [D, C] targets t_c with classifier.T @ t_c = e_c.

    The tiny text tower's class embeddings are ~0.98 cosine-similar; an image embedded at t_c scores 1 for
    class c and exactly 0 for every other class, so the correct answer holds with a wide margin.
    """
    return classifier @ torch.linalg.inv(classifier.T @ classifier)


def fit_clip_head(model: SamClipModel, images: torch.Tensor, targets: torch.Tensor) -> None:
    """Solve the CLIP head's last linear layer so ``model.encode_image(images) == targets`` (least squares)."""
    head = model.clip_head
    with torch.no_grad():
        tokens = model.forward_features(images).tokens
        pooled = head.blocks(tokens).flatten(1, 2).amax(dim=1)
        hidden = head.norm(pooled)
        for layer in list(head.proj)[:4]:
            hidden = layer(hidden)
        design = torch.cat([hidden, torch.ones(len(hidden), 1)], dim=1).double()
        solution = torch.linalg.lstsq(design, targets.double(), driver="gelsd").solution  # [H + 1, D]
        head.proj[4].weight.copy_(solution[:-1].T.float())
        head.proj[4].bias.copy_(solution[-1].float())


def constant_images(colors: np.ndarray, size: int) -> torch.Tensor:
    return torch.from_numpy(colors).float().div(255).view(-1, 3, 1, 1).expand(-1, 3, size, size).contiguous()


def write_image_folder(
    root: Path, labels: Sequence[str], colors: np.ndarray, size: tuple[int, int] = (40, 30)
) -> Path:
    """``root/<label>/<i>.png`` with one constant-colour image per entry."""
    for index, (label, color) in enumerate(zip(labels, colors, strict=True)):
        folder = root / label.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.broadcast_to(color, (*size[::-1], 3)).copy()).save(folder / f"{index:03d}.png")
    return root


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


def voc_palette_png(label: np.ndarray, path: Path) -> None:
    """Write a label map as VOC does: a palette ("P" mode) PNG whose pixel values are the class indices."""
    from samclip.eval.visualize import class_palette

    image = Image.fromarray(label.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:21] = class_palette(21)
    palette[255] = (224, 224, 192)
    image.putpalette(palette.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_voc(root: Path, samples: dict[str, tuple[np.ndarray, np.ndarray]], split: str = "val") -> Path:
    """VOC2012 as extracted: JPEGImages/*.jpg, SegmentationClass/*.png (palette), ImageSets/Segmentation/val.txt."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for name, (image, label) in samples.items():
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=100)
        voc_palette_png(label, root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(samples) + "\n")
    return root
