"""Zero-shot image–text retrieval: Recall@1/5/10 in both directions (COCO / Flickr30k Karpathy test split)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from samclip.data.transforms import classification_transform
from samclip.eval.datasets.retrieval import (
    CaptionedImage,
    load_image_batch,
    read_caption_shards,
    read_karpathy_split,
)
from samclip.eval.encoders import resolve_encoder
from samclip.eval.metrics import retrieval_recall
from samclip.serve.merged import MergedSamClip


def evaluate_retrieval(
    model: MergedSamClip | None,
    run_dir: Path,
    *,
    layout: str,
    annotations: str | None = None,
    images_root: str | None = None,
    split: str = "test",
    shards: str | Sequence[str] | None = None,
    resolution: int = 336,
    recall_at: Sequence[int] = (1, 5, 10),
    encoder: str = "student",
    teacher_model: str | None = None,
    teacher_pretrained: str | None = None,
    batch_size: int = 64,
    max_images: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """``layout="karpathy"`` reads ``annotations`` (dataset_coco.json / dataset_flickr30k.json) with images
    under ``images_root``; ``"webdataset"`` reads ``shards`` (image + txt/json captions)."""
    clip = resolve_encoder(encoder, model, teacher_model, teacher_pretrained, device)
    pairs: Iterable[CaptionedImage]
    skipped: Counter[str] = Counter()
    if layout == "karpathy":
        if annotations is None or images_root is None:
            raise ValueError("layout=karpathy needs eval.annotations and eval.images_root")
        pairs = read_karpathy_split(annotations, images_root, split)
    elif layout == "webdataset":
        if shards is None:
            raise ValueError("layout=webdataset needs eval.shards")
        pairs = read_caption_shards(shards, skipped)
    else:
        raise ValueError(f"unknown retrieval layout {layout!r}; use 'karpathy' or 'webdataset'")
    if max_images is not None:
        pairs = itertools.islice(pairs, max_images)
    size = clip.native_resolution or resolution
    transform = classification_transform(size)

    image_embeds: list[torch.Tensor] = []
    captions: list[str] = []
    owners: list[int] = []  # caption j belongs to image owners[j]
    num_images = 0
    iterator = iter(pairs)
    with tqdm(desc="retrieval images", unit="img") as progress:
        while batch := list(itertools.islice(iterator, batch_size)):
            image_embeds.append(clip.encode_image(load_image_batch(batch, transform)).cpu())
            for offset, pair in enumerate(batch):
                captions += pair.captions
                owners += [num_images + offset] * len(pair.captions)
            num_images += len(batch)
            progress.update(len(batch))
    if not image_embeds:
        raise ValueError("the retrieval data yielded no images")
    starts = tqdm(range(0, len(captions), batch_size), desc="retrieval captions")
    text_embeds = torch.cat([clip.encode_text(captions[i : i + batch_size]).cpu() for i in starts])
    similarity = torch.cat(image_embeds) @ text_embeds.T
    results: dict[str, Any] = {"encoder": clip.name, "resolution": size}
    results.update(retrieval_recall(similarity, torch.tensor(owners), recall_at))
    results["num_images"], results["num_captions"] = similarity.shape
    results["skipped_samples"] = sum(skipped.values())
    results.update(sorted(skipped.items()))
    return results
