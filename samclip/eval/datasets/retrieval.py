"""Image–caption pairs for retrieval: Karpathy-split json (COCO, Flickr30k) or webdataset shards."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from samclip.data.bad_samples import BadSample
from samclip.data.images import decode_image, to_rgb
from samclip.eval.datasets.classification import IMAGE_KEYS, _expand

log = logging.getLogger(__name__)


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


def read_caption_shards(
    shards: str | Sequence[str], skipped: Counter[str] | None = None
) -> Iterator[CaptionedImage]:
    """Shards with an image and its captions: ``txt`` (one caption per line) or ``json`` (``captions`` list
    or a ``caption`` string). A sample whose caption is not UTF-8 or whose image does not decode is skipped
    and counted in ``skipped`` (``skipped/<kind>``), its shard and key logged."""
    skipped = Counter() if skipped is None else skipped
    dataset = wds.WebDataset(_expand(shards), shardshuffle=False, empty_check=False)
    for sample in dataset:
        data = next((sample[key] for key in IMAGE_KEYS.split(";") if key in sample), None)
        if data is None:
            raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image")
        try:
            image = decode_image(data)
            texts = {key: sample[key].decode("utf-8") for key in ("txt", "json") if key in sample}
        except BadSample as bad:
            _skip(skipped, bad.kind, sample, bad.detail)
            continue
        except UnicodeDecodeError as error:
            _skip(skipped, "undecodable_caption", sample, str(error))
            continue
        yield CaptionedImage(image, _captions({**sample, **texts}))


def _skip(skipped: Counter[str], kind: str, sample: dict, detail: str) -> None:
    skipped[f"skipped/{kind}"] += 1
    log.warning(
        "retrieval: skipped sample %r in shard %s (%s: %s)",
        sample.get("__key__"),
        sample.get("__url__"),
        kind,
        detail,
    )


def _captions(sample: dict) -> tuple[str, ...]:
    if "txt" in sample:
        return tuple(line.strip() for line in sample["txt"].splitlines() if line.strip())
    meta = sample.get("json")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError as error:
            raise ValueError(
                f"sample {sample.get('__key__')} in {sample.get('__url__')}: json does not parse: {error}"
            ) from error
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
            images.append(transform(decode_image(pair.image.read_bytes())))
        else:
            images.append(transform(to_rgb(pair.image)))
    return torch.stack(images)
