"""Prompts and masks from RLE runs against the former pipeline (pycocotools-decoded full-size masks)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from sample_layouts import web_members

from samclip.data.bad_samples import BadSample
from samclip.data.batches import ClipBatch, SamBatch
from samclip.data.clip_stream import ClipStream
from samclip.data.device_prefetch import DevicePrefetcher
from samclip.data.images import decode_image_reduced
from samclip.data.prompts_sampling import mask_boxes
from samclip.data.rle_runs import ResizedFrame, resize_runs, resize_runs_many
from samclip.data.sa1b import check_rles_runs, decode_masks, rle_counts
from samclip.data.sam_stream import SamStream
from samclip.data.synth import write_tar
from samclip.models.preprocess import SAM_PAD_VALUE


def random_rle(rng: np.random.Generator, height: int, width: int) -> dict:
    mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
    if rng.random() < 0.3:  # a blob with holes, the other common shape
        mask[:] = 0
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        mask[y0 : y0 + int(rng.integers(1, height + 1)), x0 : x0 + int(rng.integers(1, width + 1))] = 1
        mask &= (rng.random((height, width)) < 0.9).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": rle["counts"]}


@pytest.mark.parametrize("case", range(40))
def test_runs_resize_to_the_decoded_and_resampled_mask(case: int) -> None:
    """Painted, counted and boxed from the runs = decode_masks (pycocotools + nearest), down and up."""
    rng = np.random.default_rng(case)
    height, width = (int(v) for v in rng.integers(1, 70, 2))
    out_height, out_width = (int(v) for v in rng.integers(1, 90, 2))
    rle = random_rle(rng, height, width)
    expected = decode_masks([rle], height, width, out_height, out_width)[0]
    masks = resize_runs(rle_counts(rle["counts"]), ResizedFrame.of(height, width, out_height, out_width))
    np.testing.assert_array_equal(masks.paint(out_height, out_width), expected)
    assert masks.num_pixels == expected.sum()
    if expected.any():
        np.testing.assert_array_equal(masks.box(), mask_boxes(expected[None])[0])
        points = masks.points(7, rng).astype(int)
        assert expected[points[:, 1], points[:, 0]].all()
    else:
        assert masks.i0.size == 0


def test_points_are_uniform_over_the_resized_mask() -> None:
    """Every pixel of a mask spread over several columns and runs is drawn about equally often."""
    mask = np.zeros((9, 7), dtype=np.uint8)
    mask[1:4, 1] = mask[6:8, 1] = mask[0:9, 3] = mask[2, 5] = 1  # 15 pixels in 5 runs over 3 columns
    rle = mask_utils.encode(np.asfortranarray(mask))
    masks = resize_runs(rle_counts(rle["counts"]), ResizedFrame.of(9, 7, 9, 7))
    points = masks.points(30000, np.random.default_rng(0)).astype(int)
    counts = np.zeros_like(mask, dtype=np.int64)
    np.add.at(counts, (points[:, 1], points[:, 0]), 1)
    assert (counts[mask == 0] == 0).all()
    expected = 30000 / mask.sum()
    assert np.abs(counts[mask == 1] - expected).max() < 5 * np.sqrt(expected)  # 5 sigma


def sam_stream(synth, reference: bool, draft: bool = False, image_size: int = 128) -> SamStream:
    stream = SamStream(
        synth.sam_pattern,
        global_batch_size=2,
        image_size=image_size,
        masks_per_image=4,
        min_mask_area=0,
        box_prompt_fraction=0.5,
        max_points=3,
        return_gt_masks=True,
        num_workers=0,
        steps_per_epoch=6,
        seed=3,
        draft_decode=draft,
    )
    stream.builder.reference = reference
    return stream


def test_prompts_from_runs_match_prompts_from_decoded_masks(synth) -> None:
    """Same seed: the same masks, the same kind split and boxes (noise included); points on their masks."""
    for ours, theirs in zip(sam_stream(synth, False), sam_stream(synth, True), strict=True):
        assert ours.keys == theirs.keys
        for mine, reference in zip(ours.gt_masks, theirs.gt_masks, strict=True):
            assert torch.equal(mine, reference)
        assert len(ours.prompts) == len(theirs.prompts)
        for mine, reference in zip(ours.prompts, theirs.prompts, strict=True):
            assert mine.image_index == reference.image_index
            if reference.boxes is not None:
                assert torch.equal(mine.boxes, reference.boxes)
            else:
                assert mine.point_coords.shape == reference.point_coords.shape
                assert torch.equal(mine.point_labels, reference.point_labels)
        for image in range(len(ours.keys)):
            groups = [g for g in ours.prompts if g.image_index == image]
            k = 0
            for group in groups:
                for n in range(group.num_prompts):
                    if group.point_coords is not None:
                        xs, ys = group.point_coords[n].long().unbind(-1)
                        assert ours.gt_masks[image][k + n][ys, xs].all()
                k += group.num_prompts


@pytest.mark.parametrize("draft", [False, True])
def test_sam_images_normalise_to_the_former_float_images(synth, draft: bool) -> None:
    """uint8 batches, converted by .to(): the former images within a grey level (full decode), a few
    levels on average at 1/2-scale decode; padding exactly SAM_PAD_VALUE."""
    for ours, theirs in zip(
        sam_stream(synth, False, draft, 64), sam_stream(synth, True, image_size=64), strict=True
    ):
        assert ours.images.dtype == torch.uint8 and theirs.images.dtype == torch.float32
        converted = ours.to("cpu")
        levels = (converted.images * 255 - theirs.images * 255).abs().round()
        # A reduced-scale decode is another low-pass than the bilinear's: edges differ (mean stays small).
        assert levels.mean() < (0.05 if not draft else 2.5)
        if not draft:
            assert levels.max() <= 1
        for image, (height, width) in zip(converted.images, ours.input_sizes.tolist(), strict=True):
            pad = torch.tensor(SAM_PAD_VALUE).view(3, 1, 1)
            assert torch.equal(image[:, height:, :], pad.expand(3, 64 - height, 64))
            assert torch.equal(image[:, :, width:], pad.expand(3, 64, 64 - width))
    assert draft is False or any(
        s[0] >= 128 or s[1] >= 128 for b in sam_stream(synth, True) for s in b.original_sizes.tolist()
    )


def test_uint8_conversion_is_the_former_to_tensor_and_idempotent() -> None:
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    batch = ClipBatch(pixels, 8).to("cpu")
    assert torch.equal(batch.images, pixels.float() / 255.0)
    assert batch.to("cpu").images is batch.images  # float images pass through
    sizes = torch.tensor([[5, 8], [8, 3]])
    sam = SamBatch(pixels, sizes, sizes, []).to("cpu")
    pad = torch.tensor(SAM_PAD_VALUE).view(3, 1, 1)
    assert torch.equal(sam.images[0, :, :5], pixels[0, :, :5].float() / 255.0)
    assert torch.equal(sam.images[0, :, 5:], pad.expand(3, 3, 8))
    assert torch.equal(sam.images[1, :, :, 3:], pad.expand(3, 8, 5))


def clip_stream(synth, reference: bool, draft: bool, train: bool = True) -> ClipStream:
    stream = ClipStream(
        synth.clip_pattern,
        resolutions=[32, 48],
        base_batch_size=4,
        base_resolution=32,
        num_workers=0,
        steps_per_epoch=8,
        crop_scale=(0.3, 1.0),
        train=train,
        draft_decode=draft,
        seed=1,
    )
    stream.builder.reference = reference
    return stream


@pytest.mark.parametrize(("draft", "train"), [(False, True), (True, True), (False, False)])
def test_clip_uint8_batches_normalise_to_the_former_float_batches(synth, draft: bool, train: bool) -> None:
    """Same seed, same samples and views: within one grey level of the former PIL-bicubic float batches
    (full decode); with draft decode, where a crop is at least twice the resolution, under 2.5 levels on
    average (sharp synthetic edges differ most; BENCHMARKS.md has the figures on SA-1B- and web-sized data)."""
    worst = []
    for ours, theirs in zip(
        clip_stream(synth, False, draft, train), clip_stream(synth, True, False, train), strict=True
    ):
        assert ours.keys == theirs.keys and ours.images.dtype == torch.uint8
        levels = (ours.to("cpu").images * 255 - theirs.images * 255).abs().round()
        worst.append(float(levels.max()))
        assert levels.mean() < (0.2 if not draft else 2.5)
    if draft:
        assert max(worst) > 1  # some crops did decode at reduced scale
    else:
        assert max(worst) <= 1


def test_reduced_decode_keeps_the_full_oriented_size() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown 300 wide, 500 high
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    requested = []
    decoded = decode_image_reduced(buffer.getvalue(), lambda w, h: requested.append((w, h)) or (100, 160))
    assert requested == [(300, 500)] and (decoded.full_width, decoded.full_height) == (300, 500)
    assert decoded.image.size == (150, 250)  # 1/2 scale: the smallest DCT scale still >= 100 x 160
    assert decode_image_reduced(buffer.getvalue(), None).image.size == (300, 500)


@pytest.mark.parametrize("case", range(10))
def test_many_masks_at_once_equal_one_at_a_time(case: int) -> None:
    """The batched run decoder and resize (one pass per image) against the per-mask ones."""
    rng = np.random.default_rng(100 + case)
    height, width = (int(v) for v in rng.integers(1, 40, 2))
    out_height, out_width = (int(v) for v in rng.integers(1, 60, 2))
    rles = [random_rle(rng, height, width) for _ in range(int(rng.integers(1, 9)))]
    _, runs, per_mask = check_rles_runs(rles, height, width)
    singles = [rle_counts(r["counts"]) for r in rles]
    assert per_mask.tolist() == [s.size for s in singles]
    np.testing.assert_array_equal(runs, np.concatenate(singles))
    frame = ResizedFrame.of(height, width, out_height, out_width)
    for many, single in zip(resize_runs_many(runs, per_mask, frame), singles, strict=True):
        np.testing.assert_array_equal(
            many.paint(out_height, out_width), resize_runs(single, frame).paint(out_height, out_width)
        )


def test_a_bad_string_among_many_is_the_same_bad_sample() -> None:
    good = random_rle(np.random.default_rng(0), 6, 7)
    short = {
        "size": [6, 7],
        "counts": mask_utils.encode(np.asfortranarray(np.ones((6, 6), np.uint8)))["counts"],
    }
    with pytest.raises(BadSample, match="run lengths sum to 36, not h\\*w = 42"):
        check_rles_runs([good, short, good], 6, 7)
    with pytest.raises(BadSample, match="outside the 6-bit alphabet"):
        check_rles_runs([good, {"size": [6, 7], "counts": "ab~"}], 6, 7)


def test_device_prefetcher_on_cpu_is_batch_to_device() -> None:
    pixels = [torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8) for _ in range(3)]
    batches = list(DevicePrefetcher(iter([ClipBatch(p, 4) for p in pixels]), "cpu"))
    assert len(batches) == 3
    for batch, source in zip(batches, pixels, strict=True):
        assert torch.equal(batch.images, source.float() / 255.0)


def test_a_bad_clip_sample_does_not_shift_the_views_after_it(tmp_path) -> None:
    """The view is drawn before decoding; a sample that proves bad gives its draws back."""
    members = web_members(0, 12)
    name, jpg = members[3 * 3]
    members[3 * 3] = (name, jpg[: len(jpg) // 2])  # sample 3's JPEG cut short: its header still opens
    write_tar(str(tmp_path / "00000.tar"), members)

    def stream(reference: bool) -> ClipStream:
        clip = ClipStream(
            str(tmp_path / "00000.tar"),
            resolutions=[32],
            base_batch_size=4,
            base_resolution=32,
            num_workers=0,
            steps_per_epoch=2,
            crop_scale=(0.3, 1.0),
            draft_decode=False,
        )
        clip.builder.reference = reference
        return clip

    ours, theirs = list(stream(False)), list(stream(True))
    assert [b.keys for b in ours] == [b.keys for b in theirs]
    assert "000000003" not in [key for b in ours for key in b.keys]
    for mine, reference in zip(ours, theirs, strict=True):
        assert (mine.to("cpu").images * 255 - reference.images * 255).abs().round().mean() < 0.2


def test_pin_memory_reaches_the_batches(synth, monkeypatch) -> None:
    """With pin_memory, each batch's own pin_memory runs: in the main process (num_workers=0), and in
    the DataLoader's pinning thread through the worker output's pin_memory (no CUDA here to pin for real)."""
    from samclip.data import stream as stream_module

    pinned = []
    monkeypatch.setattr(ClipBatch, "pin_memory", lambda self: pinned.append(self.keys) or self)
    batches = list(clip_stream(synth, False, True))
    assert not pinned
    stream = clip_stream(synth, False, True)
    stream.pin_memory = True
    assert [b.keys for b in stream] == [b.keys for b in batches] == pinned
    output = stream_module._WorkerOutput(batches[0], 0, [], {}, [])
    assert output.pin_memory().batch is batches[0] and pinned[-1] == batches[0].keys
