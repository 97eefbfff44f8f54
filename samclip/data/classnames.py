"""Class names: the semantic segmentation benchmarks' (in label order, as mmsegmentation lists them), a
classification set's (``read_classnames``), and both as text prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import open_clip

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# Pascal-Context with background: 60 classes; the 59-class benchmark drops "background" (label 0 ignored).
CONTEXT_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track",
    "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff",
    "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)  # fmt: skip

assert len(VOC_CLASSES) == 21 and len(CONTEXT_CLASSES) == 60
assert len(ADE20K_CLASSES) == 150 and len(COCO_STUFF_CLASSES) == 171


# Benchmark label names are not all words: VOC/Pascal-Context write some classes as one token
# ("diningtable"), COCO-Stuff and COCO panoptic carry dataset-merging tags ("wall-other-merged",
# "door-stuff"). Text prompts use the plain words, cleaned the same way for every dataset.
_COMPOUND_WORDS = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}
_MERGING_TAGS = ("-merged", "-other", "-stuff")


def prompt_names(names: Sequence[str]) -> tuple[str, ...]:
    """Label names as text prompts: "diningtable" -> "dining table", "sky-other-merged" -> "sky",
    "wall-brick" -> "wall brick". A name whose plain form collides with another's keeps its spelling,
    so names stay unique."""
    plain = [_plain_name(name) for name in names]
    return tuple(short if plain.count(short) == 1 else name for name, short in zip(names, plain, strict=True))


def _plain_name(name: str) -> str:
    name = _COMPOUND_WORDS.get(name, name)
    for tag in _MERGING_TAGS:
        name = name.replace(tag, "")
    return name.replace("-", " ").strip()


coco_panoptic_prompt_names = prompt_names  # the panoptic reader's name for it


def read_classnames(
    spec: str | Sequence[str] | None, folder_classes: Sequence[str] | None = None
) -> list[str]:
    """Class names in label order: ``"imagenet"`` (open_clip's list), a text file (one per line), a list,
    or, for an ImageFolder, its folder names (underscores as spaces) when ``spec`` is None."""
    if spec is None:
        if folder_classes is None:
            raise ValueError("eval.classnames is required for webdataset classification data")
        return list(prompt_names([name.replace("_", " ") for name in folder_classes]))
    if isinstance(spec, str):
        if spec == "imagenet":
            return list(open_clip.IMAGENET_CLASSNAMES)
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"class name file {path} does not exist (or use 'imagenet' or a list)")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [str(name) for name in spec]
