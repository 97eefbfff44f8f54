from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

from samclip.data.prompts_sampling import sample_prompts
from samclip.data.sam_stream import SamStream
from samclip.models.preprocess import SAM_PAD_VALUE


def random_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    masks = np.zeros((count, height, width), dtype=bool)
    for i in range(count):
        y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
        y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
        masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
        masks[i, y0, x0] = True
    return masks


def tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.where(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def check_prompts(groups, order, masks: np.ndarray, noise_max: float) -> None:
    """Boxes are boxes of their mask (within the noise bound, overlapping it); points lie on it."""
    k = 0
    for group in groups:
        n = group.num_prompts
        for i in range(n):
            mask = masks[order[k + i]]
            tight = tight_box(mask)
            if group.boxes is not None:
                box = group.boxes[i].numpy()
                assert np.all(np.abs(box - tight) <= noise_max + 1e-4)
                x0, y0, x1, y1 = np.round(box).astype(int)
                assert mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1].any()
                if noise_max == 0:
                    np.testing.assert_array_equal(box, tight)  # contains the mask, touches it on every side
            else:
                assert torch.all(group.point_labels[i] == 1)
                for x, y in group.point_coords[i].numpy().astype(int):
                    assert mask[y, x]
        k += n
    assert sorted(order.tolist()) == list(range(len(masks)))


@pytest.mark.parametrize("seed", range(5))
def test_every_prompt_lies_on_its_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, 24, 40, 56)
    groups, order = sample_prompts(
        masks, 3, rng, box_prompt_fraction=0.4, max_points=3, box_noise_std=0.1, box_noise_max=20
    )
    check_prompts(groups, order, masks, noise_max=20)
    kinds = [
        (g.boxes is not None, None if g.point_coords is None else g.point_coords.shape[1]) for g in groups
    ]
    assert len(kinds) == len(set(kinds))  # one group per kind
    assert all(g.image_index == 3 for g in groups)


def test_noise_free_boxes_are_tight_boxes() -> None:
    rng = np.random.default_rng(7)
    masks = random_masks(rng, 10, 30, 30)
    groups, order = sample_prompts(
        masks, 0, rng, box_prompt_fraction=1.0, max_points=1, box_noise_std=0.0, box_noise_max=0
    )
    assert len(groups) == 1 and groups[0].boxes.shape == (10, 4)
    check_prompts(groups, order, masks, noise_max=0)


def test_sam_batches_follow_segment_anythings_preprocess(synth) -> None:
    stream = SamStream(
        synth.sam_pattern,
        global_batch_size=2,
        image_size=128,
        masks_per_image=4,
        min_mask_area=0,
        box_prompt_fraction=0.5,
        max_points=3,
        return_gt_masks=True,
        num_workers=0,
        steps_per_epoch=3,
    )
    transform = ResizeLongestSide(128)
    pad = torch.tensor(SAM_PAD_VALUE).view(3, 1, 1)
    for batch in stream:
        batch = batch.to("cpu")  # uint8 from the stream -> float in [0, 1]
        for i, key in enumerate(batch.keys):
            h, w = batch.input_sizes[i].tolist()
            oh, ow = batch.original_sizes[i].tolist()
            assert (h, w) == transform.get_preprocess_shape(oh, ow, 128)
            assert batch.gt_masks[i].shape[0] <= 4
            assert not batch.gt_masks[i][:, h:, :].any() and not batch.gt_masks[i][:, :, w:].any()
            image = batch.images[i]
            assert torch.allclose(image[:, h:, :], pad.expand(3, 128 - h, 128)) and torch.allclose(
                image[:, :, w:], pad.expand(3, 128, 128 - w)
            )
            del key
        for i in range(len(batch.keys)):
            groups = [g for g in batch.prompts if g.image_index == i]
            masks = batch.gt_masks[i].numpy()
            check_prompts(groups, np.arange(len(masks)), masks, noise_max=20)


def test_sam_image_resize_matches_resize_longest_side(synth) -> None:
    import tarfile

    with tarfile.open(synth.sam_shards[0]) as tar:
        jpg = tar.extractfile("sa_1.jpg").read()
    import io

    original = np.array(Image.open(io.BytesIO(jpg)).convert("RGB"))
    reference = ResizeLongestSide(128).apply_image(original)
    stream = SamStream(
        synth.sam_pattern,
        global_batch_size=1,
        image_size=128,
        num_workers=0,
        steps_per_epoch=12,
        min_mask_area=0,
    )
    batch = next(b for b in stream if b.keys == ["sa_1"])
    h, w = reference.shape[:2]
    assert batch.images.dtype == torch.uint8
    ours = batch.images[0, :, :h, :w].permute(1, 2, 0).numpy().astype(int)
    # torch's antialiased uint8 bilinear computes PIL's filter in fixed point: at most one level apart.
    difference = np.abs(ours - reference.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_masks_below_min_area_are_never_sampled_and_n_is_capped(tmp_path) -> None:
    import json

    from pycocotools import mask as mask_utils

    from samclip.data.synth import make_web_image, write_tar

    height, width, areas = 40, 60, [30, 80, 200, 5, 120, 400]
    annotations = []
    for i, area in enumerate(areas):
        mask = np.zeros((height, width), dtype=np.uint8, order="F")
        mask.T.flat[i * 400 : i * 400 + area] = 1  # disjoint column-major runs of exactly `area` pixels
        rle = mask_utils.encode(mask)
        annotations.append(
            {
                "id": i,
                "area": area,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
            }
        )
    document = {
        "image": {"image_id": 1, "width": width, "height": height, "file_name": "sa_1.jpg"},
        "annotations": annotations,
    }
    jpg = make_web_image(height, width, np.random.default_rng(0))
    write_tar(str(tmp_path / "sa.tar"), [("sa_1.jpg", jpg), ("sa_1.json", json.dumps(document).encode())])

    def masks(**kwargs) -> torch.Tensor:
        stream = SamStream(
            str(tmp_path / "sa.tar"),
            global_batch_size=1,
            image_size=60,
            return_gt_masks=True,
            num_workers=0,
            steps_per_epoch=1,
            **kwargs,
        )
        return next(iter(stream)).gt_masks[0]

    kept = masks(min_mask_area=100, masks_per_image=32)
    assert sorted(int(m.sum()) for m in kept) == [120, 200, 400]  # image kept at its size: areas unchanged
    assert len(masks(min_mask_area=0, masks_per_image=4)) == 4


@pytest.mark.parametrize(
    ("fraction", "expect_boxes", "expect_points"), [(1.0, True, False), (0.0, False, True)]
)
def test_box_fraction_selects_the_prompt_kind(
    fraction: float, expect_boxes: bool, expect_points: bool
) -> None:
    rng = np.random.default_rng(0)
    masks = random_masks(rng, 12, 30, 30)
    groups, _ = sample_prompts(
        masks, 0, rng, box_prompt_fraction=fraction, max_points=2, box_noise_std=0.1, box_noise_max=20
    )
    assert any(g.boxes is not None for g in groups) == expect_boxes
    assert any(g.point_coords is not None for g in groups) == expect_points
