"""``samclip-predict``: one image in, an overlay PNG of the input's size out.

    samclip-predict photo.jpg --checkpoint final.pt --labels "dog,horse,person" --out overlay.png
    samclip-predict photo.jpg --checkpoint merged/ --points "120,80;200,90" --out masks.png
    samclip-predict photo.jpg --checkpoint merged/ --boxes "10,20,200,240" --out masks.png

With ``--labels`` it draws zero-shot semantic segmentation (``--mode clip|composed``) with a legend;
with ``--points`` / ``--boxes`` it draws the SAM head's masks (all points form one prompt; each box is one).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from samclip.eval.transforms import to_uint8_array
from samclip.eval.visualize import class_palette, colorize, draw_legend, overlay
from samclip.inference import MergedSamClip, load


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
    model: MergedSamClip, image: np.ndarray, labels: Sequence[str], mode: str, threshold: float
) -> Image.Image:
    prediction = model.semantic_segment(image, labels, mode=mode, threshold=threshold)
    label_map = prediction.label_map.cpu().numpy()
    palette = class_palette(len(labels) + 1)[1:]  # skip black so every label has a visible colour
    canvas = Image.fromarray(overlay(image, colorize(label_map, palette)))
    present = sorted(set(label_map.ravel().tolist()))
    return draw_legend(canvas, [labels[i] for i in present], [palette[i] for i in present])


def mask_overlay(
    model: MergedSamClip, image: np.ndarray, points: np.ndarray | None, boxes: np.ndarray | None
) -> Image.Image:
    masks = []
    if boxes is not None:
        masks.append(model.segment(image, boxes=boxes).masks.cpu().numpy())
    if points is not None:
        masks.append(model.segment(image, points=points[None]).masks.cpu().numpy())
    palette = class_palette(256)[1:]
    canvas = image
    names, colors = [], []
    for index, mask in enumerate(np.concatenate(masks)):
        color = palette[index % len(palette)]
        canvas = overlay(canvas, np.broadcast_to(color, image.shape), mask)
        names.append(f"mask {index}")
        colors.append(color)
    return draw_legend(Image.fromarray(canvas), names, colors)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="samclip-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--checkpoint", required=True, help="a final.pt or a samclip export directory")
    parser.add_argument("--labels", default=None, help='comma-separated class names, e.g. "dog,horse,person"')
    parser.add_argument("--mode", choices=("clip", "composed"), default="clip")
    parser.add_argument("--threshold", type=float, default=0.5, help="composed mode's point threshold")
    parser.add_argument("--points", default=None, help='"x,y[;x,y]" foreground points (one prompt)')
    parser.add_argument("--boxes", default=None, help='"x0,y0,x1,y1[;...]" boxes (one mask each)')
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if (args.labels is None) == (args.points is None and args.boxes is None):
        parser.error("give either --labels (semantic segmentation) or --points/--boxes (SAM masks)")
    image = to_uint8_array(Path(args.image))
    model = load(args.checkpoint, device=args.device)
    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(",") if label.strip()]
        if not labels:
            parser.error("--labels is empty")
        result = semantic_overlay(model, image, labels, args.mode, args.threshold)
    else:
        points = None if args.points is None else parse_numbers(args.points, 2, "--points")
        boxes = None if args.boxes is None else parse_numbers(args.boxes, 4, "--boxes")
        result = mask_overlay(model, image, points, boxes)
    assert result.size == (image.shape[1], image.shape[0])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
