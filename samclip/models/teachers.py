"""The two frozen teachers: an OpenCLIP model for L_clip and the original SAM for L_sam."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import open_clip
import torch
from torch import nn

from samclip.models.config import get_model_config
from samclip.models.preprocess import normalize_sam, resize_and_normalize
from samclip.models.prompts import SamPrompts
from samclip.models.sam_checkpoint import build_official_sam, read_sam_checkpoint, validate_sam_state_dict
from samclip.models.sam_head import SamHeadOutput, build_mask_decoder, build_prompt_encoder, decode_masks

# Small open_clip architectures for tests and the smoke run, registered next to open_clip's own.
open_clip.add_model_config(Path(__file__).parent / "clip_configs")


def create_open_clip(model_name: str, pretrained: str | None, kind: str = "CLIP checkpoint") -> nn.Module:
    """``open_clip.create_model`` without its root-logger chatter (11 INFO lines a build).

    With ``pretrained=None`` the caller loads the weights itself, so open_clip's "initialized randomly" warning
    would be wrong and is silenced too; real problems still raise. A ``pretrained`` file is read tensors-only
    (open_clip's ``weights_only=True``) and errors name it (as ``kind``).
    """
    is_file = bool(pretrained) and is_checkpoint_path(pretrained)
    if is_file and not Path(pretrained).is_file():
        raise FileNotFoundError(f"{kind} {pretrained} does not exist")
    try:
        with _logging_disabled(logging.INFO if pretrained else logging.WARNING):
            return open_clip.create_model(model_name, pretrained=pretrained or None)
    except Exception as error:
        if not is_file:
            raise
        reason = next((line.strip() for line in str(error).splitlines() if "WeightsUnpickler" in line), None)
        raise ValueError(
            f"{kind} {pretrained} is not a readable {model_name} checkpoint: {reason or error}"
        ) from error


def open_clip_tokenizer(model_name: str) -> Callable[[Sequence[str]], torch.Tensor]:
    """``open_clip.get_tokenizer`` without its INFO lines."""
    with _logging_disabled(logging.INFO):
        return open_clip.get_tokenizer(model_name)


@contextlib.contextmanager
def _logging_disabled(level: int) -> Iterator[None]:
    # open_clip logs through the root logger, so a module logger's level cannot scope it.
    previous = logging.root.manager.disable
    logging.disable(max(level, previous))
    try:
        yield
    finally:
        logging.disable(previous)


class FrozenTeacher(nn.Module):
    """A teacher never trains: no gradients, always in eval mode (``.train()`` is a no-op)."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return self

    def networks(self) -> list[nn.Module]:
        """What a cast to the step's dtype applies to (normalisation constants stay fp32 where kept apart)."""
        return [self]

    def heavy_part(self) -> nn.Module | None:
        """The image encoder: where a step spends the teacher's FLOPs (compiled by trainer.compile_teachers)."""
        return None


class ClipTeacher(FrozenTeacher):
    """An OpenCLIP model. ``pretrained`` is an open_clip tag (e.g. ``datacomp_xl_s13b_b90k``) or a checkpoint file."""

    def __init__(
        self, model_name: str = "ViT-L-14", pretrained: str | None = "datacomp_xl_s13b_b90k"
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.pretrained = pretrained
        self.model = create_open_clip(model_name, pretrained, kind="CLIP teacher checkpoint")
        self.tokenizer = open_clip_tokenizer(model_name)
        visual = self.model.visual
        self.image_size = _square_side(visual.image_size)
        self.register_buffer(
            "mean", torch.tensor(visual.image_mean or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor(visual.image_std or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        )
        self.freeze()

    @property
    def embed_dim(self) -> int:
        return (
            self.model.text_projection.shape[1]
            if hasattr(self.model, "text_projection")
            else self.model.visual.output_dim
        )

    def networks(self) -> list[nn.Module]:
        return [self.model]

    def heavy_part(self) -> nn.Module | None:
        return self.model.visual

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] at any square size -> the teacher's resolution and normalisation."""
        return resize_and_normalize(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_image(self.preprocess(images), normalize=normalize)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.mean.device)
        return self.model.encode_text(tokens, normalize=normalize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)


class SamPromptHeads(nn.Module):
    """SAM without its image encoder: what decodes masks from cached image embeddings."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder


class SamTeacher(FrozenTeacher):
    """A frozen copy of the full original SAM (segment_anything's ``Sam``) built from an official checkpoint.

    ``image_encoder=False`` builds only the prompt encoder and mask decoder (their weights from the same
    checkpoint): the teacher of a D_SAM stream whose image embeddings come from a teacher cache.
    """

    def __init__(
        self, checkpoint: str | Path | None, model_name: str = "samclip_vit_b", image_encoder: bool = True
    ) -> None:
        super().__init__()
        self.config = get_model_config(model_name)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.has_image_encoder = image_encoder
        if image_encoder:
            self.sam: nn.Module = build_official_sam(self.config)
        else:
            self.sam = SamPromptHeads(build_prompt_encoder(self.config), build_mask_decoder(self.config))
        if checkpoint is not None:
            state_dict = read_sam_checkpoint(checkpoint)
            validate_sam_state_dict(state_dict, self.config, source=str(checkpoint))
            if not image_encoder:
                state_dict = {
                    k: v for k, v in state_dict.items() if k.startswith(("prompt_encoder.", "mask_decoder."))
                }
            self.sam.load_state_dict(state_dict, strict=True)
        self.freeze()

    def networks(self) -> list[nn.Module]:
        return [self.sam]

    def heavy_part(self) -> nn.Module | None:
        return getattr(self.sam, "image_encoder", None)

    @torch.no_grad()
    def decode(
        self,
        embeddings: torch.Tensor,
        prompts: Sequence[SamPrompts],
        multimask: bool = False,
        all_outputs: bool = False,
    ) -> SamHeadOutput:
        """Masks for ``prompts`` from image embeddings ``[B, 256, h, w]`` (computed or cached)."""
        return decode_masks(
            self.sam.prompt_encoder, self.sam.mask_decoder, embeddings, prompts, multimask, all_outputs
        )

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """SAM's image embedding ``[B, 256, S/16, S/16]`` (SAM2CLIP's distillation target)."""
        if not self.has_image_encoder:
            raise ValueError(
                "this SAM teacher was built without its image encoder (its embeddings are cached)"
            )
        return self.sam.image_encoder(normalize_sam(images))

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        prompts: Sequence[SamPrompts],
        multimask: bool = False,
        all_outputs: bool = False,
    ) -> SamHeadOutput:
        """``images``: float [B, 3, S, S] in [0, 1] in SAM's frame, padded with ``SAM_PAD_VALUE``."""
        return self.decode(self.image_embeddings(images), prompts, multimask, all_outputs)


def is_checkpoint_path(value: str | None) -> bool:
    """Whether an open_clip ``pretrained`` value names a file (rather than a pretrained tag)."""
    if value is None:
        return False
    return any(sep in value for sep in ("/", "\\")) or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _square_side(size: int | Sequence[int]) -> int:
    if isinstance(size, int):
        return size
    if size[0] != size[1]:
        raise ValueError(f"non-square CLIP teacher input {tuple(size)} is not supported")
    return int(size[0])
