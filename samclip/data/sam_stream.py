"""D_SAM: SA-1B tars (or directories of jpg/json pairs) -> SAM-frame batches with prompts sampled from masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from samclip.data.bad_samples import BadSample
from samclip.data.batches import SAM_PAD_VALUE_UINT8, SamBatch
from samclip.data.images import DecodedImage, decode_image, decode_image_reduced, to_tensor
from samclip.data.manifest import read_manifest
from samclip.data.prompts_sampling import sample_prompts, sample_prompts_from_boxes
from samclip.data.resolution import per_rank_batch_size
from samclip.data.rle_runs import ResizedFrame, RunMask, resize_runs_many
from samclip.data.sa1b import (
    SAMPLE_ERRORS,
    Sa1bRecord,
    annotation_area,
    check_rles_runs,
    decode_masks,
    image_id_from_key,
    parse_annotation_file,
)
from samclip.data.shards import count_samples, expand_urls
from samclip.data.stream import BatchBuilder, SampleReader, ShardedStream, epoch_length
from samclip.data.teacher_cache import TeacherCache, open_sam_cache, stack_outputs
from samclip.models.preprocess import SAM_PAD_VALUE, pad_to_square, resized_longest_side_shape
from samclip.models.prompts import SamPrompts


@dataclass
class SamImage:
    """One SA-1B image in SAM's frame with its sampled masks and prompts (image_index still to be set)."""

    key: str
    image: torch.Tensor  # [3, S, S] uint8, padded with SAM_PAD_VALUE_UINT8 (float in [0, 1]: reference path)
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    prompts: list[SamPrompts]
    masks: list[RunMask] | np.ndarray  # in prompt order; [N, h, w] bool on the reference path

    def mask_array(self) -> np.ndarray:
        """[N, h, w] bool masks in the resized frame, painted from their runs on first need."""
        if isinstance(self.masks, np.ndarray):
            return self.masks
        height, width = self.input_size
        return np.stack([m.paint(height, width) for m in self.masks])


@dataclass(frozen=True)
class SamSampling:
    """How masks and prompts are drawn from one image (the config of the D_SAM stream)."""

    image_size: int = 1024
    masks_per_image: int = 32
    min_mask_area: float = 100.0
    box_prompt_fraction: float = 0.5
    max_points: int = 1
    box_noise_std: float = 0.1
    box_noise_max: float = 20.0
    draft_decode: bool = True  # JPEGs at least twice the frame decode at 1/2 (1/4, ...) scale


def prepare_sa1b_sample(
    raw: dict, sampling: SamSampling, rng: np.random.Generator, reference: bool = False
) -> SamImage:
    """Decode, sample up to ``masks_per_image`` masks, resize the longest side, prompt. Raises ``BadSample``.

    Prompts come from the masks' RLE runs (``rle_runs``); ``reference=True`` runs the former pipeline
    instead (full-resolution masks decoded by pycocotools, float image), kept as the reference the tests
    and ``benchmarks/bench_data.py`` compare against. Both consume ``rng`` identically.
    Any other failure on one sample's content (a value of the wrong type or size deep inside its json)
    is a ``malformed_json`` sample too: one bad file must not stop a run that resuming hits again.
    """
    try:
        return _prepare_sa1b_sample(raw, sampling, rng, reference)
    except BadSample:
        raise
    except SAMPLE_ERRORS as exn:
        raise BadSample("malformed_json", f"{type(exn).__name__}: {str(exn)[:200]}") from exn


def _sampled_runs(
    raw: dict, sampling: SamSampling, rng: np.random.Generator
) -> tuple[Sa1bRecord, list[dict], np.ndarray, np.ndarray]:
    """The record, and the checked RLEs, concatenated runs and runs per mask (``check_rles_runs``) of
    up to ``masks_per_image`` masks of area >= the minimum."""
    if "json" not in raw:
        raise BadSample("missing_json" if "jpg" in raw else "no_image", f"files: {sorted(raw)}")
    if "jpg" not in raw:
        raise BadSample("no_image", f"files: {sorted(raw)}")
    record = parse_annotation_file(raw["json"])
    candidates = []
    for annotation in record.annotations:
        if not isinstance(annotation, dict):
            raise BadSample("malformed_json", f"annotation is a {type(annotation).__name__}, not an object")
        try:
            if annotation_area(annotation) >= sampling.min_mask_area:
                candidates.append(annotation)
        except (KeyError, TypeError, ValueError) as exn:
            raise BadSample("malformed_rle", f"annotation {annotation.get('id', '?')}: {exn}") from exn
    if not candidates:
        raise BadSample("no_usable_annotation", f"no mask of area >= {sampling.min_mask_area}")
    chosen = rng.permutation(len(candidates))[: sampling.masks_per_image]
    rles, runs, per_mask = check_rles_runs(
        [candidates[i].get("segmentation") for i in chosen], record.height, record.width
    )
    return record, rles, runs, per_mask


def _check_image_size(decoded: DecodedImage, record: Sa1bRecord) -> None:
    if (decoded.full_height, decoded.full_width) != (record.height, record.width):
        raise BadSample(
            "malformed_json",
            f"json says {record.height}x{record.width}, "
            f"the jpg is {decoded.full_height}x{decoded.full_width}",
        )


def _prepare_sa1b_sample(
    raw: dict, sampling: SamSampling, rng: np.random.Generator, reference: bool
) -> SamImage:
    record, rles, runs, per_mask = _sampled_runs(raw, sampling, rng)
    height, width = resized_longest_side_shape(record.height, record.width, sampling.image_size)
    if reference:
        return _prepare_from_decoded_masks(raw, sampling, rng, record, rles)
    decoded = decode_image_reduced(
        raw["jpg"], (lambda w, h: (width, height)) if sampling.draft_decode else None
    )
    _check_image_size(decoded, record)
    frame = ResizedFrame.of(record.height, record.width, height, width)
    masks = [m for m in resize_runs_many(runs, per_mask, frame) if m.i0.size]
    if not masks:  # masks too small to survive the resize
        raise BadSample("no_usable_annotation", f"every sampled mask vanished at {height}x{width}")
    prompts, order = sample_prompts_from_boxes(
        np.stack([m.box() for m in masks]),
        lambda i, count: masks[i].points(count, rng),
        (height, width),
        image_index=0,
        rng=rng,
        box_prompt_fraction=sampling.box_prompt_fraction,
        max_points=sampling.max_points,
        box_noise_std=sampling.box_noise_std,
        box_noise_max=sampling.box_noise_max,
    )
    framed = sam_frame_pixels(decoded.image, height, width, sampling.image_size)
    return SamImage(
        raw["__key__"],
        framed,
        (height, width),
        (record.height, record.width),
        prompts,
        [masks[i] for i in order],
    )


def sam_frame_pixels(image: Image.Image, height: int, width: int, size: int) -> torch.Tensor:
    """``image`` resized to (height, width) and padded into a [3, size, size] uint8 SAM frame.

    segment_anything's ResizeLongestSide resizes with PIL's bilinear filter; torch's antialiased uint8
    bilinear computes the same filter about twice as fast (within one grey level, see BENCHMARKS.md),
    reading PIL's interleaved pixels directly and writing planes, so no transposing copy is needed.
    """
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]
    resized = F.interpolate(pixels, (height, width), mode="bilinear", antialias=True, align_corners=False)
    framed = torch.empty(3, size, size, dtype=torch.uint8)
    for channel, value in enumerate(SAM_PAD_VALUE_UINT8):  # plane by plane: contiguous fills
        framed[channel, height:] = value
        framed[channel, :height, width:] = value
    framed[:, :height, :width] = resized[0]
    return framed


def _prepare_from_decoded_masks(
    raw: dict, sampling: SamSampling, rng: np.random.Generator, record: Sa1bRecord, rles: list[dict]
) -> SamImage:
    """The former pipeline: full decode, every sampled mask decoded at full size, float image."""
    image = decode_image(raw["jpg"])
    if (image.height, image.width) != (record.height, record.width):
        raise BadSample(
            "malformed_json",
            f"json says {record.height}x{record.width}, the jpg is {image.height}x{image.width}",
        )
    height, width = resized_longest_side_shape(record.height, record.width, sampling.image_size)
    masks = decode_masks(rles, record.height, record.width, height, width)
    masks = masks[masks.any(axis=(1, 2))]  # masks too small to survive the resize
    if len(masks) == 0:
        raise BadSample("no_usable_annotation", f"every sampled mask vanished at {height}x{width}")
    prompts, order = sample_prompts(
        masks,
        image_index=0,
        rng=rng,
        box_prompt_fraction=sampling.box_prompt_fraction,
        max_points=sampling.max_points,
        box_noise_std=sampling.box_noise_std,
        box_noise_max=sampling.box_noise_max,
    )
    # segment_anything's ResizeLongestSide resizes the uint8 image with bilinear filtering (PIL).
    resized = to_tensor(image.resize((width, height), Image.Resampling.BILINEAR))
    framed = pad_to_square(resized[None], sampling.image_size, SAM_PAD_VALUE)[0]
    return SamImage(
        raw["__key__"], framed, (height, width), (record.height, record.width), prompts, masks[order]
    )


class SamBatchBuilder(BatchBuilder[SamBatch]):
    stream_name = "sam"

    def __init__(
        self,
        sampling: SamSampling,
        batch_size: int,
        return_gt_masks: bool,
        manifest: frozenset[int] | None,
        reference: bool = False,
        cache: TeacherCache | None = None,
    ) -> None:
        self.cache = cache
        self.sampling = sampling
        self.batch_size = batch_size
        self.return_gt_masks = return_gt_masks
        self.manifest = manifest
        self.reference = reference  # the former pipeline (see prepare_sa1b_sample), for comparisons

    def keep_key(self, key: str) -> bool:
        return self.manifest is None or image_id_from_key(key) in self.manifest

    def build(self, global_step: int, reader: SampleReader, rng: np.random.Generator) -> SamBatch:
        cached = []
        samples = []
        for _ in range(self.batch_size):
            sample, url = reader.next(
                0,
                lambda raw: (
                    prepare_sa1b_sample(raw, self.sampling, rng, self.reference),
                    raw.get("__url__", ""),
                ),
            )
            samples.append(sample)
            if self.cache is not None:
                cached.append(self.cache.entry(url, sample.key))
        prompts = []
        for index, sample in enumerate(samples):
            prompts.extend(replace(p, image_index=index) for p in sample.prompts)
        gt_masks = None
        if self.return_gt_masks:
            size = self.sampling.image_size
            gt_masks = []
            for sample in samples:
                framed = torch.zeros(len(sample.masks), size, size, dtype=torch.bool)
                height, width = sample.input_size
                framed[:, :height, :width] = torch.from_numpy(sample.mask_array())
                gt_masks.append(framed)
        return SamBatch(
            images=torch.stack([s.image for s in samples]),
            input_sizes=torch.tensor([s.input_size for s in samples], dtype=torch.int64),
            original_sizes=torch.tensor([s.original_size for s in samples], dtype=torch.int64),
            prompts=prompts,
            gt_masks=gt_masks,
            keys=[s.key for s in samples],
            teacher_embeds=stack_outputs(cached),
        )


class SamStream(ShardedStream[SamBatch]):
    """D_SAM for one rank: ``SamBatch`` of ``global_batch_size / world_size`` SA-1B images per step.

    ``urls``: SA-1B tars (brace pattern or list; local or ``pipe:``) and/or directories of jpg/json pairs.
    ``manifest``: a text file of image ids; only those images are used (the others are read and dropped).
    An epoch is ``steps_per_epoch`` steps, by default the manifest's size (or the number of images) over
    the global batch. ``min_mask_area`` is in pixels of the original image. ``return_gt_masks`` adds the
    sampled masks in the SAM frame (large: [N, S, S] bool per image; distillation does not need them).
    ``teacher_cache``: a directory of ``samclip-data cache-teacher NAME`` of a teacher that read D_SAM frames;
    batches carry its outputs (the SAM teacher's image embeddings).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        global_batch_size: int = 32,
        masks_per_image: int = 32,
        min_mask_area: float = 100.0,
        image_size: int = 1024,
        box_prompt_fraction: float = 0.5,
        max_points: int = 1,
        box_noise_std: float = 0.1,
        box_noise_max: float = 20.0,
        manifest: str | None = None,
        return_gt_masks: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 4,
        resampled: bool = False,
        num_samples: int | None = None,
        steps_per_epoch: int | None = None,
        max_skip_fraction: float = 0.1,
        skip_rate_min_samples: int = 200,
        prefetch_factor: int = 2,
        draft_decode: bool = True,
        pin_memory: bool | None = None,
        teacher_cache: str | None = None,
    ) -> None:
        if masks_per_image < 1 or max_points < 1 or image_size < 1:
            raise ValueError(
                f"masks_per_image, max_points and image_size must be >= 1, got {masks_per_image}, {max_points}, {image_size}"
            )
        if not 0.0 <= box_prompt_fraction <= 1.0:
            raise ValueError(f"box_prompt_fraction must be in [0, 1], got {box_prompt_fraction}")
        shards = expand_urls(urls)
        ids = read_manifest(manifest) if manifest is not None else None
        batch_size = per_rank_batch_size(global_batch_size, world_size)
        steps_per_epoch, self.num_samples = epoch_length(
            steps_per_epoch,
            num_samples,
            resampled,
            global_batch_size,
            lambda: len(ids) if ids is not None else count_samples(shards, desc="counting SA-1B images"),
        )
        sampling = SamSampling(
            image_size,
            masks_per_image,
            min_mask_area,
            box_prompt_fraction,
            max_points,
            box_noise_std,
            box_noise_max,
            draft_decode,
        )
        super().__init__(
            SamBatchBuilder(
                sampling,
                batch_size,
                return_gt_masks,
                ids,
                cache=None if teacher_cache is None else open_sam_cache(teacher_cache, shards, image_size),
            ),
            [shards],
            steps_per_epoch=steps_per_epoch,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            resampled=resampled,
            max_skip_fraction=max_skip_fraction,
            skip_rate_min_samples=skip_rate_min_samples,
            prefetch_factor=prefetch_factor,
            pin_memory=pin_memory,
        )
