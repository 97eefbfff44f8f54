"""Image decoding that tells a truncated file from an undecodable one, and the [0, 1] tensor convention."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

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
    with _classified_errors():
        header = _OpenedImage(data)
        if min_size is not None:
            header.draft(*min_size(header.full_width, header.full_height))
        return header.decode()


@dataclass(frozen=True)
class DecodedPixels:
    """[3, H, W] uint8 pixels decoded from a file of ``full_width x full_height`` (EXIF-oriented)."""

    pixels: torch.Tensor
    full_width: int
    full_height: int

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) decoded pixels per stored pixel, as :attr:`DecodedImage.scale`."""
        return self.pixels.shape[2] / self.full_width, self.pixels.shape[1] / self.full_height


def decode_pixels_reduced(
    data: bytes, min_size: Callable[[int, int], tuple[int, int]] | None
) -> DecodedPixels:
    """:func:`decode_image_reduced`'s pixels as a [3, H, W] uint8 tensor, the same values.

    A JPEG that decodes at full size, RGB or grey, with no EXIF rotation (what img2dataset writes) goes
    through torchvision's ``decode_jpeg``: the same libjpeg-turbo decode as PIL's (identical pixels, a
    test checks), straight into a tensor, without PIL's copies after it (``tobytes`` for the array, then
    the array's own). Everything else (a DCT-scaled decode, which torchvision does not offer; other
    formats and modes; a rotation) goes through PIL, and so does a file torchvision refuses, so that a
    truncated file is told from an undecodable one exactly as :func:`decode_image_reduced` tells them.
    """
    with _classified_errors():
        header = _OpenedImage(data)
        if min_size is not None:
            header.draft(*min_size(header.full_width, header.full_height))
        fits_torchvision = header.image.format == "JPEG" and header.image.mode in ("RGB", "L")
        if fits_torchvision and not header.reduced and header.orientation == 1:
            try:
                encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                pixels = decode_jpeg(encoded, mode=ImageReadMode.RGB)
            except RuntimeError:
                pass  # PIL's decode below raises the classified error (or decodes what libjpeg allows)
            else:
                return DecodedPixels(pixels, header.full_width, header.full_height)
        decoded = header.decode()
    return DecodedPixels(to_uint8_tensor(decoded.image), decoded.full_width, decoded.full_height)


class _OpenedImage:
    """A file's header read by PIL (no pixels yet): its EXIF orientation and oriented size."""

    def __init__(self, data: bytes) -> None:
        self.image = Image.open(io.BytesIO(data))
        self.orientation = self.image.getexif().get(_EXIF_ORIENTATION, 1)
        self.swapped = self.orientation in _TRANSPOSED_ORIENTATIONS
        stored_width, stored_height = self.image.size
        self.full_width, self.full_height = (
            (stored_height, stored_width) if self.swapped else (stored_width, stored_height)
        )
        self.reduced = False

    def draft(self, width: int, height: int) -> None:
        """Ask a JPEG for the smallest DCT scale still ``width x height`` (oriented frame) or larger."""
        if self.image.format == "JPEG" and (width, height) != (self.full_width, self.full_height):
            stored = self.image.size
            self.image.draft(self.image.mode, (height, width) if self.swapped else (width, height))
            self.reduced = self.image.size != stored

    def decode(self) -> DecodedImage:
        self.image.load()
        # exif_transpose returns a copy even when there is nothing to turn: a full image copy per sample.
        image = ImageOps.exif_transpose(self.image) if self.orientation != 1 else self.image
        return DecodedImage(to_rgb(image), self.full_width, self.full_height)


@contextmanager
def _classified_errors() -> Iterator[None]:
    """PIL's (and libjpeg's) exceptions -> ``BadSample`` with the kind the skip counters report."""
    try:
        yield
    except Image.UnidentifiedImageError as exn:
        raise BadSample("undecodable_image", str(exn)) from exn
    except OSError as exn:
        kind = "truncated_image" if "truncated" in str(exn).lower() else "undecodable_image"
        raise BadSample(kind, str(exn)) from exn
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exn:
        raise BadSample("undecodable_image", f"{type(exn).__name__}: {exn}") from exn


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
