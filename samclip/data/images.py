"""Image decoding that tells a truncated file from an undecodable one, and the [0, 1] tensor convention."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from samclip.data.bad_samples import BadSample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # orientations that swap width and height


def image_bytes(sample: dict) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    raise BadSample("no_image", f"files present: {sorted(k for k in sample if not k.startswith('__'))}")


def decode_image(data: bytes) -> Image.Image:
    """Fully decode to RGB (``load()`` so a truncated file fails here, not later in a transform).

    The EXIF orientation is applied (a camera's portrait photo is stored sideways), and 16-bit images
    are scaled to 8 bits (PIL's ``convert("RGB")`` clips them, leaving them almost white).
    """
    return decode_image_reduced(data, None).image


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image decoded at ``image.size`` from a file of ``full_width x full_height`` (EXIF-oriented)."""

    image: Image.Image
    full_width: int
    full_height: int

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) decoded pixels per stored pixel: 1 unless the JPEG was decoded at reduced scale."""
        return self.image.width / self.full_width, self.image.height / self.full_height


def decode_image_reduced(data: bytes, min_size: Callable[[int, int], tuple[int, int]] | None) -> DecodedImage:
    """Decode as :func:`decode_image`, a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) still at least
    ``min_size(full_width, full_height)`` = (width, height), both in the EXIF-oriented frame.

    Decoding at 1/2 scale reads a quarter of the pixels; what is resized down afterwards loses nothing
    it would have kept. ``min_size=None`` decodes at full size.
    """
    try:
        image = Image.open(io.BytesIO(data))
        swapped = image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS
        stored_width, stored_height = image.size
        full_width, full_height = (stored_height, stored_width) if swapped else (stored_width, stored_height)
        if min_size is not None:
            width, height = min_size(full_width, full_height)
            if image.format == "JPEG" and (width, height) != (full_width, full_height):
                image.draft(image.mode, (height, width) if swapped else (width, height))
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.UnidentifiedImageError as exn:
        raise BadSample("undecodable_image", str(exn)) from exn
    except OSError as exn:
        kind = "truncated_image" if "truncated" in str(exn).lower() else "undecodable_image"
        raise BadSample(kind, str(exn)) from exn
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exn:
        raise BadSample("undecodable_image", f"{type(exn).__name__}: {exn}") from exn
    return DecodedImage(to_rgb(image), full_width, full_height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, with 16-bit grey (``I;16*``, or ``I`` holding 16-bit values) scaled by 1/257."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and values.max(initial=0) <= 255:
            values = values * 257.0  # an 8-bit image stored as 32-bit integers
        eight_bit = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(eight_bit, mode="L").convert("RGB")
    return image.convert("RGB")


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] uint8 (a channels-first view of a fresh HWC copy)."""
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch refuses to share read-only memory
    return torch.from_numpy(array).permute(2, 0, 1)


def uint8_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1]: the one conversion, run wherever the pixels are (on the device)."""
    return pixels.float().div_(255.0)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float in [0, 1]."""
    return uint8_to_unit(to_uint8_tensor(image))
