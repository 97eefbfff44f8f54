"""D_CLIP: img2dataset webdataset shards -> variable-resolution batches of unlabeled images."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from samclip.data.bad_samples import BadSample
from samclip.data.batches import SAM_PAD_VALUE_UINT8, ClipBatch, restore_sam_padding
from samclip.data.holdout import KeyHoldout
from samclip.data.images import (
    DecodedPixels,
    decode_image,
    decode_pixels_reduced,
    image_bytes,
    to_tensor,
    to_uint8_tensor,
    uint8_to_unit,
)
from samclip.data.resolution import VariableResolutionSchedule
from samclip.data.shards import count_samples, expand_urls
from samclip.data.stream import BatchBuilder, SampleReader, ShardedStream, epoch_length
from samclip.data.teacher_cache import CachedOutputs, StaleCacheError, TeacherCache, stack_outputs, view_index
from samclip.models.preprocess import resized_longest_side_shape

CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(left, top, w, h) by torchvision's RandomResizedCrop rule, drawn from ``rng``.

    Written out because torchvision's ``get_params`` draws from the global torch RNG, which would make
    the crops depend on the process rather than on (seed, step, rank).
    """
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


@dataclass(frozen=True)
class CropView:
    """One training view of a D_CLIP image: the random-resized-crop box in stored pixels and the flip.

    Resolution is not part of a view: the same view renders at the student's and at the teacher's size,
    which is what lets a teacher-embedding cache serve every stage resolution.
    """

    left: int
    top: int
    width: int
    height: int
    flip: bool


def draw_crop_view(
    width: int, height: int, crop_scale: tuple[float, float], rng: np.random.Generator
) -> CropView:
    """The crop box (torchvision's rule), then the flip, drawn from ``rng`` in that order."""
    left, top, w, h = random_resized_crop_box(width, height, crop_scale, rng)
    return CropView(left, top, w, h, flip=bool(rng.random() < 0.5))


def crop_view_pixels(
    decoded: DecodedPixels, view: CropView, resolution: int, sam_frame: bool = False
) -> torch.Tensor:
    """``view`` (in stored pixels) of ``decoded`` resized to ``resolution``: [3, R, R] uint8.

    Crop, then resize (torchvision's resized_crop: no pixel outside the crop is filtered in), with torch's
    antialiased uint8 bicubic (open_clip resizes bicubic with PIL: the same filter in fixed point, one or
    two grey levels apart on a few pixels in a thousand, 3-4x faster). ``sam_frame``: the crop keeps its aspect, framed as SAM frames its
    input (longest side to ``resolution``, bilinear as ``ResizeLongestSide``), padded bottom/right with
    ``SAM_PAD_VALUE_UINT8`` (``ClipBatch.to`` writes the exact pad value back). A reduced-scale decode
    (``decoded.scale`` < 1) has the crop box scaled to its pixels.
    """
    scale_x, scale_y = decoded.scale
    left, top = round(view.left * scale_x), round(view.top * scale_y)
    right = max(left + 1, round((view.left + view.width) * scale_x))
    bottom = max(top + 1, round((view.top + view.height) * scale_y))
    crop = decoded.pixels[None, :, top:bottom, left:right]
    if sam_frame:
        height, width = resized_longest_side_shape(view.height, view.width, resolution)
        resized = F.interpolate(crop, (height, width), mode="bilinear", antialias=True, align_corners=False)
    else:
        size = (resolution, resolution)
        resized = F.interpolate(crop, size, mode="bicubic", antialias=True, align_corners=False)
    pixels = resized[0].flip(-1) if view.flip else resized[0]
    if not sam_frame:
        return pixels
    framed = torch.empty(3, resolution, resolution, dtype=torch.uint8)
    framed[:] = torch.tensor(SAM_PAD_VALUE_UINT8, dtype=torch.uint8).view(3, 1, 1)
    framed[:, :height, :width] = pixels
    return framed


def view_decode_size(
    view: CropView, resolution: int, sam_frame: bool, width: int, height: int
) -> tuple[int, int]:
    """The smallest decode of a ``width x height`` image whose scaled ``view`` still covers its output."""
    if sam_frame:
        out_height, out_width = resized_longest_side_shape(view.height, view.width, resolution)
    else:
        out_height, out_width = resolution, resolution
    scale = min(1.0, max(out_width / view.width, out_height / view.height))
    return math.ceil(width * scale), math.ceil(height * scale)


def render_crop_view(
    image: Image.Image, view: CropView, resolution: int, sam_frame: bool = False
) -> torch.Tensor:
    """``view`` of ``image`` resized to ``resolution`` as :func:`crop_view_pixels`; [3, R, R] in [0, 1].

    ``sam_frame``: padded with the exact ``SAM_PAD_VALUE``, which is what the CLIP head sees in composed
    inference.
    """
    decoded = DecodedPixels(to_uint8_tensor(image), image.width, image.height)
    pixels = crop_view_pixels(decoded, view, resolution, sam_frame)
    unit = uint8_to_unit(pixels)
    if sam_frame:
        size = resized_longest_side_shape(view.height, view.width, resolution)
        restore_sam_padding(unit[None], [list(size)])
    return unit


def clip_train_transform(
    image: Image.Image,
    resolution: int,
    rng: np.random.Generator,
    crop_scale: tuple[float, float] = (0.9, 1.0),
    sam_frame: bool = False,
) -> torch.Tensor:
    """Random resized crop + horizontal flip drawn from ``rng``, rendered by :func:`render_crop_view`."""
    view = draw_crop_view(image.width, image.height, crop_scale, rng)
    return render_crop_view(image, view, resolution, sam_frame)


def clip_eval_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """Shorter side to ``resolution`` (bicubic, PIL), centre crop: CLIP's eval preprocess; [3, R, R] uint8."""
    resized = TF.resize(image, resolution, interpolation=TF.InterpolationMode.BICUBIC)
    return to_uint8_tensor(TF.center_crop(resized, resolution))


def clip_eval_transform(image: Image.Image, resolution: int) -> torch.Tensor:
    """:func:`clip_eval_pixels` in [0, 1].

    The model normalises its input itself, so unlike open_clip's transform this stops before ``Normalize``.
    """
    return uint8_to_unit(clip_eval_pixels(image, resolution))


def decode_clip_sample(raw: dict) -> tuple[str, Image.Image]:
    return raw["__key__"], decode_image(image_bytes(raw))


def decode_clip_sample_reduced(
    raw: dict, min_size: Callable[[int, int], tuple[int, int]]
) -> tuple[str, DecodedPixels]:
    """:func:`decode_clip_sample`'s pixels, at the smallest scale ``min_size`` allows, as uint8
    (``decode_pixels_reduced``)."""
    return raw["__key__"], decode_pixels_reduced(image_bytes(raw), min_size)


@dataclass
class CachedViews:
    """A CLIP teacher cache as one stream reads it: epoch ``global_step // steps_per_epoch`` picks the view."""

    cache: TeacherCache
    stream_seed: int
    steps_per_epoch: int | None

    def epoch(self, global_step: int) -> int:
        return global_step // self.steps_per_epoch if self.steps_per_epoch else 0

    def index(self, key: str, global_step: int, num_views: int) -> int:
        seed = self.cache.manifest.view_seed * 1_000_003 + self.stream_seed
        return view_index(key, self.epoch(global_step), num_views, seed)

    def view(self, url: str, key: str, global_step: int) -> tuple[CropView, CachedOutputs]:
        """The stored view this epoch reads, and the teacher's outputs of it (float32 of the bf16)."""
        views = self.cache.views(url, key)
        k = self.index(key, global_step, len(views))
        left, top, width, height, flip = (int(v) for v in views[k])
        return CropView(left, top, width, height, bool(flip)), self.cache.entry(url, key, row=k)


class ClipBatchBuilder(BatchBuilder[ClipBatch]):
    stream_name = "clip"

    def __init__(
        self,
        schedule: VariableResolutionSchedule,
        weights: np.ndarray,
        train: bool,
        crop_scale: tuple[float, float],
        sam_frame_resolutions: frozenset[int] = frozenset(),
        holdout: KeyHoldout | None = None,
        draft_decode: bool = True,
        cached: CachedViews | None = None,
    ) -> None:
        self.schedule = schedule
        self.cached = cached
        self.weights = weights
        self.train = train
        self.crop_scale = crop_scale
        self.sam_frame_resolutions = sam_frame_resolutions
        self.holdout = holdout or KeyHoldout()
        self.draft_decode = draft_decode
        self.reference = False  # the former pipeline (PIL resize, float images), for benchmarks

    def keep_key(self, key: str) -> bool:
        return self.holdout.keep(key)

    def _decode_with_view(
        self, raw: dict, resolution: int, sam_frame: bool, rng: np.random.Generator, global_step: int
    ) -> tuple[str, DecodedPixels, CropView, CachedOutputs | None]:
        """The sample decoded at the smallest scale its training view allows, that view, and the cached
        teacher outputs of it (None when the stream has no cache).

        Online, the view is drawn from the stored size before decoding; a sample that turns out bad gives
        its draws back, so the views of the samples after it are the ones a full decode would have drawn.
        With a cache, the stored view of this (sample, epoch) replaces the draw.
        """
        views: list[CropView] = []
        target = None
        if self.cached is not None:
            view, target = self.cached.view(raw.get("__url__", ""), raw["__key__"], global_step)
            views.append(view)

        def decode_size(width: int, height: int) -> tuple[int, int]:
            if not views:
                views.append(draw_crop_view(width, height, self.crop_scale, rng))
            if not self.draft_decode:
                return width, height
            return view_decode_size(views[0], resolution, sam_frame, width, height)

        state = rng.bit_generator.state
        try:
            key, decoded = decode_clip_sample_reduced(raw, decode_size)
        except BadSample:
            rng.bit_generator.state = state
            raise
        return key, decoded, views[0], target

    def build(self, global_step: int, reader: SampleReader, rng: np.random.Generator) -> ClipBatch:
        resolution, batch_size = self.schedule.per_rank_at(global_step)
        if self.reference:
            return self._build_reference(resolution, batch_size, reader, rng)
        images = torch.empty(batch_size, 3, resolution, resolution, dtype=torch.uint8)
        keys = []
        sam_frame = resolution in self.sam_frame_resolutions
        frame_sizes, targets = [], []
        for j in range(batch_size):
            source = int(rng.choice(len(self.weights), p=self.weights)) if len(self.weights) > 1 else 0
            if not self.train:  # the eval transform is PIL's bicubic (open_clip's), on the PIL image
                key, image = reader.next(source, decode_clip_sample)
                images[j] = clip_eval_pixels(image, resolution)
                keys.append(key)
                continue
            key, decoded, view, target = reader.next(
                source, lambda raw: self._decode_with_view(raw, resolution, sam_frame, rng, global_step)
            )
            images[j] = crop_view_pixels(decoded, view, resolution, sam_frame)
            if sam_frame:
                frame_sizes.append(resized_longest_side_shape(view.height, view.width, resolution))
            if target is not None:
                targets.append(target)
            keys.append(key)
        framed = sam_frame and self.train
        return ClipBatch(
            images=images,
            resolution=resolution,
            keys=keys,
            frame_sizes=torch.tensor(frame_sizes, dtype=torch.int64) if framed else None,
            teacher_embeds=stack_outputs(targets),
        )

    def _build_reference(
        self, resolution: int, batch_size: int, reader: SampleReader, rng: np.random.Generator
    ) -> ClipBatch:
        """The former pipeline: full decode, PIL crop + bicubic resize, float images built on the CPU."""
        images = torch.empty(batch_size, 3, resolution, resolution)
        keys = []
        for j in range(batch_size):
            source = int(rng.choice(len(self.weights), p=self.weights)) if len(self.weights) > 1 else 0
            key, image = reader.next(source, decode_clip_sample)
            if self.train:
                view = draw_crop_view(image.width, image.height, self.crop_scale, rng)
                image = image.crop((view.left, view.top, view.left + view.width, view.top + view.height))
                image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
                if view.flip:
                    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                images[j] = to_tensor(image)
            else:
                images[j] = clip_eval_transform(image, resolution)
            keys.append(key)
        return ClipBatch(images=images, resolution=resolution, keys=keys)


def _clip_sources(
    urls: str | Sequence, weights: Sequence[float] | None
) -> tuple[list[list[str]], np.ndarray]:
    if weights is None:
        return [expand_urls(urls)], np.ones(1)
    if isinstance(urls, str) or len(urls) != len(weights):
        raise ValueError(
            f"with weights {list(weights)}, urls must be a list of {len(weights)} sources "
            f"(each a brace pattern or a list of shards), got {urls!r}"
        )
    w = np.asarray([float(x) for x in weights])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixing weights must be >= 0 with a positive sum, got {list(weights)}")
    return [expand_urls(u) for u in urls], w / w.sum()


class ClipStream(ShardedStream[ClipBatch]):
    """D_CLIP for one rank: ``ClipBatch`` per step, resolution and batch from a ``VariableResolutionSchedule``.

    ``urls``: a brace pattern (``.../{00000..00099}.tar``), a list of shards, or, with ``weights``, a list
    of such sources mixed per sample with those probabilities. ``base_batch_size`` is the *global* batch at
    ``base_resolution``. An epoch is ``steps_per_epoch`` steps, by default ``num_samples`` (counted from the
    tars if not given) over the mean global batch; resampled mode draws shards with replacement and runs
    forever unless ``steps_per_epoch``/``num_samples`` set nominal epochs. ``shuffle_buffer`` > 0 shuffles
    samples through a buffer of that many per worker and source (0: a batch is consecutive samples of a
    shard); it mixes across about ``shuffle_buffer / samples_per_shard`` shards, so class-sorted shards
    need a buffer of several shards. Batches at ``sam_frame_resolutions`` are framed as SAM frames its
    input (see ``crop_view_pixels``), so that a head trained there sees what composed inference feeds it.
    Images are uint8 until ``batch.to(device)``; ``draft_decode`` decodes a JPEG at reduced DCT scale when
    the drawn crop, scaled, still covers the output; ``pin_memory`` as in ``SamStream``.
    ``split`` = ``train`` / ``held_out`` keeps the samples whose key is outside / inside the held-out
    ``holdout_fraction`` (a keyed hash of the key with ``holdout_seed``; see ``samclip.data.holdout``);
    ``all`` keeps every sample. A counted ``num_samples`` counts only the kept keys.
    ``teacher_cache``: a directory of ``samclip-data cache-teacher NAME`` of a teacher that read this
    stream's crop views; each sample then renders the view stored for this epoch and the batch carries the
    teacher's stored outputs of it (``teacher_embeds``).
    """

    def __init__(
        self,
        urls: str | Sequence,
        weights: Sequence[float] | None = None,
        resolutions: Sequence[int] = (224, 448),
        base_batch_size: int = 2048,
        base_resolution: int = 224,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 4,
        resampled: bool = False,
        num_samples: int | None = None,
        steps_per_epoch: int | None = None,
        train: bool = True,
        crop_scale: Sequence[float] = (0.9, 1.0),
        holdout_fraction: float = 0.0,
        holdout_seed: int = 0,
        split: str = "all",
        max_skip_fraction: float = 0.1,
        skip_rate_min_samples: int = 200,
        prefetch_factor: int = 2,
        shuffle_buffer: int = 0,
        sam_frame_resolutions: Sequence[int] = (),
        draft_decode: bool = True,
        pin_memory: bool | None = None,
        teacher_cache: str | None = None,
    ) -> None:
        sources, probabilities = _clip_sources(urls, weights)
        outside = sorted(set(sam_frame_resolutions) - set(resolutions))
        if outside:
            raise ValueError(
                f"sam_frame_resolutions {outside} are not among the resolutions {list(resolutions)}"
            )
        holdout = KeyHoldout(float(holdout_fraction), int(holdout_seed), split)
        self.schedule = VariableResolutionSchedule(
            resolutions, base_batch_size, base_resolution, seed, world_size
        )
        steps_per_epoch, self.num_samples = epoch_length(
            steps_per_epoch,
            num_samples,
            resampled,
            self.schedule.mean_global_batch_size,
            lambda: sum(
                count_samples(s, desc="counting D_CLIP samples", keep_key=holdout.keep) for s in sources
            ),
        )
        scale = (float(crop_scale[0]), float(crop_scale[1]))
        cached = None
        if teacher_cache is not None:
            cached = CachedViews(open_clip_cache(teacher_cache, sources, scale, train), seed, steps_per_epoch)
        super().__init__(
            ClipBatchBuilder(
                self.schedule,
                probabilities,
                train,
                scale,
                frozenset(int(r) for r in sam_frame_resolutions),
                holdout,
                draft_decode,
                cached,
            ),
            sources,
            steps_per_epoch=steps_per_epoch,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            resampled=resampled,
            max_skip_fraction=max_skip_fraction,
            skip_rate_min_samples=skip_rate_min_samples,
            prefetch_factor=prefetch_factor,
            shuffle_buffer=shuffle_buffer,
            pin_memory=pin_memory,
        )


def open_clip_cache(
    directory: str, sources: Sequence[Sequence[str]], crop_scale: tuple[float, float], train: bool
) -> TeacherCache:
    """The CLIP teacher cache for these shards, refused if it misses one or drew its views otherwise."""
    if not train:
        raise ValueError(
            f"teacher cache {directory}: a cache replays training views; an eval stream has none"
        )
    cache = TeacherCache(directory, stream_kind="images")
    if cache.manifest.crop_scale != crop_scale:
        raise StaleCacheError(
            f"teacher cache {directory} drew its views with crop_scale {list(cache.manifest.crop_scale or ())}, "
            f"the stream's is {list(crop_scale)}"
        )
    for shards in sources:
        cache.check_shards(shards)
    return cache
