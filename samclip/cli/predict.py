"""``samclip-predict``: images in, overlay PNGs of each input's size out.

    samclip-predict photo.jpg --checkpoint final.pt --labels "dog,horse,person" --out overlay.png
    samclip-predict photo.jpg --checkpoint merged/ --points "120,80;200,90" --out masks.png
    samclip-predict photo.jpg --checkpoint merged/ --boxes "10,20,200,240" --out masks.png
    samclip-predict photo.jpg --checkpoint merged/ --everything [--labels "cat,sofa"] [--pred-iou-thresh 0.88] --out all.png
    samclip-predict 'photos/*.jpg' --checkpoint merged/ --labels "dog,cat" --out overlays/

With ``--labels`` it draws zero-shot semantic segmentation (``--mode clip|composed``) with a legend;
with ``--points`` / ``--boxes`` it draws the SAM head's masks (all points form one prompt; each box is one)
and marks the prompts; ``--everything`` draws segment_anything's automatic masks, each named among
``--labels`` when given. A folder or a glob of images writes one overlay each into the ``--out`` folder.
An Open-Vocabulary SAM checkpoint takes prompts *and* ``--labels`` and names each mask (each point is
one prompt there):

    samclip-predict photo.jpg --checkpoint ovsam/clip2sam/final.pt --boxes "10,20,200,240" --labels "cat,dog" --out o.png
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from samclip.cli_errors import pop_debug_flag, user_errors
from samclip.data.transforms import to_uint8_array
from samclip.eval.visualize import class_palette, colorize, draw_legend, draw_prompts, overlay
from samclip.serve.merged import MergedSamClip, load
from samclip.serve.ovsam import OpenVocabularySam
from samclip.serve.zeroshot import SemanticPrediction

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def parse_numbers(text: str, per_item: int, flag: str) -> np.ndarray:
    """``"x,y;x,y"`` -> [N, per_item] floats, with an error naming the flag."""
    items = [item for item in text.split(";") if item.strip()]
    try:
        rows = [[float(value) for value in item.split(",")] for item in items]
    except ValueError as error:
        raise ValueError(f"{flag} {text!r}: {error}") from error
    if not rows or any(len(row) != per_item for row in rows):
        raise ValueError(
            f"{flag} {text!r} must be ';'-separated groups of {per_item} comma-separated numbers"
        )
    return np.array(rows, dtype=np.float64)


def semantic_overlay(
    model: MergedSamClip,
    image: np.ndarray,
    labels: Sequence[str],
    mode: str,
    threshold: float,
    composed_protocol: str = "paper",
    name: str = "image",
) -> Image.Image:
    prediction = model.semantic_segment(
        image, labels, mode=mode, threshold=threshold, composed_protocol=composed_protocol
    )
    if prediction.fell_back:
        log.warning(
            "%s: no class passed --threshold %g in composed mode, so the SAM head got no prompt; the overlay "
            "is the CLIP head's result alone (a lower --threshold prompts the SAM head)",
            name,
            threshold,
        )
    label_map = prediction.label_map.cpu().numpy()
    palette = class_palette(len(labels) + 1)[1:]  # skip black so every label has a visible colour
    canvas = Image.fromarray(overlay(image, colorize(label_map, palette)))
    present = sorted(set(label_map.ravel().tolist()))
    picture = draw_legend(canvas, [labels[i] for i in present], [palette[i] for i in present])
    if not prediction.prompts:
        return picture
    # composed mode: the points the CLIP head gave the SAM head
    return draw_prompts(picture, points=composed_points(prediction))


def composed_points(prediction: SemanticPrediction) -> np.ndarray:
    """[N, 2] (x, y) input-image pixels: every class's SAM-head prompt points, in class order."""
    return np.concatenate([prompt.points.cpu().numpy() for prompt in prediction.prompts])


def mask_overlay(
    model: MergedSamClip, image: np.ndarray, points: np.ndarray | None, boxes: np.ndarray | None
) -> Image.Image:
    masks = []
    if boxes is not None:
        masks.append(model.segment(image, boxes=boxes).masks.cpu().numpy())
    if points is not None:
        masks.append(model.segment(image, points=points[None]).masks.cpu().numpy())
    all_masks = np.concatenate(masks)
    picture = masks_overlay(image, all_masks, [f"mask {index}" for index in range(len(all_masks))])
    return draw_prompts(picture, points=points, boxes=boxes)


def everything_overlay(
    model: MergedSamClip, image: np.ndarray, labels: Sequence[str] | None, **generator_options: Any
) -> Image.Image:
    """segment_anything's automatic masks (largest drawn first), named by the CLIP head when ``labels`` are
    given; ``generator_options`` are ``SamAutomaticMaskGenerator``'s."""
    records = sorted(
        model.generate_masks(image, labels, **generator_options), key=lambda record: -record["area"]
    )
    masks = (
        np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
    )
    names = [
        f"{r['label']} {r['label_prob']:.2f}" if labels else f"mask {i} (iou {r['predicted_iou']:.2f})"
        for i, r in enumerate(records)
    ]
    return masks_overlay(image, masks, names)


def masks_overlay(image: np.ndarray, masks: np.ndarray, names: Sequence[str]) -> Image.Image:
    palette = class_palette(256)[1:]
    canvas = image
    colors = []
    for index, mask in enumerate(masks):
        color = palette[index % len(palette)]
        canvas = overlay(canvas, np.broadcast_to(color, image.shape), mask)
        colors.append(color)
    return draw_legend(Image.fromarray(canvas), list(names), colors)


def expand_inputs(pattern: str) -> list[Path]:
    """A file, a folder (its images) or a glob; an error names what matched nothing."""
    path = Path(pattern)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        with Image.open(path) as image:  # a non-image fails here, before the model loads
            image.verify()
        return [path]
    else:
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not found:
        raise FileNotFoundError(f"{pattern}: no image files (a file, a folder of images or a glob)")
    return found


def labelled_mask_overlay(
    model: OpenVocabularySam,
    image: np.ndarray,
    points: np.ndarray | None,
    boxes: np.ndarray | None,
    labels: Sequence[str],
) -> Image.Image:
    """OV-SAM: each box (or each point, one prompt per point) gives a mask drawn with its label and probability."""
    results = []
    if boxes is not None:
        results.append(model.segment(image, boxes=boxes, labels=labels))
    if points is not None:
        results.append(model.segment(image, points=points[:, None], labels=labels))
    palette = class_palette(256)[1:]
    canvas, names, colors = image, [], []
    for result in results:
        for mask, label, prob in zip(
            result.masks.cpu().numpy(), result.labels, result.label_scores.tolist(), strict=True
        ):
            color = palette[len(names) % len(palette)]
            canvas = overlay(canvas, np.broadcast_to(color, image.shape), mask)
            names.append(f"{len(names)}: {label} {prob:.2f}")
            colors.append(color)
    return draw_prompts(draw_legend(Image.fromarray(canvas), names, colors), points=points, boxes=boxes)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; user errors print one line and exit 2 (``--debug`` for the traceback)."""
    argv, debug = pop_debug_flag(list(sys.argv[1:] if argv is None else argv))
    with user_errors("samclip-predict", debug=debug or None):
        predict_cli(argv)


def predict_cli(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="samclip-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="an image file, a folder of images or a glob ('photos/*.jpg')")
    parser.add_argument("--checkpoint", required=True, help="a final.pt or a samclip export directory")
    parser.add_argument("--labels", default=None, help='comma-separated class names, e.g. "dog,horse,person"')
    parser.add_argument("--mode", choices=("clip", "composed"), default="clip")
    parser.add_argument("--threshold", type=float, default=0.5, help="composed mode's point threshold")
    parser.add_argument(
        "--composed-protocol",
        choices=("paper", "weighted"),
        default="paper",
        help="composed mode's prompting",
    )
    parser.add_argument("--points", default=None, help='"x,y[;x,y]" foreground points (one prompt)')
    parser.add_argument("--boxes", default=None, help='"x0,y0,x1,y1[;...]" boxes (one mask each)')
    parser.add_argument(
        "--everything", action="store_true", help="automatic masks (SamAutomaticMaskGenerator)"
    )
    parser.add_argument("--points-per-side", type=int, default=32, help="--everything: the point grid's side")
    parser.add_argument(
        "--pred-iou-thresh", type=float, default=0.88, help="--everything: keep masks predicting this IoU"
    )
    parser.add_argument(
        "--stability-score-thresh", type=float, default=0.95, help="--everything: keep masks this stable"
    )
    parser.add_argument(
        "--out", required=True, help="the overlay PNG, or a folder when several images are given"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    prompted = args.points is not None or args.boxes is not None
    if args.everything and prompted:
        parser.error("--everything segments without prompts: drop --points/--boxes")
    labels = None
    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(",") if label.strip()]
        if not labels:
            parser.error("--labels is empty")
    points = None if args.points is None else parse_numbers(args.points, 2, "--points")
    boxes = None if args.boxes is None else parse_numbers(args.boxes, 4, "--boxes")
    inputs = expand_inputs(args.image)
    out = Path(args.out)
    # A folder or a glob writes into the --out folder even when it matched one image.
    several = not Path(args.image).is_file()
    targets = [out / f"{path.stem}.png" for path in inputs] if several else [out]
    model = load(args.checkpoint, device=args.device)
    ovsam = isinstance(model, OpenVocabularySam)
    if ovsam and (not prompted or labels is None):
        parser.error("an Open-Vocabulary SAM checkpoint needs --points/--boxes and --labels")
    if not ovsam and not args.everything and (labels is None) == (not prompted):
        parser.error("give --labels (semantic segmentation), --points/--boxes (SAM masks) or --everything")
    for path, target in zip(tqdm(inputs, desc="predict", disable=not several), targets, strict=True):
        image = to_uint8_array(path)
        if ovsam:
            result = labelled_mask_overlay(model, image, points, boxes, labels)
        elif args.everything:
            result = everything_overlay(
                model,
                image,
                labels,
                points_per_side=args.points_per_side,
                pred_iou_thresh=args.pred_iou_thresh,
                stability_score_thresh=args.stability_score_thresh,
            )
        elif labels is not None:
            result = semantic_overlay(
                model, image, labels, args.mode, args.threshold, args.composed_protocol, name=str(path)
            )
        else:
            result = mask_overlay(model, image, points, boxes)
        assert result.size == (image.shape[1], image.shape[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        result.save(target)
        print(target)


if __name__ == "__main__":
    main()
