"""Composed semantic segmentation against segment_anything: the SAM head's part replayed by ``SamPredictor``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from samclip.models.sam_checkpoint import build_official_sam
from samclip.serve.export import official_sam_state_dict
from samclip.serve.merged import MergedSamClip

LABELS = ["background", "dog", "cat", "horse", "car", "tree"]


def _two_tone_image(height: int = 96, width: int = 128) -> np.ndarray:
    """Non-square, so SAM's resize and padding are part of what is compared."""
    image = np.zeros((height, width, 3), dtype=np.int64)
    image[:, : width // 2], image[:, width // 2 :] = (200, 40, 40), (40, 40, 200)
    noise = np.random.default_rng(0).integers(0, 40, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


IMAGE = _two_tone_image()


@pytest.fixture(scope="module")
def predictor(merged: MergedSamClip) -> SamPredictor:
    """segment_anything's predictor on the SAM weights exported from the same model, with IMAGE set."""
    sam = build_official_sam(merged.config)
    sam.load_state_dict(official_sam_state_dict(merged.model), strict=True)
    predictor = SamPredictor(sam.eval())
    predictor.set_image(IMAGE)
    return predictor


@pytest.mark.parametrize("background_index", [0, None])
def test_weighted_composed_mode_matches_sam_predictor_given_the_same_prompts(
    merged: MergedSamClip, predictor: SamPredictor, background_index: int | None
) -> None:
    """Each prompted class's points + coarse mask go through SamPredictor; argmax over classes, and pixels
    no mask claims (every logit <= 0) take the background class, or the CLIP head's argmax without one."""
    prediction = merged.semantic_segment(
        IMAGE,
        LABELS,
        mode="composed",
        threshold=0.1,
        background_index=background_index,
        seed=0,
        composed_protocol="weighted",
    )
    assert len(prediction.prompts) >= 3  # several classes compete, so the argmax is exercised
    assert background_index not in [prompt.class_index for prompt in prediction.prompts]

    reference_logits = []
    for prompt in prediction.prompts:
        masks, _, _ = predictor.predict(
            point_coords=prompt.points.cpu().numpy(),
            point_labels=np.ones(len(prompt.points)),
            mask_input=prompt.mask_input.cpu().numpy(),
            multimask_output=False,
            return_logits=True,
        )
        reference_logits.append(torch.from_numpy(masks[0]))
    best, best_index = torch.stack(reference_logits).max(0)
    prompted = torch.tensor([prompt.class_index for prompt in prediction.prompts])
    if background_index is None:
        unclaimed = prediction.clip_logits.argmax(0).cpu()
    else:
        unclaimed = torch.full(best.shape, background_index)
    expected = torch.where(best > 0, prompted[best_index], unclaimed)

    assert 0.1 < (best > 0).float().mean() < 0.9  # both SAM masks and the unclaimed rule decide pixels
    assert len(expected.unique()) >= 3
    agreement = (prediction.label_map.cpu() == expected).float().mean().item()
    assert agreement >= 0.99, f"label maps agree on {agreement:.2%} of pixels"


def test_coarse_masks_are_the_clip_heads_class_probabilities_as_log_odds(merged: MergedSamClip) -> None:
    """The prompts the reference test replays: with every class prompted (threshold 0), the coarse masks'
    sigmoids are a softmax over the classes, so they sum to one at every low-res pixel."""
    prediction = merged.semantic_segment(
        IMAGE, LABELS, mode="composed", threshold=0.0, seed=0, composed_protocol="weighted"
    )
    assert [prompt.class_index for prompt in prediction.prompts] == list(range(len(LABELS)))
    low_res = 4 * merged.config.grid_size
    masks = torch.cat([prompt.mask_input for prompt in prediction.prompts])
    assert masks.shape == (len(LABELS), low_res, low_res)
    torch.testing.assert_close(masks.sigmoid().sum(0), torch.ones(low_res, low_res), atol=1e-4, rtol=0)
    assert all(len(prompt.points) == 3 for prompt in prediction.prompts)


def _replay(predictor: SamPredictor, prompts) -> torch.Tensor:
    logits = []
    for prompt in prompts:
        masks, _, _ = predictor.predict(
            point_coords=prompt.points.cpu().numpy(),
            point_labels=np.ones(len(prompt.points)),
            mask_input=prompt.mask_input.cpu().numpy(),
            multimask_output=False,
            return_logits=True,
        )
        logits.append(torch.from_numpy(masks[0]))
    return torch.stack(logits)


def test_paper_composed_mode_is_appendix_c(merged: MergedSamClip, predictor: SamPredictor) -> None:
    """The default: every class (background too) whose CLIP-head probability passes the threshold gets
    1-3 points drawn uniformly above it plus its coarse mask; each pixel takes the argmax of SAM logits,
    claimed or not."""
    threshold = 0.1
    prediction = merged.semantic_segment(
        IMAGE, LABELS, mode="composed", threshold=threshold, background_index=0
    )
    prompted = [prompt.class_index for prompt in prediction.prompts]
    assert 0 in prompted and len(prompted) >= 3  # the background class is prompted like the others
    probs = torch.softmax(merged.text.logit_scale * prediction.clip_logits, dim=0)  # upsampled cosines
    counts = set()
    for prompt in prediction.prompts:
        assert 1 <= len(prompt.points) <= 3
        counts.add(len(prompt.points))
        for x, y in prompt.points.long().tolist():
            assert probs[prompt.class_index, y, x] > threshold - 0.02  # bilinear order differs slightly
    expected = torch.tensor(prompted)[_replay(predictor, prediction.prompts).argmax(0)]
    agreement = (prediction.label_map.cpu() == expected).float().mean().item()
    assert agreement >= 0.99, f"label maps agree on {agreement:.2%} of pixels"
    # Over seeds the point count varies in 1..3 (the weighted protocol always takes 3 where it can).
    for seed in range(1, 6):
        again = merged.semantic_segment(IMAGE, LABELS, mode="composed", threshold=threshold, seed=seed)
        counts |= {len(prompt.points) for prompt in again.prompts}
    assert counts == {1, 2, 3}


def test_unknown_composed_protocol_is_named(merged: MergedSamClip) -> None:
    with pytest.raises(ValueError, match="composed protocol 'edge'"):
        merged.semantic_segment(IMAGE, LABELS, mode="composed", composed_protocol="edge")
