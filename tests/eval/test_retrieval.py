"""Retrieval on constructed image–caption sets whose recalls are known."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
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
)
from PIL import Image

from samclip.eval.retrieval import evaluate_retrieval
from samclip.serve.merged import load


def _caption(name: str) -> str:
    return f"a photo of a {name}."


def _write_karpathy(tmp_path, order):
    """Image i is colour i; its caption names class order[i] (order = identity: every pair matches)."""
    images = []
    for index, color in enumerate(COLORS):
        file_name = f"img_{index}.png"
        (tmp_path / "flickr30k-images").mkdir(exist_ok=True)
        Image.fromarray(np.broadcast_to(color, (30, 40, 3)).copy()).save(
            tmp_path / "flickr30k-images" / file_name
        )
        images.append(
            {
                "filename": file_name,
                "split": "test",
                "sentences": [{"raw": _caption(CLASSNAMES[order[index]])}],
            }
        )
    images.append({"filename": "train.png", "split": "train", "sentences": [{"raw": "unused"}]})
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


@pytest.fixture(scope="module")
def retrieving_checkpoint(make_final, clip_tower_file):
    """A student solved so that colour image i embeds at the dual basis of caption i's text embedding."""
    clip = open_clip.create_model(CLIP_NAME, pretrained=str(clip_tower_file)).eval()
    tokens = open_clip.get_tokenizer(CLIP_NAME)([_caption(name) for name in CLASSNAMES])
    with torch.no_grad():
        texts = clip.encode_text(tokens, normalize=True)  # [8, D]
    model = random_student(0)
    fit_clip_head(model, constant_images(COLORS, 224), dual_basis(texts.T).T)
    return make_final(model, "retrieving.pt")


@pytest.mark.parametrize(("order", "expected_r1"), [(list(range(8)), 100.0), ([1, 0, *range(2, 8)], 75.0)])
def test_karpathy_split_recall(retrieving_checkpoint, tmp_path, order, expected_r1):
    """Image i scores 1 with caption i's text and 0 with the others: matching pairs retrieve each other, and
    swapping two captions costs 2 of the 8 in both directions."""
    annotations = _write_karpathy(tmp_path, order)
    results = evaluate_retrieval(
        load(retrieving_checkpoint), tmp_path / "run", layout="karpathy", annotations=str(annotations),
        images_root=str(tmp_path / "flickr30k-images"), resolution=224, batch_size=3,
    )  # fmt: skip
    assert results["num_images"] == 8 and results["num_captions"] == 8
    assert results["text_to_image_R@1"] == expected_r1 and results["image_to_text_R@1"] == expected_r1
    assert results["text_to_image_R@10"] == 100.0


def test_webdataset_captions(retrieving_checkpoint, tmp_path):
    shard = tmp_path / "pairs-000.tar"
    with tarfile.open(shard, "w") as tar:
        for index, color in enumerate(COLORS):
            buffer = io.BytesIO()
            Image.fromarray(np.broadcast_to(color, (30, 40, 3)).copy()).save(buffer, format="PNG")
            caption = json.dumps({"captions": [_caption(CLASSNAMES[index])]}).encode()
            for suffix, payload in (("png", buffer.getvalue()), ("json", caption)):
                info = tarfile.TarInfo(f"{index:05d}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    results = evaluate_retrieval(
        load(retrieving_checkpoint), tmp_path, layout="webdataset", shards=str(shard), resolution=224
    )
    assert results["num_images"] == 8 and results["text_to_image_R@1"] == 100.0
