"""The merged model for users: SAM-CLIP's image model plus the CLIP teacher's frozen text tower.

``samclip.load(path)`` reads a stage's ``final.pt`` (the text tower then comes from the recorded CLIP
teacher, built only when text is first needed: masks and image embeddings need none) or a directory
written by ``samclip-export --format samclip`` (everything included).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import load_model, save_model
from torch import nn

from samclip.data.transforms import ImageLike, classification_transform, to_uint8_array
from samclip.models import SamClipConfig, SamClipModel, Segmentation, create_model_from_config
from samclip.models.config import MODEL_CONFIGS
from samclip.models.final_checkpoint import (
    DEFAULT_CLIP_TEACHER,
    EXPORT_HINT,
    OVSAM_KIND,
    ClipTeacherSpec,
    load_final_checkpoint,
)

# Importing teachers also registers samclip's small open_clip configs.
from samclip.models.teachers import FrozenTeacher, create_open_clip, open_clip_tokenizer
from samclip.models.zeroshot_classifier import OPENAI_TEMPLATES, Template, build_text_classifier
from samclip.serve.ovsam import OVSAM_EXPORT_FILE, OpenVocabularySam
from samclip.serve.zeroshot import SemanticPrediction, segment_with_both_heads, segment_with_clip_head

EXPORT_FORMAT = "samclip-merged"
EXPORT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class TextEncoder(nn.Module):
    """The CLIP teacher's text tower: an open_clip model whose image tower is dropped, plus its tokenizer."""

    def __init__(
        self,
        clip_model: nn.Module,
        model_name: str,
        tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        clip_model.visual = nn.Identity()  # encode_text never touches it; this frees the image tower
        self.clip = clip_model.requires_grad_(False).eval()
        self.model_name = model_name
        self.tokenizer = tokenizer or open_clip_tokenizer(model_name)

    @classmethod
    def from_open_clip(cls, model_name: str, pretrained: str | None = None) -> TextEncoder:
        """``pretrained`` is an open_clip tag or a checkpoint file (as the CLIP teacher's spec records)."""
        return cls(create_open_clip(model_name, pretrained), model_name)

    @classmethod
    def from_teacher_spec(cls, spec: ClipTeacherSpec, checkpoint: str | Path | None = None) -> TextEncoder:
        """The text tower of the CLIP teacher a final.pt records, rebuilt as configured for training.

        The default ``ClipTeacher`` needs only its open_clip model; another ``_target_`` is imported and
        built with its recorded arguments, and must be a ``FrozenTeacher`` whose ``model`` has open_clip's
        ``encode_text(tokens)`` and which has a ``tokenizer`` (``ClipTeacher`` and its subclasses do).
        """
        pretrained = spec.resolve_pretrained(checkpoint)
        if spec.target == DEFAULT_CLIP_TEACHER:
            return cls.from_open_clip(spec.model_name, pretrained)
        teacher_class = _teacher_class(spec.target)
        arguments = dict(spec.args)
        if spec.pretrained is not None:
            arguments["pretrained"] = pretrained
        if spec.model_name != spec.target:
            arguments["model_name"] = spec.model_name
        teacher = teacher_class(**arguments)
        model, tokenizer = getattr(teacher, "model", None), getattr(teacher, "tokenizer", None)
        if not callable(getattr(model, "encode_text", None)) or tokenizer is None:
            raise ValueError(
                f"the CLIP teacher {spec.target} has no text tower (a `model` with encode_text and a "
                "`tokenizer`): labels need one; this model gives masks and image embeddings only"
            )
        return cls(model, spec.model_name, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @property
    def logit_scale(self) -> float:
        """The CLIP model's learned softmax temperature (exp of its ``logit_scale``; 100 for trained CLIPs)."""
        scale = getattr(self.clip, "logit_scale", None)
        return float(scale.exp()) if scale is not None else 100.0

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | torch.Tensor, normalize: bool = False) -> torch.Tensor:
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return self.clip.encode_text(tokens.to(self.device), normalize=normalize)


class Classification(NamedTuple):
    labels: list[str]
    probs: torch.Tensor  # [C] softmax over the labels

    @property
    def top(self) -> str:
        return self.labels[int(self.probs.argmax())]


class MergedSamClip(nn.Module):
    """SAM-CLIP ready for use: CLIP-style image/text embeddings, SAM masks and zero-shot segmentation."""

    def __init__(
        self,
        model: SamClipModel,
        text: TextEncoder | Callable[[], TextEncoder],
        clip_teacher: ClipTeacherSpec | None = None,
    ) -> None:
        """``text`` is the text tower, or a function building it when labels are first asked for."""
        super().__init__()
        self.model = model.eval()
        # Registered as the submodule "text" (its weights are the export's text.* tensors) once built.
        # (set in _modules directly: the ``text`` property shadows the attribute for add_module's check)
        self._modules["text"] = text if isinstance(text, nn.Module) else None
        self._build_text = None if isinstance(text, nn.Module) else text
        self.clip_teacher = clip_teacher
        self.source: dict[
            str, Any
        ] = {}  # where it was loaded from (path, stage, step), for provenance records
        self._classifiers: dict[tuple[tuple[str, ...], tuple[Template, ...]], torch.Tensor] = {}

    @property
    def text(self) -> TextEncoder:
        """The CLIP text tower (built on first use for a final.pt: the teacher's file is read only then)."""
        if self._modules["text"] is None:
            self._modules["text"] = self._build_text().to(self.device)
        return self._modules["text"]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The whole merged model's tensors, the text tower's included (it is built first if need be)."""
        _ = self.text
        return super().state_dict(*args, **kwargs)

    @property
    def has_text(self) -> bool:
        """Whether the text tower is built already (it is, after any use of labels)."""
        return self._modules["text"] is not None

    @property
    def config(self) -> SamClipConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """[B, 3, H, W] float in [0, 1], H and W multiples of 16 -> [B, D] CLIP image embeddings."""
        return self.model.encode_image(images.to(self.device), normalize=normalize)

    def encode_text(self, texts: Sequence[str] | torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.text.encode_text(texts, normalize=normalize)

    def text_classifier(
        self, labels: Sequence[str], templates: Sequence[Template] = OPENAI_TEMPLATES
    ) -> torch.Tensor:
        """[D, C] zero-shot classifier from the 80 OpenAI templates (cached per label list)."""
        # Keyed by the templates themselves: an id() could be reused by another list once this one is freed.
        key = (tuple(labels), tuple(templates))
        if key not in self._classifiers:
            self._classifiers[key] = build_text_classifier(
                self.text, self.text.tokenizer, labels, templates, device=self.text.device
            ).to(self.device)
        return self._classifiers[key]

    @torch.no_grad()
    def classify(self, image: ImageLike, labels: Sequence[str], resolution: int = 224) -> Classification:
        """Zero-shot classification of one image among ``labels`` (CLIP's protocol)."""
        if not labels:
            raise ValueError("classify needs at least one label")
        pil = _to_pil(image)
        pixels = classification_transform(resolution)(pil)[None].to(self.device)
        embeds = self.encode_image(pixels, normalize=True)
        logits = self.text.logit_scale * embeds @ self.text_classifier(labels)
        return Classification(labels=list(labels), probs=logits.softmax(-1)[0].cpu())

    @torch.no_grad()
    def segment(
        self,
        image: ImageLike,
        boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
        points: np.ndarray | Sequence[Sequence[float]] | None = None,
        point_labels: np.ndarray | Sequence[int] | None = None,
        multimask: bool = False,
    ) -> Segmentation:
        """SAM-head masks for box and/or point prompts in image pixels (``SamPredictor`` semantics).

        Points without ``point_labels`` are all foreground.
        """
        if points is not None and point_labels is None:
            point_labels = np.ones(np.asarray(points).shape[:-1], dtype=np.int64)
        return self.model.segment(
            to_uint8_array(image),
            boxes=None if boxes is None else np.asarray(boxes, dtype=np.float64),
            points=None if points is None else np.asarray(points, dtype=np.float64),
            point_labels=point_labels,
            multimask=multimask,
        )

    @torch.no_grad()
    def semantic_segment(
        self,
        image: ImageLike,
        labels: Sequence[str],
        mode: str = "clip",
        *,
        resolution: int = 448,
        threshold: float = 0.5,
        num_points: int = 3,
        background_index: int | None = None,
        seed: int = 0,
        composed_protocol: str = "paper",
    ) -> SemanticPrediction:
        """Zero-shot semantic segmentation: ``mode="clip"`` (CLIP head at ``resolution``) or ``"composed"``
        (CLIP head prompts the SAM head in SAM's frame; ``composed_protocol`` ``paper`` = appendix C or
        ``weighted``, see ``segment_with_both_heads``)."""
        array = to_uint8_array(image)
        classifier = self.text_classifier(labels)
        if mode == "clip":
            return segment_with_clip_head(self.model, array, classifier, resolution)
        if mode == "composed":
            return segment_with_both_heads(
                self.model,
                array,
                classifier,
                logit_scale=self.text.logit_scale,
                threshold=threshold,
                num_points=num_points,
                background_index=background_index,
                generator=torch.Generator().manual_seed(seed),
                protocol=composed_protocol,
            )
        raise ValueError(f"unknown semantic segmentation mode {mode!r}; use 'clip' or 'composed'")

    def generate_masks(
        self, image: ImageLike, labels: Sequence[str] | None = None, **generator_options: Any
    ) -> list[dict[str, Any]]:
        """Segment everything (``SamAutomaticMaskGenerator``), each mask named among ``labels`` if given."""
        from samclip.serve.automatic import generate_masks

        return generate_masks(self, to_uint8_array(image), labels, **generator_options)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the whole merged model as ``model.safetensors`` + ``config.json`` (read by :func:`load`)."""
        directory = Path(directory)
        text = self.text  # built first, so the weights include it
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, str(directory / WEIGHTS_FILE))
        config = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "model_config": self.config.to_dict(),
            "text_model": text.model_name,
            "tokenizer": text.model_name,
            "clip_teacher": None if self.clip_teacher is None else self.clip_teacher.to_dict(),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory


def load(
    path: str | Path, device: str | torch.device = "cpu", *, allow_hub: bool = False
) -> MergedSamClip | OpenVocabularySam:
    """The merged model from a stage's ``final.pt`` or a ``samclip-export --format samclip`` directory.

    A directory's ``config.json`` is validated before anything is built; a ``text_model`` naming a hub
    location (``hf-hub:...``) is fetched only with ``allow_hub=True``. An Open-Vocabulary SAM checkpoint
    (``model_kind`` ovsam, or an export holding ``ovsam.pt``) gives an
    :class:`~samclip.serve.ovsam.OpenVocabularySam` (prompt -> mask + label).
    """
    path = Path(path)
    if path.is_dir() and (path / OVSAM_EXPORT_FILE).is_file():
        path = path / OVSAM_EXPORT_FILE
    if path.is_dir():
        merged = _load_exported(path, allow_hub)
    elif path.is_file():
        final = load_final_checkpoint(path)
        if final.model_kind == OVSAM_KIND:
            ovsam = OpenVocabularySam(final.build_model())
            ovsam.source.update(stage=final.stage, step=final.step, path=str(path.absolute()))
            return ovsam.to(device).eval()
        spec = final.clip_teacher
        merged = MergedSamClip(final.build_model(), lambda: TextEncoder.from_teacher_spec(spec, path), spec)
        merged.source.update(stage=final.stage, step=final.step)
    else:
        raise FileNotFoundError(f"{path} is neither a final.pt checkpoint nor an exported samclip directory")
    merged.source["path"] = str(path.absolute())
    return merged.to(device).eval()


def _load_exported(directory: Path, allow_hub: bool) -> MergedSamClip:
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing: {directory} is not a samclip export")
    try:
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from error
    validate_export_config(config, config_path, allow_hub=allow_hub)
    teacher = config.get("clip_teacher")
    merged = MergedSamClip(
        create_model_from_config(config["model_config"]),
        TextEncoder(create_open_clip(config["text_model"], None), config["tokenizer"]),
        None if teacher is None else ClipTeacherSpec(**teacher),
    )
    load_model(merged, str(weights_path), strict=True)
    return merged


def validate_export_config(config: Any, config_path: Path, *, allow_hub: bool = False) -> None:
    """An untrusted ``config.json``: known keys, model sizes within the published shapes, no silent fetch."""
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} is not a JSON object")
    unknown = sorted(set(config) - _EXPORT_KEYS)
    if unknown:
        raise ValueError(f"{config_path}: unknown keys {unknown}; known keys: {sorted(_EXPORT_KEYS)}")
    if config.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{config_path} has format {config.get('format')!r}, expected {EXPORT_FORMAT!r}")
    model_config = config.get("model_config")
    if not isinstance(model_config, dict):
        raise ValueError(f"{config_path}: model_config must be an object")
    for key, value in model_config.items():
        limit = _SIZE_LIMITS.get(key)
        if limit is None:
            continue
        values = value if isinstance(value, list) else [value]
        if value is None and key == "clip_mlp_hidden_dim":
            continue
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= limit for v in values
        ):
            raise ValueError(
                f"{config_path}: model_config.{key}={value!r} is outside the published SAM-CLIP shapes "
                f"(a number in [0, {limit}])"
            )
    try:
        SamClipConfig.from_dict(model_config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_path}: model_config: {error}") from error
    for key in ("text_model", "tokenizer"):
        name = config.get(key)
        if not isinstance(name, str):
            raise ValueError(f"{config_path}: {key} must be an open_clip model name, got {name!r}")
        if ":" in name and not allow_hub:
            raise ValueError(
                f"{config_path}: {key}={name!r} names a hub location; it is fetched only with "
                "samclip.load(..., allow_hub=True)"
            )
        if ":" not in name and name not in open_clip.list_models():
            raise ValueError(f"{config_path}: {key}={name!r} is not an open_clip model name")
    teacher = config.get("clip_teacher")
    known = set(ClipTeacherSpec.__dataclass_fields__)
    if teacher is not None and (
        not isinstance(teacher, dict) or not {"model_name", "pretrained"} <= set(teacher) <= known
    ):
        raise ValueError(
            f"{config_path}: clip_teacher must be null or an object with keys among {sorted(known)} "
            f"(model_name and pretrained required), got {teacher!r}"
        )


def _published_limits() -> dict[str, float]:
    """The largest value of each numeric model field over the published sizes (CLIP widths up to 1280)."""
    limits: dict[str, float] = {}
    for config in MODEL_CONFIGS.values():
        for key, value in config.to_dict().items():
            values = value if isinstance(value, list) else [value]
            numbers = [v for v in values if isinstance(v, (int, float))]
            if numbers:
                limits[key] = max(limits.get(key, 0), *numbers)
    for key in ("clip_embed_dim", "clip_mlp_hidden_dim"):
        limits[key] = max(limits.get(key, 0), 1280)
    return limits


_EXPORT_KEYS = {"format", "version", "model_config", "text_model", "tokenizer", "clip_teacher"}
_SIZE_LIMITS = _published_limits()


def _teacher_class(target: str) -> type[FrozenTeacher]:
    """The class a recorded ``_target_`` names; only a ``FrozenTeacher`` is built from a file's record."""
    module_name, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"the CLIP teacher {target!r} recorded in the checkpoint cannot be imported ({error}); "
            f"install the code that defines it, or use an export: {EXPORT_HINT}"
        ) from error
    if not (isinstance(found, type) and issubclass(found, FrozenTeacher)):
        raise ValueError(f"the recorded CLIP teacher {target!r} is not a samclip FrozenTeacher class")
    return found


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(to_uint8_array(image))
