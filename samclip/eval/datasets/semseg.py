"""Semantic segmentation benchmarks in the layouts they are distributed in.

- ``voc``: VOC2012 as extracted (``JPEGImages/``, ``SegmentationClass/`` palette PNGs,
  ``ImageSets/Segmentation/val.txt``); 21 classes with background, 255 = boundary (ignored).
- ``ade20k``: ``ADEChallengeData2016/{images,annotations}/validation``; label 0 ("other") is ignored and
  1..150 shift to 0..149.
- ``context59`` / ``context60``: Pascal-Context in mmsegmentation's converted layout
  (``VOC2010/JPEGImages``, ``SegmentationClassContext/``, ``ImageSets/SegmentationContext/val.txt``),
  whose labels follow the converter's sorted 459-class ids, i.e. alphabetical names after background.
  ``context59`` ignores background (the usual zero-shot benchmark), ``context60`` keeps it.
- ``cocostuff``: COCO-Stuff-164k in mmsegmentation's layout (``images/val2017/*.jpg``,
  ``annotations/val2017/*_labelTrainIds.png``), 171 classes, 255 ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from samclip.eval.datasets.classnames import ADE20K_CLASSES, COCO_STUFF_CLASSES, CONTEXT_CLASSES, VOC_CLASSES
from samclip.eval.metrics import IGNORE_INDEX


@dataclass(frozen=True)
class SegmentationSample:
    name: str
    image: np.ndarray  # HxWx3 uint8
    label: np.ndarray  # HxW int64 in [0, C) or IGNORE_INDEX


@dataclass
class SegmentationDataset:
    name: str
    classnames: tuple[str, ...]
    pairs: list[tuple[Path, Path]]  # (image, label map)
    label_transform: Callable[[np.ndarray], np.ndarray]
    background_index: int | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[SegmentationSample]:
        for image_path, label_path in self.pairs:
            yield self.load(image_path, label_path)

    def load(self, image_path: Path, label_path: Path) -> SegmentationSample:
        with Image.open(image_path) as image:
            pixels = np.asarray(image.convert("RGB"))
        with Image.open(label_path) as label_image:
            if label_image.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(
                    f"label map {label_path} has mode {label_image.mode}; expected class indices (P or L)"
                )
            raw = np.asarray(label_image).astype(np.int64)
        if raw.shape != pixels.shape[:2]:
            raise ValueError(
                f"label map {label_path} is {raw.shape}, its image {image_path} {pixels.shape[:2]}"
            )
        return SegmentationSample(image_path.stem, pixels, self.label_transform(raw))


def _identity(label: np.ndarray) -> np.ndarray:
    return label


def _reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """0 becomes ignore, the rest shift down by one (mmseg's ``reduce_zero_label``)."""
    out = label - 1
    out[(label == 0) | (label == IGNORE_INDEX)] = IGNORE_INDEX
    return out


def _pairs_from_list(
    root: Path, list_file: Path, image_dir: str, label_dir: str, label_suffix: str = ".png"
) -> list[tuple[Path, Path]]:
    if not list_file.is_file():
        raise FileNotFoundError(f"split file {list_file} does not exist (is {root} the dataset root?)")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    pairs = [(root / image_dir / f"{name}.jpg", root / label_dir / f"{name}{label_suffix}") for name in names]
    _check_exist(pairs)
    return pairs


def _pairs_from_dirs(image_dir: Path, label_dir: Path, label_suffix: str) -> list[tuple[Path, Path]]:
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} does not exist")
    pairs = [(path, label_dir / f"{path.stem}{label_suffix}") for path in sorted(image_dir.glob("*.jpg"))]
    if not pairs:
        raise ValueError(f"no .jpg images in {image_dir}")
    _check_exist(pairs)
    return pairs


def _check_exist(pairs: list[tuple[Path, Path]]) -> None:
    for image_path, label_path in pairs:
        for path in (image_path, label_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in the split but does not exist")


def _find_root(root: str | Path, marker: str, nested: tuple[str, ...]) -> Path:
    """Accept the dataset folder itself or a parent that holds it under one of ``nested``."""
    root = Path(root)
    for candidate in (root, *(root / sub for sub in nested)):
        if (candidate / marker).exists():
            return candidate
    raise FileNotFoundError(f"{root} does not look like the dataset root: no {marker} under it or {nested}")


def voc(root: str | Path, split: str = "val") -> SegmentationDataset:
    base = _find_root(root, "SegmentationClass", ("VOC2012", "VOCdevkit/VOC2012"))
    pairs = _pairs_from_list(
        base, base / "ImageSets" / "Segmentation" / f"{split}.txt", "JPEGImages", "SegmentationClass"
    )
    return SegmentationDataset("voc", VOC_CLASSES, pairs, _identity, background_index=0)


def ade20k(root: str | Path, split: str = "validation") -> SegmentationDataset:
    base = _find_root(root, "annotations", ("ADEChallengeData2016",))
    pairs = _pairs_from_dirs(base / "images" / split, base / "annotations" / split, ".png")
    return SegmentationDataset("ade20k", ADE20K_CLASSES, pairs, _reduce_zero_label)


def pascal_context(
    root: str | Path, split: str = "val", with_background: bool = False
) -> SegmentationDataset:
    base = _find_root(root, "SegmentationClassContext", ("VOC2010", "VOCdevkit/VOC2010"))
    pairs = _pairs_from_list(
        base,
        base / "ImageSets" / "SegmentationContext" / f"{split}.txt",
        "JPEGImages",
        "SegmentationClassContext",
    )
    if with_background:
        return SegmentationDataset("context60", CONTEXT_CLASSES, pairs, _identity, background_index=0)
    return SegmentationDataset("context59", CONTEXT_CLASSES[1:], pairs, _reduce_zero_label)


def coco_stuff(root: str | Path, split: str = "val2017") -> SegmentationDataset:
    base = _find_root(root, "annotations", ("coco_stuff164k",))
    pairs = _pairs_from_dirs(base / "images" / split, base / "annotations" / split, "_labelTrainIds.png")
    return SegmentationDataset("cocostuff", COCO_STUFF_CLASSES, pairs, _identity)


LAYOUTS: dict[str, Callable[..., SegmentationDataset]] = {
    "voc": voc,
    "ade20k": ade20k,
    "context59": pascal_context,
    "context60": lambda root, split="val": pascal_context(root, split, with_background=True),
    "cocostuff": coco_stuff,
}


def open_segmentation_dataset(layout: str, root: str | Path, split: str | None = None) -> SegmentationDataset:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown segmentation layout {layout!r}; available: {sorted(LAYOUTS)}")
    return LAYOUTS[layout](root) if split is None else LAYOUTS[layout](root, split)
