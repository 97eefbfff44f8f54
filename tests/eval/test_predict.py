"""``samclip-predict``: overlays of the input's size, for labels and for SAM prompts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from samclip.eval.visualize import class_palette, colorize, overlay
from samclip.predict import main, parse_numbers


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray((np.random.default_rng(0).random((90, 130, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("mode", ["clip", "composed"])
def test_semantic_overlay_is_the_models_label_map(final_checkpoint, merged, image_file, tmp_path, mode):
    out = tmp_path / f"{mode}.png"
    main([str(image_file), "--checkpoint", str(final_checkpoint), "--labels", "dog,horse,person", "--mode", mode,
          "--threshold", "0.2", "--out", str(out)])  # fmt: skip
    result = np.asarray(Image.open(out))
    original = np.asarray(Image.open(image_file))
    assert result.shape == original.shape
    labels = ["dog", "horse", "person"]
    label_map = merged.semantic_segment(original, labels, mode=mode, threshold=0.2).label_map.numpy()
    expected = overlay(original, colorize(label_map, class_palette(len(labels) + 1)[1:]))
    # The legend covers part of the top-left corner; below it the picture is the label map's overlay.
    assert np.array_equal(result[60:], expected[60:])
    assert not np.array_equal(result[:60], expected[:60])


def test_point_and_box_masks(final_checkpoint, merged, image_file, tmp_path):
    out = tmp_path / "masks.png"
    main([str(image_file), "--checkpoint", str(final_checkpoint), "--points", "40,30;80,50", "--boxes", "5,5,60,60",
          "--out", str(out)])  # fmt: skip
    result = np.asarray(Image.open(out)).astype(int)
    original = np.asarray(Image.open(image_file)).astype(int)
    assert result.shape == original.shape
    # Outside the legend, pixels change exactly where a SAM mask is (box or points).
    masks = merged.segment(original.astype(np.uint8), boxes=[[5, 5, 60, 60]]).masks[0].numpy()
    masks |= merged.segment(original.astype(np.uint8), points=[[[40, 30], [80, 50]]]).masks[0].numpy()
    changed = (result != original).any(-1)
    region = np.s_[40:, 60:]
    assert np.array_equal(changed[region], masks[region])


def test_prompt_parsing_errors():
    np.testing.assert_array_equal(parse_numbers("1,2;3,4", 2, "--points"), [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="--boxes"):
        parse_numbers("1,2,3", 4, "--boxes")
