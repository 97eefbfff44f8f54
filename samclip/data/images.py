"""Image decoding that tells a truncated file from an undecodable one, and the [0, 1] tensor convention."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps

from samclip.data.bad_samples import BadSample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


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
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.UnidentifiedImageError as exn:
        raise BadSample("undecodable_image", str(exn)) from exn
    except OSError as exn:
        kind = "truncated_image" if "truncated" in str(exn).lower() else "undecodable_image"
        raise BadSample(kind, str(exn)) from exn
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exn:
        raise BadSample("undecodable_image", f"{type(exn).__name__}: {exn}") from exn
    return to_rgb(image)


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


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float in [0, 1]."""
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch refuses to share read-only memory
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
