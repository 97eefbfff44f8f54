from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from samclip.data.bad_samples import BadSample
from samclip.data.manifest import read_manifest, split_subset
from samclip.data.sa1b import check_rle, decode_masks, parse_annotation_file, rle_counts


def runs_by_hand(mask: np.ndarray) -> list[int]:
    """COCO run lengths: column-major, starting with a (possibly empty) run of zeros."""
    runs, value, length = [], 0, 0
    for pixel in mask.flatten(order="F"):
        if pixel != value:
            runs.append(length)
            value, length = pixel, 0
        length += 1
    return [*runs, length]


@pytest.mark.parametrize("case", range(30))
def test_rle_counts_read_pycocotools_strings(case: int) -> None:
    rng = np.random.default_rng(case)
    height, width = (int(v) for v in rng.integers(1, 60, 2))
    mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
    if case == 0:
        mask[:] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    assert rle_counts(rle["counts"]).tolist() == runs_by_hand(mask)


def test_rle_round_trips_through_pycocotools() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((37, 53, 5)) < 0.3
    rles = [mask_utils.encode(np.asfortranarray(masks[..., i].astype(np.uint8))) for i in range(5)]
    checked = [check_rle({"size": r["size"], "counts": r["counts"].decode()}, 37, 53) for r in rles]
    decoded = decode_masks(checked, 37, 53, 37, 53)  # same size: no resampling
    assert np.array_equal(decoded, masks.transpose(2, 0, 1))


def test_masks_resize_like_torch_nearest_exact() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((3, 150, 225)) < 0.5
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    ours = decode_masks(rles, 150, 225, 171, 256)
    reference = F.interpolate(torch.from_numpy(masks)[None].float(), (171, 256), mode="nearest-exact")[
        0
    ].bool()
    assert np.array_equal(ours, reference.numpy())


def test_malformed_rle_is_detected() -> None:
    good = mask_utils.encode(np.asfortranarray(np.eye(6, 7, dtype=np.uint8)))["counts"].decode()
    assert check_rle({"size": [6, 7], "counts": good}, 6, 7)
    for segmentation, message in [
        (
            {"size": [6, 7], "counts": good[:-2]},
            "sum to",
        ),  # runs short of h*w (pycocotools would decode garbage)
        ({"size": [6, 7], "counts": good + "5"}, "sum to"),
        ({"size": [6, 7], "counts": good + "\x7f"}, "alphabet"),
        ({"size": [7, 6], "counts": good}, "is not the image's"),
        ({"size": [6, 7], "counts": [1, 2, 3]}, "uncompressed"),
        ({"counts": good}, "not an RLE dict"),
    ]:
        with pytest.raises(BadSample, match=message) as info:
            check_rle(segmentation, 6, 7)
        assert info.value.kind == "malformed_rle"


def test_synthetic_sa1b_json_is_metas_format(synth) -> None:
    with tarfile.open(synth.sam_shards[0]) as tar:
        names = tar.getnames()
        document = json.load(tar.extractfile(names[1]))
        jpg = tar.extractfile(names[0]).read()
    assert names[:2] == ["sa_1.jpg", "sa_1.json"]
    assert set(document) == {"image", "annotations"}
    assert set(document["image"]) == {"image_id", "width", "height", "file_name"}
    annotation = document["annotations"][0]
    assert set(annotation) == {
        "id",
        "segmentation",
        "bbox",
        "area",
        "predicted_iou",
        "stability_score",
        "point_coords",
        "crop_box",
    }
    record = parse_annotation_file(json.dumps(document).encode())
    from PIL import Image

    assert Image.open(io.BytesIO(jpg)).size == (record.width, record.height)
    mask = mask_utils.decode(annotation["segmentation"])
    assert mask.sum() == annotation["area"]
    assert list(mask_utils.toBbox(annotation["segmentation"])) == annotation["bbox"]
    x, y = (int(v) for v in annotation["point_coords"][0])
    assert mask[y, x] == 1


def test_manifest_split_is_deterministic_exact_and_disjoint(tmp_path) -> None:
    ids = list(range(1, 10001))
    train, val = split_subset(ids, fraction=0.057, val_fraction=0.01, seed=0)
    assert len(train) + len(val) == 570 and len(val) == 6
    assert not set(train) & set(val)
    assert (train, val) == split_subset(list(reversed(ids)), 0.057, 0.01, seed=0)
    assert train != split_subset(ids, 0.057, 0.01, seed=1)[0]
    path = tmp_path / "m.txt"
    path.write_text("# subset\n12\nsa_13\n\n")
    assert read_manifest(str(path)) == {12, 13}
    path.write_text("12\nfoo\n")
    with pytest.raises(ValueError, match=r"m\.txt:2: 'foo'"):
        read_manifest(str(path))
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        read_manifest(str(tmp_path / "nope.txt"))
