"""``samclip-predict``: overlays of the input's size, for labels and for SAM prompts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from samclip.cli.predict import composed_points, main, parse_numbers, predict_cli
from samclip.eval.visualize import class_palette, colorize, draw_legend, draw_prompts, overlay


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
    prediction = merged.semantic_segment(original, labels, mode=mode, threshold=0.2)
    label_map = prediction.label_map.numpy()
    expected = overlay(original, colorize(label_map, class_palette(len(labels) + 1)[1:]))
    if mode == "composed":  # the SAM head's prompt points are marked
        assert prediction.prompts
        unmarked = expected
        expected = np.asarray(draw_prompts(Image.fromarray(expected), points=composed_points(prediction)))
        xs, ys = composed_points(prediction).round().astype(int).clip(0, [129, 89]).T
        assert (expected[ys, xs] != unmarked[ys, xs]).any(-1).all()
        assert np.array_equal(result[ys, xs], expected[ys, xs])
    # The legend covers a box in the top-left corner; elsewhere the picture is the label map's overlay.
    rows, cols = np.nonzero((result != expected).any(-1))
    assert rows.size and rows.min() <= 4 and cols.min() <= 4
    assert rows.max() < 0.8 * result.shape[0] and cols.max() < result.shape[1]
    legend = np.zeros(result.shape[:2], bool)
    legend[: rows.max() + 1, : cols.max() + 1] = True
    assert np.array_equal(result[~legend], expected[~legend])


def test_composed_mode_warns_when_no_class_passes_the_threshold(
    final_checkpoint, image_file, tmp_path, caplog
):
    args = [
        str(image_file),
        "--checkpoint",
        str(final_checkpoint),
        "--labels",
        "dog,horse",
        "--mode",
        "composed",
    ]
    main([*args, "--threshold", "0.2", "--out", str(tmp_path / "prompted.png")])
    assert "no class passed" not in caplog.text
    main([*args, "--threshold", "1.5", "--out", str(tmp_path / "fallback.png")])
    assert f"{image_file}: no class passed --threshold 1.5 in composed mode" in caplog.text


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
    # The prompts are marked (the box outlined, the points drawn); elsewhere outside the legend, pixels
    # change exactly where a SAM mask is.
    blank = Image.fromarray(np.zeros_like(original, dtype=np.uint8))
    marks = np.asarray(draw_prompts(blank, points=[[40, 30], [80, 50]], boxes=[[5, 5, 60, 60]])).any(-1)
    assert marks[50, 80] and marks[30, 5] and changed[marks].all()
    white = Image.fromarray(np.full_like(original, 255, dtype=np.uint8))
    drawn = (np.asarray(draw_legend(white, ["mask 0", "mask 1"], [(0, 0, 0)] * 2)) != 255).any(-1)
    rows, cols = np.nonzero(drawn)
    legend = np.zeros_like(drawn)
    legend[: rows.max() + 1, : cols.max() + 1] = True  # its box, white text included
    outside = ~marks & ~legend
    assert outside.mean() > 0.5 and masks[outside].any() and not masks[outside].all()
    assert np.array_equal(changed[outside], masks[outside])


def test_prompt_parsing_errors():
    np.testing.assert_array_equal(parse_numbers("1,2;3,4", 2, "--points"), [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="--boxes"):
        parse_numbers("1,2,3", 4, "--boxes")


def test_everything_draws_the_automatic_masks_with_their_labels(
    final_checkpoint, merged, image_file, tmp_path
):
    out = tmp_path / "everything.png"
    # Thresholds that keep some of the random model's masks, passed on to SamAutomaticMaskGenerator.
    main([str(image_file), "--checkpoint", str(final_checkpoint), "--everything", "--labels", "dog,horse",
          "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
          "--out", str(out)])  # fmt: skip
    result = np.asarray(Image.open(out))
    original = np.asarray(Image.open(image_file))
    assert result.shape == original.shape
    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    records = merged.generate_masks(original, ["dog", "horse"], **options)
    assert records  # not vacuous: some masks are drawn
    covered = (
        np.any([r["segmentation"] for r in records], axis=0)
        if records
        else np.zeros(original.shape[:2], bool)
    )
    changed = (result != original).any(-1)
    # Below the legend, exactly the pixels some automatic mask covers are painted.
    assert np.array_equal(changed[60:], covered[60:])


def test_a_folder_or_glob_writes_one_overlay_per_image(final_checkpoint, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, size in (("a.jpg", (40, 60)), ("b.png", (50, 30))):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    for source, out in ((str(folder), tmp_path / "dir_out"), (str(folder / "*.jpg"), tmp_path / "glob_out")):
        main([source, "--checkpoint", str(final_checkpoint), "--labels", "dog,cat", "--out", str(out)])
        written = sorted(p.name for p in out.iterdir())
        assert written == (["a.png", "b.png"] if out.name == "dir_out" else ["a.png"])
        assert Image.open(out / "a.png").size == (60, 40)
    with pytest.raises(FileNotFoundError, match="no image files"):
        predict_cli([str(tmp_path / "nothing" / "*.jpg"), "--checkpoint", str(final_checkpoint), "--labels", "dog",
                     "--out", str(tmp_path / "x")])  # fmt: skip


def test_legend_and_prompt_marks_scale_with_the_image():
    names, colors = ["dog"], [(255, 0, 0)]

    def legend_height(side: int) -> int:
        white = Image.fromarray(np.full((side, side, 3), 255, np.uint8))
        rows = np.nonzero((np.asarray(draw_legend(white, names, colors)) != 255).any(-1).any(1))[0]
        return int(rows.max())

    assert legend_height(2048) >= 3.5 * legend_height(256)
    small = np.asarray(draw_prompts(Image.new("RGB", (256, 256)), points=[[128, 128]])).any(-1).sum()
    large = np.asarray(draw_prompts(Image.new("RGB", (2048, 2048)), points=[[1024, 1024]])).any(-1).sum()
    assert large >= 12 * small  # the marker's area grows with the square of the scale (x4 side)
