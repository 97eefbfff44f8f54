"""Validation during training: evaluators on held-out data, run every N steps and at a stage's end.

Each evaluator returns per-rank sums and counts; one all-reduce turns them into global means, so
2 ranks report exactly what 1 rank would on the same samples. Validation leaves training untouched:
the global RNG state is saved before and restored after, the student goes back to train mode, and
the held-out streams are separate objects that restart from their first batch every time (so every
validation of a run sees the same samples and the curves are comparable).

``BestCheckpoint`` keeps ``<stage>/best.pt`` (final.pt format) and ``best.json`` for a named metric;
the best record so far is part of the training checkpoint, so it survives resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from samclip.data.batches import ClipBatch, SamBatch
from samclip.data.classnames import read_classnames
from samclip.data.transforms import classification_transform
from samclip.models.zeroshot_classifier import OPENAI_TEMPLATES, build_text_classifier, topk_correct
from samclip.train.checkpoint import rng_state, set_rng_state
from samclip.train.distributed import DistEnv, all_reduce_sum, barrier
from samclip.train.tasks.distill import DistillationTask
from samclip.train.tracking import Tracker

log = logging.getLogger(__name__)

PREFIX = "val/"
MODES = ("max", "min")


class Evaluator(Protocol):
    """This rank's (sum, count) of one metric over its held-out data; logged as ``val/<its config name>``."""

    teachers: tuple[str, ...]  # the task terms whose teachers it needs ("clip", "sam")

    def local_sums(self, task: DistillationTask, device: torch.device) -> tuple[float, float]: ...


def _restarted(data: Any) -> Iterable[Any]:
    """The held-out stream from its first batch (a ``ShardedStream`` or any re-iterable)."""
    if hasattr(data, "set_epoch"):
        data.set_epoch(0)
    return data


class TeacherCache:
    """Teacher outputs per held-out batch, computed once: the teacher is frozen and every validation sees
    the same batches (checked by the batch's sample keys; batches without keys are never cached)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.entries: dict[int, tuple[list[str], torch.Tensor]] = {}

    def get(self, index: int, keys: Sequence[str], device: torch.device) -> torch.Tensor | None:
        cached = self.entries.get(index)
        if cached is None or cached[0] != list(keys):
            return None
        return cached[1].to(device)

    def put(self, index: int, keys: Sequence[str], value: torch.Tensor) -> torch.Tensor:
        if self.enabled and keys:
            self.entries[index] = (list(keys), value.cpu())
        return value


class ClipCosine:
    """``val/clip_cosine``: mean over held-out D_CLIP images of cos(student embedding, CLIP teacher's)."""

    teachers = ("clip",)

    def __init__(self, data: Iterable[ClipBatch], num_batches: int, cache_teacher: bool = True) -> None:
        if num_batches < 1:
            raise ValueError(f"validation: clip_cosine num_batches must be >= 1, got {num_batches}")
        self.data = data
        self.num_batches = num_batches
        self.cache = TeacherCache(cache_teacher)

    def local_sums(self, task: DistillationTask, device: torch.device) -> tuple[float, float]:
        total, count = 0.0, 0
        for index, batch in enumerate(_restarted(self.data)):
            if index == self.num_batches:
                break
            images = batch.to(device).images
            target = self.cache.get(index, batch.keys, device)
            if target is None:
                target = self.cache.put(index, batch.keys, task.teachers["clip"].encode_image(images))
            embeds = task.student(images, None, clip=True).clip.image_embeds
            total += float(F.cosine_similarity(embeds.double(), target.double(), dim=-1).sum())
            count += images.shape[0]
        return total, count


def mask_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N] IoU of boolean masks [N, ...]; two empty masks agree perfectly (IoU 1)."""
    predicted, target = predicted.flatten(1), target.flatten(1)
    intersection = (predicted & target).sum(1).double()
    union = (predicted | target).sum(1).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


class SamIouToTeacher:
    """``val/sam_iou_to_teacher``: mean IoU of the student's and the SAM teacher's masks (logit > 0) for
    the same held-out SA-1B images and prompts, inside each image's unpadded part of the frame.

    The forgetting monitor: 1 while the student's SAM side still reproduces SAM.
    """

    teachers = ("sam",)

    def __init__(self, data: Iterable[SamBatch], num_batches: int, cache_teacher: bool = True) -> None:
        if num_batches < 1:
            raise ValueError(f"validation: sam_iou_to_teacher num_batches must be >= 1, got {num_batches}")
        self.data = data
        self.num_batches = num_batches
        self.cache = TeacherCache(cache_teacher)  # the teacher's masks, as booleans

    def local_sums(self, task: DistillationTask, device: torch.device) -> tuple[float, float]:
        total, count = 0.0, 0
        for index, batch in enumerate(_restarted(self.data)):
            if index == self.num_batches:
                break
            batch = batch.to(device)
            teacher = self.cache.get(index, batch.keys, device)
            if teacher is None:
                logits = task.teachers["sam"](batch.images, batch.prompts, multimask=False).low_res_logits
                teacher = self.cache.put(index, batch.keys, logits > 0)
            student = task.student(batch.images, list(batch.prompts), clip=False).sam.low_res_logits > 0
            frame = batch.images.shape[-1]
            offset = 0
            for group in batch.prompts:
                rows = slice(offset, offset + group.num_prompts)
                offset += group.num_prompts
                side = student.shape[-1]
                height, width = (
                    math.ceil(int(s) * side / frame) for s in batch.input_sizes[group.image_index]
                )
                ious = mask_iou(student[rows, :, :height, :width], teacher[rows, :, :height, :width])
                total += float(ious.sum())
                count += ious.numel()
        return total, count


class ZeroshotTop1:
    """``val/zeroshot_top1``: zero-shot top-1 (%) of the student's CLIP head on a small labelled ImageFolder
    (as open_clip's in-loop ImageNet eval), classes embedded by the CLIP teacher's text encoder (the
    merged model's) with ``templates`` (OpenAI's 80 by default). Rank r takes images r, r + W, ...
    """

    teachers = ("clip",)

    def __init__(
        self,
        root: str,
        resolution: int = 224,
        batch_size: int = 64,
        classnames: str | Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
        max_images: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"validation: zeroshot_top1 root {root} does not exist")
        self.dataset = ImageFolder(str(root), transform=classification_transform(resolution))
        self.classnames = read_classnames(classnames, self.dataset.classes)
        if len(self.classnames) != len(self.dataset.classes):
            raise ValueError(
                f"validation: zeroshot_top1 has {len(self.classnames)} classnames but {root} has "
                f"{len(self.dataset.classes)} class folders"
            )
        self.indices = list(range(len(self.dataset))[:max_images][rank::world_size])
        self.templates = tuple(templates) if templates else OPENAI_TEMPLATES
        self.batch_size = batch_size
        self._classifier: torch.Tensor | None = None  # the teacher is frozen: embed the classes once

    def local_sums(self, task: DistillationTask, device: torch.device) -> tuple[float, float]:
        if self._classifier is None:
            teacher = task.teachers["clip"]
            self._classifier = build_text_classifier(
                teacher.model, teacher.tokenizer, self.classnames, self.templates, device
            ).float()
        hits = 0
        for images, labels in DataLoader(Subset(self.dataset, self.indices), batch_size=self.batch_size):
            embeds = task.student.encode_image(images.to(device), normalize=True).float()
            hits += topk_correct(embeds @ self._classifier, labels.to(device), (1,))[1]
        return 100.0 * hits, len(self.indices)


@dataclass
class ValidationResult:
    metrics: dict[str, float]
    seconds: float


class BestCheckpoint:
    """``<stage>/best.pt`` (final.pt format, via ``save``) and ``best.json`` for the best ``metric`` so far."""

    def __init__(
        self, directory: str | Path, metric: str, mode: str, save: Callable[[Path, int], None]
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"checkpoint.keep_best_mode must be one of {MODES}, got {mode!r}")
        self.directory = Path(directory)
        self.metric = metric
        self.mode = mode
        self.save = save

    @property
    def path(self) -> Path:
        return self.directory / "best.pt"

    def better(self, value: float, best: Mapping[str, Any] | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best["value"] if self.mode == "max" else value < best["value"]

    def update(
        self, step: int, metrics: Mapping[str, float], best: dict[str, Any] | None, env: DistEnv
    ) -> dict[str, Any] | None:
        """The new best record (rank 0 writes the files; every rank takes the same decision)."""
        value = float(metrics[self.metric])
        if not self.better(value, best):
            return best
        record = {"metric": self.metric, "mode": self.mode, "step": step, "value": value}
        if env.is_main:
            self.save(self.path, step)
            _atomic_write_json(self.directory / "best.json", record)
            log.info("best %s = %.6g at step %d: wrote %s", self.metric, value, step, self.path)
        barrier(env)
        return record


class Validator:
    """Runs its evaluators every ``every_steps`` steps (0: only at the end) and at the stage's last step."""

    def __init__(
        self,
        evaluators: Mapping[str, Evaluator],
        every_steps: int,
        best: BestCheckpoint | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if every_steps < 0:
            raise ValueError(f"validation.every_steps must be >= 0 (0 = only at the end), got {every_steps}")
        if not evaluators:
            raise ValueError("validation: a Validator needs at least one evaluator")
        self.evaluators = dict(evaluators)
        self.every_steps = every_steps
        self.best = best
        self.autocast_dtype = autocast_dtype

    @property
    def teachers(self) -> tuple[str, ...]:
        return tuple(sorted({t for e in self.evaluators.values() for t in e.teachers}))

    @property
    def metric_names(self) -> list[str]:
        return [f"{PREFIX}{name}" for name in self.evaluators]

    def due(self, step: int, last_step: int) -> bool:
        return step == last_step or (self.every_steps > 0 and step % self.every_steps == 0)

    def run(self, task: DistillationTask, env: DistEnv) -> ValidationResult:
        """Global ``val/<name>`` means; a collective (every rank calls it), RNG and train mode restored."""
        start = time.perf_counter()
        saved_rng = rng_state()
        was_training = task.student.training
        task.student.eval()
        try:
            with torch.no_grad(), _autocast(env.device, self.autocast_dtype):
                sums = [evaluator.local_sums(task, env.device) for evaluator in self.evaluators.values()]
        finally:
            task.student.train(was_training)
            set_rng_state(saved_rng)
        totals = all_reduce_sum(torch.tensor(sums, dtype=torch.float64, device=env.device), env).tolist()
        metrics = {
            name: (t / c if c else math.nan) for name, (t, c) in zip(self.metric_names, totals, strict=True)
        }
        return ValidationResult(metrics, time.perf_counter() - start)

    def validate(
        self,
        task: DistillationTask,
        step: int,
        env: DistEnv,
        tracker: Tracker,
        best: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Run, log under ``val/`` and keep the best checkpoint; returns the best record so far."""
        result = self.run(task, env)
        tracker.log_validation(step, result.metrics, result.seconds)
        if self.best is not None:
            best = self.best.update(step, result.metrics, best, env)
        return best


def check_keep_best(metric: str | None, produced: Sequence[str]) -> None:
    if metric is not None and metric not in produced:
        raise ValueError(
            f"checkpoint.keep_best: {metric} is not produced by the validation of any stage "
            f"(produced: {sorted(set(produced)) or 'none'})"
        )


def _atomic_write_json(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)
