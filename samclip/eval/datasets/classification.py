"""Zero-shot classification data: an ImageFolder tree or webdataset shards, plus the class names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset
from torchvision.datasets import ImageFolder

from samclip.eval.datasets.workers import usable_num_workers

IMAGE_KEYS = "jpg;jpeg;png;webp"


class ImageFolderByNumber(ImageFolder):
    """``ImageFolder`` whose numeric folders (ImageNet-v2's ``0..999``) are labels by number, not by name.

    torchvision sorts folder names as strings ("10" before "2"); numbered folders name class indices.
    """

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes, class_to_idx = super().find_classes(directory)
        if not all(name.isdigit() for name in classes):
            return classes, class_to_idx
        classes = sorted(classes, key=int)
        if [int(name) for name in classes] != list(range(len(classes))):
            raise ValueError(
                f"ImageFolder {directory}: numbered class folders must be 0..N-1, got {classes[0]}..{classes[-1]} "
                f"with {len(classes)} folders"
            )
        return classes, {name: int(name) for name in classes}


def image_folder_loader(
    root: str | Path, transform: Callable[[Image.Image], torch.Tensor], batch_size: int, num_workers: int
) -> tuple[DataLoader, list[str]]:
    """``root/<class>/<image>`` (ImageNet val in synset folders, ImageNet-v2 in ``0..999``); returns loader
    and folders in label order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root {root} does not exist")
    dataset = ImageFolderByNumber(str(root), transform=transform)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=usable_num_workers(num_workers), shuffle=False
    )
    return loader, list(dataset.classes)


def webdataset_loader(
    shards: str | Sequence[str],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    num_workers: int,
    label_key: str = "cls",
) -> DataLoader:
    """Shards holding an image (jpg/png/webp) and an integer label under ``label_key`` (clip_benchmark's layout)."""
    urls = _expand(shards)
    dataset: IterableDataset = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode("pil")
        .to_tuple(IMAGE_KEYS, label_key)
        .map_tuple(transform, _as_label)
        .batched(batch_size, partial=True)
    )
    return DataLoader(dataset, batch_size=None, num_workers=usable_num_workers(num_workers))


def _as_label(value: object) -> int:
    if isinstance(value, bytes):
        value = value.decode()
    return int(str(value).strip())


def _expand(shards: str | Sequence[str]) -> list[str]:
    patterns = [shards] if isinstance(shards, str) else list(shards)
    urls = [url for pattern in patterns for url in wds.shardlists.expand_urls(pattern)]
    missing = [url for url in urls if "://" not in url and not Path(url).is_file()]
    if missing:
        raise FileNotFoundError(f"webdataset shard {missing[0]} does not exist ({len(missing)} missing)")
    return urls
