"""Image–caption pairs for retrieval: Karpathy-split json (COCO, Flickr30k) or webdataset shards."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from samclip.eval.datasets.classification import IMAGE_KEYS, _expand


@dataclass(frozen=True)
class CaptionedImage:
    image: Path | Image.Image
    captions: tuple[str, ...]


def read_karpathy_split(
    annotations: str | Path, images_root: str | Path, split: str = "test"
) -> list[CaptionedImage]:
    """``dataset_coco.json`` / ``dataset_flickr30k.json``: images at ``images_root/[filepath/]filename``."""
    annotations, images_root = Path(annotations), Path(images_root)
    if not annotations.is_file():
        raise FileNotFoundError(f"Karpathy split file {annotations} does not exist")
    entries = json.loads(annotations.read_text()).get("images")
    if not isinstance(entries, list):
        raise ValueError(f"{annotations} has no 'images' list (not a Karpathy split file)")
    pairs = []
    for entry in entries:
        if entry.get("split") != split:
            continue
        path = images_root / entry.get("filepath", "") / entry["filename"]
        captions = tuple(sentence["raw"].strip() for sentence in entry.get("sentences", []))
        if not captions:
            raise ValueError(f"{annotations}: image {entry['filename']} has no sentences")
        pairs.append(CaptionedImage(path, captions))
    if not pairs:
        raise ValueError(f"{annotations} has no images in split {split!r}")
    return pairs


def read_caption_shards(shards: str | Sequence[str]) -> Iterator[CaptionedImage]:
    """Shards with an image and its captions: ``txt`` (one caption per line) or ``json`` (``captions`` list
    or a ``caption`` string)."""
    dataset = wds.WebDataset(_expand(shards), shardshuffle=False, empty_check=False).decode("pil")
    for sample in dataset:
        image = next((sample[key] for key in IMAGE_KEYS.split(";") if key in sample), None)
        if image is None:
            raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image")
        yield CaptionedImage(image, _captions(sample))


def _captions(sample: dict) -> tuple[str, ...]:
    if "txt" in sample:
        return tuple(line.strip() for line in sample["txt"].splitlines() if line.strip())
    meta = sample.get("json")
    if isinstance(meta, dict):
        if isinstance(meta.get("captions"), list):
            return tuple(str(c).strip() for c in meta["captions"])
        if isinstance(meta.get("caption"), str):
            return (meta["caption"].strip(),)
    raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no txt or json captions")


def load_image_batch(
    pairs: Sequence[CaptionedImage], transform: Callable[[Image.Image], torch.Tensor]
) -> torch.Tensor:
    images = []
    for pair in pairs:
        if isinstance(pair.image, Path):
            if not pair.image.is_file():
                raise FileNotFoundError(f"image {pair.image} does not exist")
            with Image.open(pair.image) as image:
                images.append(transform(image.convert("RGB")))
        else:
            images.append(transform(pair.image.convert("RGB")))
    return torch.stack(images)
