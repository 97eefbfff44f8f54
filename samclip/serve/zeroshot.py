"""Zero-shot semantic segmentation with the merged model: the CLIP head alone, or prompting the SAM head with it.

The text classifier these take is :func:`samclip.models.zeroshot_classifier.build_text_classifier`'s.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from samclip.data.transforms import resize_square, to_float_tensor
from samclip.models import SamClipModel
from samclip.models.preprocess import upscale_mask_logits

# Coarse CLIP-head probabilities become SAM mask-input logits through log-odds, clamped to SAM's usual range.
MASK_INPUT_CLAMP = 20.0
# How the CLIP head prompts the SAM head (``segment_with_both_heads``): "paper" is appendix C, "weighted" the
# variant this package had first (probability-weighted points, background never prompted).
COMPOSED_PROTOCOLS = ("paper", "weighted")


class ClassPrompt(NamedTuple):
    """What the composed mode gave the SAM head for one class (``SamPredictor.predict`` arguments)."""

    class_index: int
    points: torch.Tensor  # [P, 2] float64 (x, y) in the input image's pixels, all foreground
    mask_input: torch.Tensor  # [1, 4g, 4g] coarse mask as low-res log-odds (g: the backbone's grid)


class SemanticPrediction(NamedTuple):
    label_map: torch.Tensor  # [H, W] long: index into the class list, at the input image's size
    clip_logits: torch.Tensor  # [C, H, W] cosine similarities of the CLIP head's patches, upsampled
    prompts: tuple[ClassPrompt, ...] = ()  # composed mode: the SAM head's prompts, in class order
    # composed mode: no class passed the threshold, so the map is the CLIP head's (or background) alone
    fell_back: bool = False


def patch_cosine(patch_embeds: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """[h, w, D] patch embeddings x [D, C] classifier -> [C, h, w] cosine similarity."""
    return torch.einsum("hwd,dc->chw", F.normalize(patch_embeds.float(), dim=-1), classifier.float())


@torch.no_grad()
def segment_with_clip_head(
    model: SamClipModel, image: np.ndarray, classifier: torch.Tensor, resolution: int = 448
) -> SemanticPrediction:
    """The paper's protocol: resize to RxR, CLIP-head patch features, cosine per class, logits upsampled."""
    device = next(model.parameters()).device
    height, width = image.shape[:2]
    pixels = resize_square(to_float_tensor(image).to(device), resolution)
    patches = model(pixels, clip=True, dense=True).clip.patch_embeds[0]
    logits = patch_cosine(patches, classifier.to(device))
    logits = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return SemanticPrediction(label_map=logits.argmax(0), clip_logits=logits)


@torch.no_grad()
def segment_with_both_heads(
    model: SamClipModel,
    image: np.ndarray,
    classifier: torch.Tensor,
    *,
    logit_scale: float,
    threshold: float = 0.5,
    num_points: int = 3,
    background_index: int | None = None,
    generator: torch.Generator | None = None,
    protocol: str = "paper",
) -> SemanticPrediction:
    """CLIP head + SAM head composition (paper, appendix C), from one backbone pass in SAM's frame.

    The CLIP head's mask prediction for a class is its probability, the softmax over classes of
    ``logit_scale`` x cosine (appendix C thresholds "logits" at 0.5 on VOC, a level raw cosines of a
    CLIP head do not reach; the probability's log-odds, which is what the prompt encoder gets as the
    coarse mask, cross SAM's mask threshold 0 exactly there). A class whose probability exceeds
    ``threshold`` somewhere is prompted with points where it does plus its coarse mask (log-odds at the
    prompt encoder's low-res size). ``protocol``:

    - ``paper`` (appendix C): every class, the background one included, may be prompted; each gets
      1..``num_points`` points (the count uniform, from ``generator``) drawn uniformly among its pixels
      above the threshold; each pixel takes the prompted class with the highest SAM logit.
    - ``weighted``: exactly ``num_points`` points (fewer if fewer pixels pass), drawn with probability
      weights; the class ``background_index`` is never prompted, and pixels no SAM mask claims (all
      logits <= 0) take it.

    With no class prompted (or, for ``weighted`` without a background class, on unclaimed pixels) the
    CLIP head's own argmax decides. The prediction records each prompted class's points and coarse mask,
    so the SAM head's part can be replayed elsewhere.
    """
    if protocol not in COMPOSED_PROTOCOLS:
        raise ValueError(f"unknown composed protocol {protocol!r}; use one of {COMPOSED_PROTOCOLS}")
    embedding = model.embed_image(image)
    frame = model.config.image_size
    patches = model.clip_head(embedding.features.tokens, dense=True).patch_embeds[0]
    cosine = patch_cosine(patches, classifier.to(patches.device))  # [C, g, g] over the padded frame
    probs = torch.softmax(logit_scale * cosine, dim=0)
    full_probs = upscale_mask_logits(probs[None], frame, embedding.input_size, embedding.original_size)[0]
    full_cosine = upscale_mask_logits(cosine[None], frame, embedding.input_size, embedding.original_size)[0]
    clip_labels = full_cosine.argmax(0)

    low_res = 4 * model.config.grid_size  # SAM's mask-input side (256 at 1024 px)
    coarse = F.interpolate(probs[None], size=(low_res, low_res), mode="bilinear", align_corners=False)[0]
    coarse = torch.logit(coarse.clamp(1e-6, 1 - 1e-6)).clamp(-MASK_INPUT_CLAMP, MASK_INPUT_CLAMP)

    paper = protocol == "paper"
    prompts, sam_logits = [], []
    for class_index in range(classifier.shape[1]):
        if class_index == background_index and not paper:
            continue
        if paper:
            points = _sample_points_uniform(full_probs[class_index], threshold, num_points, generator)
        else:
            points = _sample_points(full_probs[class_index], threshold, num_points, generator)
        if points is None:
            continue
        prompt = ClassPrompt(class_index, points, coarse[class_index][None])
        result = model.segment(
            embedding,
            points=prompt.points.cpu().numpy(),
            point_labels=np.ones(len(prompt.points), dtype=np.int64),
            mask_input=prompt.mask_input[None],
        )
        logits = upscale_mask_logits(result.logits, frame, embedding.input_size, embedding.original_size)
        prompts.append(prompt)
        sam_logits.append(logits[0, 0])
    if not prompts:
        fallback = (
            clip_labels
            if paper or background_index is None
            else torch.full_like(clip_labels, background_index)
        )
        return SemanticPrediction(label_map=fallback, clip_logits=full_cosine, fell_back=True)
    stacked = torch.stack(sam_logits)
    best, best_index = stacked.max(0)
    labels = torch.as_tensor([p.class_index for p in prompts], device=best_index.device)[best_index]
    if paper:
        label_map = labels
    else:
        fallback = clip_labels if background_index is None else torch.full_like(clip_labels, background_index)
        label_map = torch.where(best > 0, labels, fallback)
    return SemanticPrediction(label_map=label_map, clip_logits=full_cosine, prompts=tuple(prompts))


def _sample_points_uniform(
    prob: torch.Tensor, threshold: float, max_points: int, generator: torch.Generator | None
) -> torch.Tensor | None:
    """1..``max_points`` (x, y) pixels (the count uniform) drawn uniformly without replacement where
    ``prob > threshold`` (appendix C's "randomly sampled from pixels where the logits exceed a threshold")."""
    ys, xs = torch.nonzero(prob > threshold, as_tuple=True)
    if ys.numel() == 0:
        return None
    count = int(torch.randint(1, max_points + 1, (1,), generator=generator))
    chosen = torch.randperm(ys.numel(), generator=generator)[: min(count, ys.numel())].to(ys.device)
    return torch.stack([xs[chosen], ys[chosen]], dim=1).double()


def _sample_points(
    prob: torch.Tensor, threshold: float, num_points: int, generator: torch.Generator | None
) -> torch.Tensor | None:
    """Up to ``num_points`` (x, y) pixels where ``prob > threshold``, drawn without replacement by probability."""
    ys, xs = torch.nonzero(prob > threshold, as_tuple=True)
    if ys.numel() == 0:
        return None
    weights = prob[ys, xs].double().cpu()
    count = min(num_points, ys.numel())
    chosen = torch.multinomial(weights, count, replacement=False, generator=generator).to(ys.device)
    return torch.stack([xs[chosen], ys[chosen]], dim=1).double()
