"""Constructed models and benchmark layouts for the evaluation tests (known answers by construction)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from samclip.models import SamClipModel, create_model

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


RED = np.array([220, 20, 20], dtype=np.uint8)
GRID = 16  # the patch size: regions on the token grid make the right answer reachable by a per-token head


def red_box_sample(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A random non-red background with a red box on the token grid; the box is class 1, the rest 0."""
    background = rng.integers(0, 256, 3).astype(np.uint8)
    background[0] = min(int(background[0]), 120)  # keep it far from red
    image = np.broadcast_to(background, (size, size, 3)).copy()
    label = np.zeros((size, size), dtype=np.uint8)
    cells = size // GRID
    top, left = rng.integers(0, cells - 2, 2)
    height, width = rng.integers(2, cells - max(top, left) + 1, 2)
    rows = slice(top * GRID, (top + height) * GRID)
    cols = slice(left * GRID, (left + width) * GRID)
    image[rows, cols], label[rows, cols] = RED, 1
    return image, label


def write_red_box_voc(root: Path, num_train: int, num_val: int, seed: int = 0) -> Path:
    """A VOC tree of ``red_box_sample`` images: ``num_train`` in train, ``num_val`` in val; returns ``root``."""
    rng = np.random.default_rng(seed)
    write_voc(root, {f"2007_{i:06d}": red_box_sample(rng) for i in range(num_train)}, split="train")
    write_voc(root, {f"2008_{i:06d}": red_box_sample(rng) for i in range(num_val)}, split="val")
    return root


def write_tiny_assets(root: Path) -> None:
    """The smoke run's generated data and tiny teachers under ``root``: data/, clip_tiny.pt, sam_tiny.pth."""
    from samclip.train.smoke import prepare_smoke_assets

    prepare_smoke_assets(
        str(root / "data"),
        str(root / "clip_tiny.pt"),
        "samclip-tiny-clip",
        str(root / "sam_tiny.pth"),
        "samclip_tiny",
    )
