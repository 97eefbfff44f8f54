"""What a cached teacher reads, decided by the kind of the stream its term reads (not by the teacher).

``images`` (D_CLIP): K crop views per sample, drawn by the stream's own rule from a (view seed, key)
generator and rendered at the teacher's input size; the stored views are what training replays.
``prompted_images`` (D_SAM): the sample framed as the stream frames it (longest side to the frame, padded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image

from samclip.data.bad_samples import BadSample
from samclip.data.clip_stream import CropView, decode_clip_sample, draw_crop_view, render_crop_view
from samclip.data.images import decode_image, to_tensor
from samclip.data.sa1b import image_id_from_key
from samclip.data.teacher_cache import CacheManifest, SidecarShard, view_generator
from samclip.models.preprocess import SAM_PAD_VALUE, pad_to_square, resized_longest_side_shape


class SampleInputs(NamedTuple):
    key: str
    inputs: list[torch.Tensor]  # [3, S, S] each, float in [0, 1]: what the teacher sees
    views: np.ndarray | None  # int32 [K, 5] for crop views (one output row per view); None: one input


class CacheInputs(Protocol):
    stream_kind: str

    @property
    def side(self) -> int:
        """The side of every input the teacher sees."""

    def manifest_fields(self) -> dict[str, Any]: ...

    def sample(self, raw: dict) -> SampleInputs | None:
        """The teacher's inputs of one raw sample; None to leave it out (not in the manifest). Raises BadSample."""

    def input_of(
        self, raw: dict, sidecar: SidecarShard, key: str, rng: np.random.Generator
    ) -> tuple[torch.Tensor, int | None]:
        """One stored entry's input recomputed (``verify``): the input and the row of the outputs it gave."""


def sam_frame_image(jpg: bytes, image_size: int) -> torch.Tensor:
    """An SA-1B image as D_SAM frames it for the teacher: longest side to ``image_size``, padded; [3, S, S]."""
    image = decode_image(jpg)
    height, width = resized_longest_side_shape(image.height, image.width, image_size)
    resized = to_tensor(image.resize((width, height), Image.Resampling.BILINEAR))
    return pad_to_square(resized[None], image_size, SAM_PAD_VALUE)[0]


def clip_views(
    image: Image.Image, key: str, num_views: int, crop_scale: tuple[float, float], seed: int
) -> list[CropView]:
    rng = view_generator(key, seed)
    return [draw_crop_view(image.width, image.height, crop_scale, rng) for _ in range(num_views)]


@dataclass(frozen=True)
class CropViewInputs:
    """D_CLIP for a teacher of input side ``input_size``: K views per sample."""

    input_size: int
    num_views: int
    crop_scale: tuple[float, float]
    view_seed: int = 0
    stream_kind: str = "images"

    @property
    def side(self) -> int:
        return self.input_size

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "views_per_sample": self.num_views,
            "crop_scale": self.crop_scale,
            "view_seed": self.view_seed,
            "input_size": self.input_size,
        }

    def sample(self, raw: dict) -> SampleInputs:
        key, image = decode_clip_sample(raw)
        views = clip_views(image, key, self.num_views, self.crop_scale, self.view_seed)
        stored = np.array([[v.left, v.top, v.width, v.height, int(v.flip)] for v in views], np.int32)
        return SampleInputs(key, [render_crop_view(image, v, self.input_size) for v in views], stored)

    def input_of(
        self, raw: dict, sidecar: SidecarShard, key: str, rng: np.random.Generator
    ) -> tuple[torch.Tensor, int | None]:
        _, image = decode_clip_sample(raw)
        views = sidecar.read(key, "views.npy")
        k = int(rng.integers(len(views)))
        left, top, width, height, flip = (int(v) for v in views[k])
        return render_crop_view(image, CropView(left, top, width, height, bool(flip)), self.input_size), k


@dataclass(frozen=True)
class FrameInputs:
    """D_SAM: each SA-1B image in the stream's ``image_size`` frame, only the ids of ``keep_ids`` if given."""

    image_size: int
    keep_ids: frozenset[int] | None = None
    view_seed: int = 0
    stream_kind: str = "prompted_images"

    @property
    def side(self) -> int:
        return self.image_size

    def manifest_fields(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "view_seed": self.view_seed}

    def sample(self, raw: dict) -> SampleInputs | None:
        key = raw["__key__"]
        if self.keep_ids is not None and image_id_from_key(key) not in self.keep_ids:
            return None
        if "jpg" not in raw:
            raise BadSample("no_image", f"files: {sorted(raw)}")
        return SampleInputs(key, [sam_frame_image(raw["jpg"], self.image_size)], None)

    def input_of(
        self, raw: dict, sidecar: SidecarShard, key: str, rng: np.random.Generator
    ) -> tuple[torch.Tensor, int | None]:
        return sam_frame_image(raw["jpg"], self.image_size), None


def cache_inputs(
    stream_kind: str,
    *,
    input_size: Callable[[], int],
    num_views: int = 1,
    crop_scale: tuple[float, float] = (0.9, 1.0),
    view_seed: int = 0,
    image_size: int = 1024,
    keep_ids: frozenset[int] | None = None,
) -> CacheInputs:
    """The inputs of a teacher whose term reads a stream of ``stream_kind`` (``input_size``: the teacher's
    own side, asked only for crop views)."""
    if stream_kind == "images":
        return CropViewInputs(input_size(), num_views, crop_scale, view_seed)
    if stream_kind == "prompted_images":
        return FrameInputs(image_size, keep_ids, view_seed)
    raise ValueError(
        f"a teacher cache cannot read a stream of kind {stream_kind!r} (images or prompted_images)"
    )


def inputs_of_manifest(manifest: CacheManifest, input_size: Callable[[], int]) -> CacheInputs:
    """The inputs a written cache was computed from (what ``verify`` recomputes)."""
    return cache_inputs(
        str(manifest.stream_kind),
        input_size=input_size,
        num_views=manifest.views_per_sample or 1,
        crop_scale=manifest.crop_scale or (0.9, 1.0),
        view_seed=manifest.view_seed,
        image_size=manifest.image_size or 1024,
    )
