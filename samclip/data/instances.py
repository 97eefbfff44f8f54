"""COCO / LVIS instance annotations (``instances_*.json`` + images) with the open-vocabulary split.

The CLIP2SAM training stream: images in SAM's square frame, each with up to ``max_instances`` ground-truth
objects of the training vocabulary as box and point prompts, their masks at the decoder's low
resolution and their class indices. COCO's split is Zareian et al.'s (OVR-CNN) 48 base / 17 novel
classes; LVIS trains on its frequent + common classes and holds out the rare ones (``frequency``).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools.coco import COCO

from samclip.data.images import to_tensor
from samclip.models.preprocess import SAM_PAD_VALUE, pad_to_square, resized_longest_side_shape
from samclip.models.prompts import SamPrompts

# Zareian et al. (CVPR 2021), as used by OV-SAM's Table 1 and every open-vocabulary COCO benchmark since.
COCO_BASE_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep",
    "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard",
    "bottle", "fork", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "pizza", "donut", "chair", "bed", "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven",
    "toaster", "refrigerator", "book", "clock", "vase", "toothbrush",
)  # fmt: skip
COCO_NOVEL_CLASSES = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard", "cup",
    "knife", "cake", "couch", "keyboard", "sink", "scissors",
)  # fmt: skip


@dataclass(frozen=True)
class OpenVocabularySplit:
    """Category ids of the base (trained) and novel (held-out) classes, and every class's name."""

    base_ids: tuple[int, ...]
    novel_ids: tuple[int, ...]
    names: dict[int, str]

    @property
    def all_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.base_ids + self.novel_ids))

    def vocabulary(self, which: str) -> tuple[int, ...]:
        """``base`` (training), ``novel`` or ``all`` (evaluation) category ids, in a fixed order."""
        if which not in ("base", "novel", "all"):
            raise ValueError(f"vocabulary must be base, novel or all, got {which!r}")
        return {"base": self.base_ids, "novel": self.novel_ids, "all": self.all_ids}[which]


def load_instances(annotations: str) -> COCO:
    if not os.path.isfile(annotations):
        raise FileNotFoundError(f"instances annotations {annotations} do not exist")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(annotations)


SPLITS = ("coco_48_17", "lvis_frequency")


def open_vocabulary_split(
    dataset: COCO,
    base_classes: Sequence[str] | None = None,
    novel_classes: Sequence[str] | None = None,
    split: str | None = None,
) -> OpenVocabularySplit:
    """Base/novel by class-name lists, by ``split="coco_48_17"`` (Zareian et al.; other COCO classes are in
    neither), or by ``split="lvis_frequency"`` (LVIS's ``frequency``: f + c base, r novel).

    With ``base_classes`` only, every other class is novel; with neither, all classes are base.
    """
    if split not in (None, *SPLITS):
        raise ValueError(f"split must be one of {list(SPLITS)} or null, got {split!r}")
    if split == "coco_48_17":
        base_classes, novel_classes = COCO_BASE_CLASSES, COCO_NOVEL_CLASSES
    lvis_frequency = split == "lvis_frequency"
    categories = dataset.loadCats(dataset.getCatIds())
    names = {int(c["id"]): str(c["name"]) for c in categories}
    if lvis_frequency:
        missing = [c["name"] for c in categories if "frequency" not in c]
        if missing:
            raise ValueError(f"lvis_frequency: categories without a frequency field, e.g. {missing[:3]}")
        base = [int(c["id"]) for c in categories if c["frequency"] in ("f", "c")]
        novel = [int(c["id"]) for c in categories if c["frequency"] == "r"]
        return OpenVocabularySplit(tuple(sorted(base)), tuple(sorted(novel)), names)
    by_name = {name: cid for cid, name in names.items()}
    unknown = sorted((set(base_classes or ()) | set(novel_classes or ())) - set(by_name))
    if unknown:
        raise ValueError(f"split: classes {unknown[:5]} are not categories of the annotations")
    overlap = sorted(set(base_classes or ()) & set(novel_classes or ()))
    if overlap:
        raise ValueError(f"split: classes {overlap[:5]} are both base and novel")
    if base_classes is None:
        base = set(names) - {by_name[n] for n in novel_classes or ()}
    else:
        base = {by_name[n] for n in base_classes}
    novel = set(names) - base if novel_classes is None else {by_name[n] for n in novel_classes}
    return OpenVocabularySplit(tuple(sorted(base)), tuple(sorted(novel)), names)


@dataclass
class InstanceTargets:
    """Targets of one prompt group: ``masks`` [N, L, L] float at the decoder's low resolution, ``labels`` [N]."""

    masks: torch.Tensor
    labels: torch.Tensor  # index into the batch's ``class_names``

    def to(self, device: torch.device | str) -> InstanceTargets:
        return InstanceTargets(
            self.masks.to(device, non_blocking=True), self.labels.to(device, non_blocking=True)
        )


@dataclass
class InstanceBatch:
    """Images in SAM's frame; ``prompts[k]`` (boxes, or one foreground point each) has ``targets[k]``."""

    images: torch.Tensor  # [B, 3, S, S] float in [0, 1], padded with SAM_PAD_VALUE
    input_sizes: torch.Tensor  # [B, 2]
    original_sizes: torch.Tensor  # [B, 2]
    prompts: list[SamPrompts]
    targets: list[InstanceTargets]
    class_names: tuple[str, ...]
    keys: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> InstanceBatch:
        return replace(
            self,
            images=self.images.to(device, non_blocking=True),
            input_sizes=self.input_sizes.to(device),
            original_sizes=self.original_sizes.to(device),
            prompts=[p.to(device) for p in self.prompts],
            targets=[t.to(device) for t in self.targets],
        )


def to_sam_frame(image: Image.Image, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB image -> [3, S, S] in [0, 1], longest side resized to S, padded bottom/right; and (h, w) before padding."""
    h, w = resized_longest_side_shape(image.height, image.width, image_size)
    pixels = F.interpolate(
        to_tensor(image)[None], (h, w), mode="bilinear", antialias=True, align_corners=False
    )
    return pad_to_square(pixels.clamp_(0, 1), image_size, SAM_PAD_VALUE)[0], (h, w)


def masks_to_frame(masks: np.ndarray, input_size: tuple[int, int], frame: int) -> torch.Tensor:
    """[N, H, W] binary masks (original size) -> [N, frame, frame] float, resized and padded like the image."""
    tensor = torch.from_numpy(masks.astype(np.float32))[None]
    resized = F.interpolate(tensor, input_size, mode="bilinear", align_corners=False)[0]
    out = resized.new_zeros((resized.shape[0], frame, frame))
    out[:, : input_size[0], : input_size[1]] = (resized > 0.5).float()
    return out


class InstanceStream:
    """Per-rank batches of ``global_batch_size / world_size`` images per step; resumable (``state_dict``).

    An epoch is a seeded permutation of the images that have a training-vocabulary instance (the last
    partial global batch is dropped); every rank reads the same permutation and takes its slice.
    """

    def __init__(
        self,
        annotations: str,
        images_root: str,
        *,
        global_batch_size: int,
        max_instances: int,
        image_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: str | None = None,
        base_classes: Sequence[str] | None = None,
        novel_classes: Sequence[str] | None = None,
        train_vocabulary: str = "base",
        mask_resolution: int | None = None,
        num_workers: int = 0,
    ) -> None:
        if global_batch_size % world_size:
            raise ValueError(
                f"instances: global batch {global_batch_size} is not divisible by {world_size} ranks"
            )
        if not os.path.isdir(images_root):
            raise FileNotFoundError(f"instances: images_root {images_root} does not exist")
        self.dataset = load_instances(annotations)
        self.split = open_vocabulary_split(self.dataset, base_classes, novel_classes, split)
        self.vocabulary = self.split.vocabulary(train_vocabulary)
        self.class_names = tuple(self.split.names[c] for c in self.vocabulary)
        self.label_of = {cid: index for index, cid in enumerate(self.vocabulary)}
        self.images_root = images_root
        self.image_size = image_size
        self.mask_resolution = mask_resolution or image_size // 4  # SAM's low-res logits: 256 at 1024
        self.max_instances = max_instances
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.global_batch_size = global_batch_size
        self.image_ids = sorted(i for i in self.dataset.getImgIds() if self._instances(i))
        self.steps_per_epoch = len(self.image_ids) // global_batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"instances: {len(self.image_ids)} images with {train_vocabulary} instances in {annotations} "
                f"are fewer than one global batch of {global_batch_size}"
            )
        self.epoch, self.position = 0, 0
        self.skipped: dict[str, int] = {}

    def _instances(self, image_id: int) -> list[dict[str, Any]]:
        annotations = self.dataset.loadAnns(self.dataset.getAnnIds(imgIds=image_id, iscrowd=False))
        return [a for a in annotations if a["category_id"] in self.label_of and a["area"] > 0]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[InstanceBatch]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.image_ids))
        local = self.global_batch_size // self.world_size
        while self.position < self.steps_per_epoch:
            start = self.position * self.global_batch_size + self.rank * local
            ids = [self.image_ids[i] for i in order[start : start + local]]
            batch = self.build(ids)
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def build(self, image_ids: Sequence[int]) -> InstanceBatch:
        images, input_sizes, original_sizes, prompts, targets = [], [], [], [], []
        for index, image_id in enumerate(image_ids):
            # Sampling depends on the image and epoch only, so any number of ranks sees the same global batch.
            rng = np.random.default_rng((self.seed, self.epoch, image_id))
            info = self.dataset.loadImgs(image_id)[0]
            with Image.open(os.path.join(self.images_root, info["file_name"])) as raw:
                frame, input_size = to_sam_frame(raw.convert("RGB"), self.image_size)
            chosen = self._instances(image_id)
            if len(chosen) > self.max_instances:
                chosen = [
                    chosen[i] for i in sorted(rng.choice(len(chosen), self.max_instances, replace=False))
                ]
            masks = np.stack([self.dataset.annToMask(a) for a in chosen])
            frame_masks = masks_to_frame(masks, input_size, self.image_size)
            scale = input_size[0] / info["height"]
            boxes = torch.tensor([a["bbox"] for a in chosen], dtype=torch.float32) * scale
            boxes[:, 2:] += boxes[:, :2]
            points = torch.stack([_random_point(m, rng) for m in frame_masks])[:, None]
            low = F.interpolate(frame_masks[None], (self.mask_resolution,) * 2, mode="area")[0]
            target = InstanceTargets(
                (low >= 0.5).float(), torch.tensor([self.label_of[a["category_id"]] for a in chosen])
            )
            prompts += [
                SamPrompts(index, boxes=boxes),
                SamPrompts(
                    index, point_coords=points, point_labels=torch.ones(len(chosen), 1, dtype=torch.int)
                ),
            ]
            targets += [target, target]
            images.append(frame)
            input_sizes.append(input_size)
            original_sizes.append((info["height"], info["width"]))
        return InstanceBatch(
            torch.stack(images),
            torch.tensor(input_sizes),
            torch.tensor(original_sizes),
            prompts,
            targets,
            self.class_names,
            [str(i) for i in image_ids],
        )


def _random_point(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A foreground pixel's centre (x, y) in frame pixels (the box centre if the resized mask vanished)."""
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    if xs.numel() == 0:
        return torch.tensor([mask.shape[1] / 2, mask.shape[0] / 2])
    pick = int(rng.integers(xs.numel()))
    return torch.tensor([xs[pick].item() + 0.5, ys[pick].item() + 0.5])
