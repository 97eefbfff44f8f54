from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from sample_layouts import write_web_shards
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.io import decode_jpeg

from samclip.data import images
from samclip.data.bad_samples import BadSample
from samclip.data.clip_stream import (
    ClipStream,
    clip_eval_transform,
    clip_train_transform,
    random_resized_crop_box,
)
from samclip.models.preprocess import SAM_PAD_VALUE


def assert_within_one_level(ours: torch.Tensor, pil: torch.Tensor) -> None:
    """torch's antialiased uint8 resize computes PIL's filter with other fixed-point rounding: at most one
    grey level apart (on noise a quarter of the pixels differ; on photos well under 1%, BENCHMARKS.md)."""
    levels = (ours * 255 - pil * 255).abs().round()
    assert levels.max() <= 1, levels.max()


@pytest.mark.parametrize("size", [(100, 157), (157, 100), (64, 64), (300, 97)])
def test_eval_transform_matches_torchvision(size: tuple[int, int]) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8))
    reference = T.Compose(
        [T.Resize(48, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(48), T.ToTensor()]
    )
    assert torch.equal(clip_eval_transform(image, 48), reference(image))


def test_train_crop_follows_random_resized_crop_bounds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(20, 400, 2))
        left, top, w, h = random_resized_crop_box(width, height, (0.3, 1.0), rng)
        assert left >= 0 and top >= 0 and left + w <= width and top + h <= height and w > 0 and h > 0


def test_train_transform_is_torchvisions_resized_crop_flipped_half_the_time() -> None:
    # Mid-range noise: PIL clips bicubic's overshoot after its first (horizontal) pass, torch after both,
    # so on full-range noise they differ where the overshoot clips (up to ~15 levels, BENCHMARKS.md).
    image = Image.fromarray(np.random.default_rng(1).integers(48, 208, (50, 70, 3), dtype=np.uint8))
    flips = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        left, top, w, h = random_resized_crop_box(70, 50, (0.5, 1.0), rng)
        flip = rng.random() < 0.5
        expected = TF.resized_crop(
            image, top, left, h, w, [32, 32], interpolation=T.InterpolationMode.BICUBIC
        )
        expected = TF.to_tensor(TF.hflip(expected) if flip else expected)
        ours = clip_train_transform(image, 32, np.random.default_rng(seed), crop_scale=(0.5, 1.0))
        assert_within_one_level(ours, expected)
        flips += flip
    assert 0 < flips < 20


@pytest.mark.parametrize("size", [(60, 100), (100, 60), (80, 80)])
def test_sam_frame_transform_is_segment_anythings_resize_and_pad_of_the_crop(size: tuple[int, int]) -> None:
    """``sam_frame=True``: the same crop and flip, framed by ResizeLongestSide + bottom/right padding."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8))
    for seed in range(6):
        out = clip_train_transform(image, 64, np.random.default_rng(seed), (0.5, 1.0), sam_frame=True)
        replay = np.random.default_rng(seed)
        left, top, w, h = random_resized_crop_box(image.width, image.height, (0.5, 1.0), replay)
        crop = np.asarray(image.crop((left, top, left + w, top + h)))
        resized = ResizeLongestSide(64).apply_image(crop)
        if replay.random() < 0.5:
            resized = resized[:, ::-1]
        expected = torch.tensor(SAM_PAD_VALUE).view(3, 1, 1).repeat(1, 64, 64)
        expected[:, : resized.shape[0], : resized.shape[1]] = (
            torch.from_numpy(resized.copy()).permute(2, 0, 1) / 255
        )
        assert out.shape == (3, 64, 64) and max(resized.shape[:2]) == 64
        assert_within_one_level(out, expected)
        torch.testing.assert_close(
            out[:, resized.shape[0] :], expected[:, resized.shape[0] :], atol=0, rtol=0
        )
        torch.testing.assert_close(
            out[..., resized.shape[1] :], expected[..., resized.shape[1] :], atol=0, rtol=0
        )


def test_sam_frame_resolutions_must_be_trained_resolutions(tmp_path) -> None:
    shards = write_web_shards(tmp_path, [4])
    with pytest.raises(
        ValueError, match=r"sam_frame_resolutions \[64\] are not among the resolutions \[32\]"
    ):
        ClipStream(
            shards, resolutions=[32], base_batch_size=2, base_resolution=32, sam_frame_resolutions=[64]
        )


def _jpeg(array: np.ndarray, mode: str | None = None, orientation: int | None = None) -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "orientation", "draft", "through_torchvision"),
    [
        (None, None, False, True),  # img2dataset's case: RGB, no rotation, full-size decode
        ("L", None, False, True),
        (None, 6, False, False),  # a rotation: PIL's exif_transpose
        ("CMYK", None, False, False),
        (None, None, True, False),  # a DCT-scaled decode: PIL's draft
    ],
)
def test_decoded_pixels_are_the_pil_decode(
    monkeypatch, mode, orientation, draft, through_torchvision
) -> None:
    """The stream's uint8 decode equals PIL's decode (``decode_image_reduced``) value for value, and takes
    torchvision's ``decode_jpeg`` exactly where it says it does."""
    rng = np.random.default_rng(0)
    smooth = TF.resize(torch.from_numpy(rng.integers(0, 256, (3, 12, 16), dtype=np.uint8)), [96, 128])
    data = _jpeg(smooth.permute(1, 2, 0).numpy().copy(), mode, orientation)
    calls = []
    monkeypatch.setattr(images, "decode_jpeg", lambda *a, **k: calls.append(1) or decode_jpeg(*a, **k))
    min_size = (lambda w, h: (w // 2, h // 2)) if draft else (lambda w, h: (w, h))
    ours = images.decode_pixels_reduced(data, min_size)
    reference = images.decode_image_reduced(data, min_size)
    assert bool(calls) == through_torchvision
    assert ours.pixels.dtype == torch.uint8 and (ours.full_width, ours.full_height) == (
        reference.full_width,
        reference.full_height,
    )
    assert ours.scale == reference.scale and (ours.scale == (0.5, 0.5)) == draft
    assert torch.equal(ours.pixels, images.to_uint8_tensor(reference.image))


def test_decoded_pixels_tell_a_truncated_jpeg_as_pil_does() -> None:
    data = _jpeg(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    for cut in (len(data) // 2, 300):
        with pytest.raises(BadSample) as ours:
            images.decode_pixels_reduced(data[:cut], lambda w, h: (w, h))
        with pytest.raises(BadSample) as reference:
            images.decode_image_reduced(data[:cut], lambda w, h: (w, h))
        assert ours.value.kind == reference.value.kind == "truncated_image"
