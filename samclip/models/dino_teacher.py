"""A frozen DINOv2 teacher from timm: its CLS token and its patch tokens on its own grid, for dense distillation.

    teacher:
      dino:
        _target_: samclip.models.dino_teacher.DinoTeacher
        model_name: vit_base_patch14_dinov2
        pretrained: /ckpt/dinov2_vitb14_pretrain.pth   # timm's or the official facebookresearch/dinov2 format
        image_size: 224

The model is built at ``image_size``, so timm resamples the checkpoint's position embedding (37 x 37 in the
official files, made at 518 px) once, at load. ``samclip_tiny_dino`` (``TINY_DINO_ARCHS``) is a 2-block,
32-wide DINOv2 for tests and the CPU smoke run, and ``write_random_dino_checkpoint`` writes its weights.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
from timm.models import load_pretrained
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from samclip.models.checkpoint_files import atomic_torch_save
from samclip.models.preprocess import resize_and_normalize
from samclip.models.teachers import FrozenTeacher

# name -> (timm architecture, its arguments); ``img_size`` is where write_random_dino_checkpoint builds it.
TINY_DINO_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "samclip_tiny_dino": (
        "vit_small_patch14_dinov2",
        {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 56},
    ),
    "samclip_tiny_dino_reg4": (
        "vit_small_patch14_reg4_dinov2",
        {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 56},
    ),
    # The proxy world's dense teacher (samclip.proxy.dense_teacher): 112 px, an 8 x 8 grid as the student's.
    "samclip_proxy_dino": (
        "vit_small_patch14_dinov2",
        {"embed_dim": 64, "depth": 4, "num_heads": 4, "img_size": 112},
    ),
}
# The official checkpoints' position-embedding grid: 518 px / 14.
OFFICIAL_IMAGE_SIZE = 518
_WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class DenseTeacherOutput(NamedTuple):
    summary: torch.Tensor  # [B, D] the CLS token after the final norm
    patches: torch.Tensor  # [B, D, h, w] the patch tokens after the final norm (prefix tokens dropped)


class DinoTeacher(FrozenTeacher):
    """DINOv2 (timm ``model_name`` or a ``TINY_DINO_ARCHS`` name) with weights from a local file or a hub id.

    ``pretrained``: None is random init; an ``org/name`` string that is not an existing path is a Hugging Face
    hub id (timm downloads it); anything else is a weights file, in timm's or the official DINOv2 format.
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch14_dinov2",
        pretrained: str | None = None,
        image_size: int = 224,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.pretrained = pretrained
        self.image_size = int(image_size)
        self.model = _build(model_name, self.image_size, model_kwargs or {})
        if self.image_size % self.patch_size:
            raise ValueError(
                f"teacher.dino.image_size {image_size} is not a multiple of {model_name}'s patch size "
                f"{self.patch_size}"
            )
        self._sha256 = None if pretrained is None else _load_weights(self.model, model_name, pretrained)
        data = timm.data.resolve_model_data_config(self.model)
        self.register_buffer("mean", torch.tensor(data["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(data["std"]).view(1, 3, 1, 1))
        self.freeze()

    @property
    def feature_dim(self) -> int:
        return int(self.model.num_features)

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] at any square size -> the teacher's resolution and normalisation."""
        return resize_and_normalize(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> DenseTeacherOutput:
        tokens = self.model.forward_features(self.preprocess(images))  # [B, prefix + h * w, D], normed
        grid = self.image_size // self.patch_size
        patches = tokens[:, self.model.num_prefix_tokens :].transpose(1, 2).unflatten(2, (grid, grid))
        return DenseTeacherOutput(summary=tokens[:, 0], patches=patches.contiguous())

    def networks(self) -> list[nn.Module]:
        return [self.model]  # the normalisation constants stay fp32 under a bf16 step

    def heavy_part(self) -> nn.Module | None:
        return self.model

    def forward(self, images: torch.Tensor) -> DenseTeacherOutput:
        return self.encode(images)

    def identity(self) -> dict[str, Any]:
        """What names this teacher, as ``samclip.data.teacher_cache.teacher_identity`` writes it: the model
        name and the weights (a file by its name and content hash, so moving it changes nothing; else the id)."""
        weights = self.pretrained
        if self._sha256 is not None:
            weights = os.path.basename(str(self.pretrained))
        return {"model_name": self.model_name, "weights": weights, "sha256": self._sha256}


def write_random_dino_checkpoint(
    path: str | Path, model_name: str = "samclip_tiny_dino", seed: int = 0, official_format: bool = False
) -> Path:
    """Write a randomly initialised ``model_name``'s weights to ``path`` (atomically), in timm's format or in
    the official DINOv2 one (the layout of ``dinov2_vitb14_pretrain.pth``, grid 37 x 37); returns ``path``."""
    base, kwargs = TINY_DINO_ARCHS.get(model_name, (model_name, {}))
    if official_format:
        kwargs = {**kwargs, "img_size": OFFICIAL_IMAGE_SIZE}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(base, pretrained=False, num_classes=0, **kwargs)
        state = model.state_dict()
        if official_format:
            state = _to_official_format(state)
    atomic_torch_save(state, path)
    return Path(path)


def _build(model_name: str, image_size: int, model_kwargs: dict[str, Any]) -> VisionTransformer:
    base, kwargs = TINY_DINO_ARCHS.get(model_name, (model_name, {}))
    if not timm.is_model(base):
        raise ValueError(
            f"teacher.dino.model_name {model_name!r} is neither a timm model nor one of {sorted(TINY_DINO_ARCHS)}"
        )
    if model_kwargs.get("img_size", image_size) != image_size:
        raise ValueError(
            f"teacher.dino.model_kwargs.img_size {model_kwargs['img_size']} differs from "
            f"teacher.dino.image_size {image_size}: set image_size only"
        )
    model = timm.create_model(
        base, pretrained=False, num_classes=0, **{**kwargs, **model_kwargs, "img_size": image_size}
    )
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"teacher.dino.model_name {model_name!r} is not a timm VisionTransformer")
    return model


def _load_weights(model: VisionTransformer, model_name: str, pretrained: str) -> str | None:
    """Load ``pretrained`` into ``model`` through timm's loader and DINOv2 filter; the file's sha256, if a file.

    The model is built first and loaded second (rather than one ``timm.create_model(pretrained=True)``) so that
    configuration errors are not reported as a bad file, and a bad file is reported as itself.
    """
    if _is_hub_id(pretrained):
        load_pretrained(
            model,
            # No url: without huggingface_hub, timm would fall back to the default tag's download.
            {**model.pretrained_cfg, "hf_hub_id": pretrained, "file": None, "url": None},
            num_classes=0,
            filter_fn=_dinov2_filter,
        )
        return None
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"DINOv2 teacher weights {pretrained} do not exist")
    try:
        # timm reads the file with weights_only=True (safetensors files hold tensors only).
        load_pretrained(
            model, {**model.pretrained_cfg, "file": str(path)}, num_classes=0, filter_fn=_dinov2_filter
        )
    except Exception as error:
        reason = " ".join(str(error).split())
        reason = reason if len(reason) <= 300 else reason[:300] + " ..."
        raise ValueError(
            f"DINOv2 teacher weights {pretrained} are not a readable {model_name} checkpoint: "
            f"{type(error).__name__}: {reason}"
        ) from error
    return _file_sha256(path)


def _dinov2_filter(state_dict: dict[str, Any], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """timm's ViT filter (official DINOv2 -> timm, pos_embed resampled), refusing another patch size: timm
    would resample that kernel FlexiViT-style, and a teacher must be the network that was trained."""
    raw = state_dict.get("model", state_dict)
    kernel = raw.get("state_dict", raw).get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 4 and tuple(kernel.shape[-2:]) != model.patch_embed.patch_size:
        raise ValueError(
            f"its patch size is {tuple(kernel.shape[-2:])}, the model's {model.patch_embed.patch_size}"
        )
    return checkpoint_filter_fn(state_dict, model)


def _is_hub_id(value: str) -> bool:
    if os.path.exists(value) or value.endswith(_WEIGHTS_SUFFIXES) or value.startswith((".", "~")):
        return False
    return re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None


def _file_sha256(path: Path) -> str:
    # teacher_cache.file_sha256's hash, restated here: models sit below data and may not import it.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_official_format(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's DINOv2 state dict -> facebookresearch/dinov2's: the inverse of timm's ``_convert_dinov2``."""
    state = dict(state)
    dim = state["cls_token"].shape[-1]
    if "reg_token" in state:
        # Official register models give the CLS token a position embedding; timm folds it into cls_token.
        cls_pos = torch.randn(1, 1, dim) * 0.02
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - cls_pos
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    state["mask_token"] = torch.zeros(1, dim)  # used by DINOv2's iBOT masking only; timm drops it
    return state
