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
- ``coco_panoptic``: COCO panoptic as distributed (``annotations/panoptic_val2017.json``, the extracted
  ``annotations/panoptic_val2017/*.png`` with segment id = R + 256 G + 256^2 B, ``val2017/*.jpg``); the
  json's categories (133: 80 things, 53 stuff) in the json's order become 0..C-1, id 0 (unlabelled) is
  ignored. Crowd segments keep their class, as Mask2Former's and mmseg's panoptic-to-semantic converters
  do (a crowd of people is "person" pixels; only its instances are ambiguous); ``coco_panoptic_nocrowd``
  ignores them instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from samclip.data.classnames import (
    ADE20K_CLASSES,
    COCO_STUFF_CLASSES,
    CONTEXT_CLASSES,
    VOC_CLASSES,
    prompt_names,
)
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

    @property
    def prompts(self) -> tuple[str, ...]:
        """The class names the text encoder sees (``classnames.prompt_names``); reports keep ``classnames``."""
        return prompt_names(self.classnames)

    def __iter__(self) -> Iterator[SegmentationSample]:
        for image_path, label_path in self.pairs:
            yield self.load(image_path, label_path)

    def load(self, image_path: Path, label_path: Path) -> SegmentationSample:
        with Image.open(image_path) as image:
            pixels = np.asarray(image.convert("RGB"))
        raw = self.read_label(label_path)
        if raw.shape != pixels.shape[:2]:
            raise ValueError(
                f"label map {label_path} is {raw.shape}, its image {image_path} {pixels.shape[:2]}"
            )
        return SegmentationSample(image_path.stem, pixels, self.label_transform(raw))

    def read_label(self, label_path: Path) -> np.ndarray:
        with Image.open(label_path) as label_image:
            if label_image.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(
                    f"label map {label_path} has mode {label_image.mode}; expected class indices (P or L)"
                )
            return np.asarray(label_image).astype(np.int64)


@dataclass
class PanopticSegmentationDataset(SegmentationDataset):
    """COCO panoptic read as semantic labels: each PNG's segment ids map to classes via the json."""

    segment_classes: dict[str, dict[int, int]] = field(default_factory=dict)  # PNG name -> {id: class}

    def read_label(self, label_path: Path) -> np.ndarray:
        with Image.open(label_path) as label_image:
            if label_image.mode != "RGB":
                raise ValueError(f"panoptic PNG {label_path} has mode {label_image.mode}; expected RGB ids")
            rgb = np.asarray(label_image).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        classes = self.segment_classes[label_path.name]
        unique, inverse = np.unique(ids, return_inverse=True)
        unknown = [int(i) for i in unique if i != 0 and int(i) not in classes]
        if unknown:
            raise ValueError(
                f"{label_path} has segment ids {unknown[:5]} that its segments_info does not list"
            )
        lookup = np.array([classes.get(int(i), IGNORE_INDEX) for i in unique], dtype=np.int64)
        return lookup[inverse.reshape(ids.shape)]


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
    """VOC 2012 as extracted. ``split="aug"`` is the 10,582-image train set with SBD's extra labels in
    mmsegmentation's layout: ``ImageSets/Segmentation/aug.txt`` and ``SegmentationClassAug/`` index PNGs."""
    base = _find_root(root, "SegmentationClass", ("VOC2012", "VOCdevkit/VOC2012"))
    label_dir = "SegmentationClassAug" if split == "aug" else "SegmentationClass"
    pairs = _pairs_from_list(
        base, base / "ImageSets" / "Segmentation" / f"{split}.txt", "JPEGImages", label_dir
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


def coco_panoptic(
    root: str | Path, split: str = "val2017", ignore_crowd: bool = False
) -> SegmentationDataset:
    base = _find_root(root, f"annotations/panoptic_{split}.json", ("coco",))
    json_path = base / "annotations" / f"panoptic_{split}.json"
    png_dir = base / "annotations" / f"panoptic_{split}"
    if not png_dir.is_dir():
        raise FileNotFoundError(
            f"folder {png_dir} does not exist (extract annotations/panoptic_{split}.zip into annotations/)"
        )
    spec = json.loads(json_path.read_text())
    for key in ("categories", "images", "annotations"):
        if key not in spec:
            raise ValueError(f"{json_path} has no {key!r} key: not a COCO panoptic json")
    class_of = {category["id"]: index for index, category in enumerate(spec["categories"])}
    image_files = {image["id"]: image["file_name"] for image in spec["images"]}
    pairs, segment_classes = [], {}
    for annotation in sorted(spec["annotations"], key=lambda a: a["file_name"]):
        if annotation["image_id"] not in image_files:
            raise ValueError(f"{json_path}: annotation {annotation['file_name']} names an unknown image_id")
        segment_classes[annotation["file_name"]] = {
            segment["id"]: IGNORE_INDEX
            if ignore_crowd and segment.get("iscrowd", 0)
            else _panoptic_class(class_of, segment, json_path)
            for segment in annotation["segments_info"]
        }
        pairs.append((base / split / image_files[annotation["image_id"]], png_dir / annotation["file_name"]))
    if not pairs:
        raise ValueError(f"{json_path} lists no annotations")
    _check_exist(pairs)
    names = prompt_names([category["name"] for category in spec["categories"]])
    name = "coco_panoptic_nocrowd" if ignore_crowd else "coco_panoptic"
    return PanopticSegmentationDataset(name, names, pairs, _identity, segment_classes=segment_classes)


def _panoptic_class(class_of: dict[int, int], segment: dict, json_path: Path) -> int:
    if segment["category_id"] not in class_of:
        raise ValueError(
            f"{json_path}: segment {segment['id']} has unknown category_id {segment['category_id']}"
        )
    return class_of[segment["category_id"]]


LAYOUTS: dict[str, Callable[..., SegmentationDataset]] = {
    "voc": voc,
    "ade20k": ade20k,
    "context59": pascal_context,
    "context60": lambda root, split="val": pascal_context(root, split, with_background=True),
    "cocostuff": coco_stuff,
    "coco_panoptic": coco_panoptic,
    "coco_panoptic_nocrowd": lambda root, split="val2017": coco_panoptic(root, split, ignore_crowd=True),
}


def open_segmentation_dataset(layout: str, root: str | Path, split: str | None = None) -> SegmentationDataset:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown segmentation layout {layout!r}; available: {sorted(LAYOUTS)}")
    return LAYOUTS[layout](root) if split is None else LAYOUTS[layout](root, split)
