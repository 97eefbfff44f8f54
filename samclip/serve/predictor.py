"""``samclip.Predictor``: segment_anything's ``SamPredictor`` on the merged model, plus CLIP-head labels.

    predictor = samclip.Predictor(samclip.load("merged/"))
    predictor.set_image(image)                                   # one backbone pass
    masks, scores, logits = predictor.predict(box=np.array([10, 20, 200, 240]), multimask_output=False)
    predictor.classify(["cat", "dog"])                           # the whole image, same pass
    predictor.label(masks, ["cat", "dog"])                       # one label per mask, same pass

``predict`` *is* ``SamPredictor.predict`` (same arguments, same numpy outputs), run on a ``Sam`` view of
the merged model, so code written for segment_anything works unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor

from samclip.models.samclip_model import SamClipModel
from samclip.models.segment_anything_view import BackboneAsSamEncoder, as_segment_anything

if TYPE_CHECKING:  # importing inference at run time pulls open_clip in
    from samclip.serve.merged import Classification, MergedSamClip, TextEncoder


class MaskLabels(NamedTuple):
    labels: list[str]  # the most likely class of each mask
    probs: torch.Tensor  # [N, C] softmax over the classes, per mask


class Predictor:
    """``SamPredictor`` semantics on a merged model (``MergedSamClip``, or a bare ``SamClipModel`` for masks)."""

    def __init__(self, model: MergedSamClip | SamClipModel) -> None:
        self.merged = None if isinstance(model, SamClipModel) else model
        self.model: SamClipModel = model if isinstance(model, SamClipModel) else model.model
        self.sam_predictor = SamPredictor(as_segment_anything(self.model))

    @property
    def _encoder(self) -> BackboneAsSamEncoder:
        return self.sam_predictor.model.image_encoder  # type: ignore[return-value]

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an HxWx3 uint8 image once; every ``predict``/``classify``/``label`` call reuses it."""
        self.sam_predictor.set_image(image, image_format)
        self._tokens = self._encoder.last_tokens

    def predict(self, *args, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``SamPredictor.predict``: point_coords, point_labels, box, mask_input, multimask_output, return_logits."""
        return self.sam_predictor.predict(*args, **kwargs)

    def predict_torch(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sam_predictor.predict_torch(*args, **kwargs)

    def reset_image(self) -> None:
        self.sam_predictor.reset_image()
        self._tokens = None

    @torch.no_grad()
    def classify(self, labels: Sequence[str]) -> Classification:
        """Zero-shot classification of the whole image by the CLIP head on the tokens of the image area.

        The padding of SAM's square frame is cropped away first, so the max-pool sees the image only.
        """
        from samclip.serve.merged import Classification

        tokens = self._require_tokens()
        rows, cols = self._image_grid()
        embeds = self.model.clip_head(tokens[:, :rows, :cols], dense=False).image_embeds
        logits = self._text().logit_scale * F.normalize(embeds, dim=-1) @ self._classifier(labels)
        return Classification(labels=list(labels), probs=logits.softmax(-1)[0].cpu())

    @torch.no_grad()
    def label(self, masks: np.ndarray | torch.Tensor, labels: Sequence[str]) -> MaskLabels:
        """A class for each mask ([N, H, W] at the image's size): the CLIP head's patch embeddings averaged
        over the mask (each patch weighted by the fraction of it the mask covers), against the class names."""
        tokens = self._require_tokens()
        patches = F.normalize(self.model.clip_head(tokens, dense=True).patch_embeds[0].float(), dim=-1)
        weights = self.mask_patch_weights(torch.as_tensor(np.asarray(masks)).to(patches.device))
        regions = torch.einsum("nhw,hwd->nd", weights, patches) / weights.sum((1, 2)).clamp_min(1e-6)[:, None]
        logits = self._text().logit_scale * F.normalize(regions, dim=-1) @ self._classifier(labels).float()
        probs = logits.softmax(-1).cpu()
        return MaskLabels(labels=[labels[int(i)] for i in probs.argmax(-1)], probs=probs)

    def mask_patch_weights(self, masks: torch.Tensor) -> torch.Tensor:
        """[N, H, W] masks at the image's size -> [N, g, g]: the fraction of each patch of SAM's frame they cover."""
        if masks.ndim != 3 or tuple(masks.shape[-2:]) != tuple(self.sam_predictor.original_size):
            raise ValueError(
                f"masks must be [N, H, W] at the image's size {tuple(self.sam_predictor.original_size)}, "
                f"got {tuple(masks.shape)}"
            )
        frame, grid = self.model.config.image_size, self.model.config.grid_size
        height, width = self.sam_predictor.input_size
        resized = F.interpolate(masks[:, None].float(), (height, width), mode="bilinear", align_corners=False)
        framed = F.pad(resized, (0, frame - width, 0, frame - height))
        return F.adaptive_avg_pool2d(framed, grid)[:, 0]

    def _image_grid(self) -> tuple[int, int]:
        """Token rows and columns that hold image (not padding) in SAM's frame."""
        patch = self.model.config.patch_size
        height, width = self.sam_predictor.input_size
        return -(-height // patch), -(-width // patch)

    def _require_tokens(self) -> torch.Tensor:
        if getattr(self, "_tokens", None) is None:
            raise RuntimeError("call set_image(image) before classify or label")
        return self._tokens

    def _text(self) -> TextEncoder:
        if self.merged is None:
            raise ValueError(
                "labels need the CLIP text tower: build the Predictor from samclip.load(final.pt or export dir)"
            )
        return self.merged.text

    def _classifier(self, labels: Sequence[str]) -> torch.Tensor:
        if not labels:
            raise ValueError("give at least one class name")
        self._text()
        return self.merged.text_classifier(labels)
