"""OV-SAM's Table-1 evaluator: GT masks as predictions give IoU 100; accuracy equals a hand count."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import samclip
from samclip.cli.export import main as export_main
from samclip.data.synth_instances import SYNTH_NOVEL_CLASSES, make_synthetic_instances
from samclip.eval.instseg import evaluate_instseg
from samclip.eval.ovsam import InstanceResult, evaluate_ovsam, evaluate_prompts, mask_centre, table1_metrics
from samclip.models.final_checkpoint import ClipTeacherSpec, save_final_checkpoint
from samclip.models.ovsam import OvSamOutput, create_ovsam_model
from samclip.serve.ovsam import OpenVocabularySam


@pytest.fixture(scope="module")
def val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ovsam_val")
    make_synthetic_instances(str(root), seed=4, num_train=2, num_val=8)
    return root


def test_gt_masks_as_predictions_give_iou_100_and_accuracy_is_a_hand_count(val: Path) -> None:
    raw = json.loads((val / "annotations" / "instances_val.json").read_text())
    names = {c["id"]: c["name"] for c in raw["categories"]}
    by_image: dict[tuple[int, int], list[dict]] = {}
    for annotation in raw["annotations"]:
        info = next(i for i in raw["images"] if i["id"] == annotation["image_id"])
        by_image.setdefault((info["height"], info["width"]), []).append(annotation)

    def oracle(image: np.ndarray, prompts: np.ndarray, kind: str, classes: list[str]):
        """The GT mask of the object each prompt points at; the right label on odd-sized-width images only."""
        candidates = by_image[image.shape[:2]]
        masks, labels = [], []
        for prompt in prompts:
            for annotation in candidates:
                mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
                x, y, w, h = annotation["bbox"]
                hit = (
                    np.allclose(prompt, [x, y, x + w, y + h])
                    if kind == "box"
                    else mask[int(prompt[0, 1]), int(prompt[0, 0])]
                )
                if hit:
                    masks.append(mask)
                    right = classes.index(names[annotation["category_id"]])
                    labels.append(right if image.shape[1] % 2 else (right + 1) % len(classes))
                    break
            else:
                raise AssertionError(f"no GT object at prompt {prompt}")
        return np.stack(masks), np.array(labels)

    assert len(by_image) == len(raw["images"])  # image sizes identify the images
    metrics, results = evaluate_prompts(
        oracle,
        str(val / "annotations" / "instances_val.json"),
        str(val / "val"),
        novel_classes=list(SYNTH_NOVEL_CLASSES),
    )
    widths = {i["id"]: i["width"] for i in raw["images"]}
    correct = sum(widths[a["image_id"]] % 2 for a in raw["annotations"])
    novel = [a for a in raw["annotations"] if names[a["category_id"]] in SYNTH_NOVEL_CLASSES]
    for kind in ("box", "point"):
        assert metrics[kind]["iou_base"] == pytest.approx(100.0)
        assert metrics[kind]["iou_novel"] == pytest.approx(100.0)
        assert metrics[kind]["num_novel"] == len(novel) > 0
        assert metrics[kind]["num_base"] + metrics[kind]["num_novel"] == len(raw["annotations"])
        assert metrics[kind]["accuracy"] == pytest.approx(100.0 * correct / len(raw["annotations"]))
    assert 0 < correct < len(raw["annotations"])
    assert len(results) == 2 * len(raw["annotations"])  # every instance, once per prompt kind


def test_table1_metrics_average_per_group() -> None:
    results = [
        InstanceResult("box", False, 0.5, True),
        InstanceResult("box", False, 1.0, False),
        InstanceResult("box", True, 0.25, True),
        InstanceResult("point", True, 0.0, False),
    ]
    metrics = table1_metrics(results)
    assert metrics["box"]["iou_base"] == pytest.approx(75.0) and metrics["box"]["iou_novel"] == pytest.approx(
        25.0
    )
    assert metrics["box"]["accuracy"] == pytest.approx(200 / 3) and metrics["box"]["accuracy_novel"] == 100.0
    assert metrics["point"]["iou_base"] is None and metrics["point"]["accuracy"] == 0.0


def test_mask_centre_lies_inside_a_non_convex_mask() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 5:12] = True  # an L: its centroid (about (14, 24)) is outside the mask
    mask[28:35, 5:35] = True
    x, y = mask_centre(mask)
    assert mask[int(y), int(x)]


def test_an_ovsam_export_loads_and_serves_the_box_prompted_mask_ap(val: Path, tmp_path: Path) -> None:
    """``samclip-export --format samclip`` of an OV-SAM round-trips through ``samclip.load``, and the existing
    COCO evaluator (Tables 2-3: detector boxes as prompts) runs on it; GT boxes with their labels as detections."""
    torch.manual_seed(0)
    model = create_ovsam_model("ovsam_tiny")
    final = tmp_path / "final.pt"
    save_final_checkpoint(final, model, ClipTeacherSpec("samclip-tiny-rn-clip", None), "clip2sam", 3)
    export_main([str(final), "--format", "samclip", "--out", str(tmp_path / "export")])
    loaded, exported = samclip.load(final), samclip.load(tmp_path / "export")
    assert isinstance(loaded, OpenVocabularySam) and loaded.source["stage"] == "clip2sam"
    image = np.full((90, 120, 3), 128, np.uint8)
    a = loaded.segment(image, boxes=[[10, 10, 60, 80]], labels=["cat", "dog"])
    b = exported.segment(image, boxes=[[10, 10, 60, 80]], labels=["cat", "dog"])
    assert torch.equal(a.logits, b.logits) and torch.equal(a.probs, b.probs) and a.labels[0] in ("cat", "dog")
    assert a.masks.shape == (1, 90, 120) and a.probs.sum().item() == pytest.approx(1.0)
    raw = json.loads((val / "annotations" / "instances_val.json").read_text())
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in raw["annotations"]
    ]
    (tmp_path / "detections.json").write_text(json.dumps(detections))
    metrics = evaluate_instseg(
        loaded,
        tmp_path / "instseg",
        annotations=str(val / "annotations" / "instances_val.json"),
        detections=str(tmp_path / "detections.json"),
        images_root=str(val / "val"),
        num_visualize=0,
    )
    assert metrics["num_masks"] == len(raw["annotations"]) and 0.0 <= metrics["AP"] <= 100.0


def _ground_truth(val: Path) -> tuple[dict, dict[int, str], dict[tuple[int, int], list[dict]]]:
    """The val annotations, class names, and the annotations of each image keyed by its (height, width)."""
    raw = json.loads((val / "annotations" / "instances_val.json").read_text())
    names = {c["id"]: c["name"] for c in raw["categories"]}
    by_size: dict[tuple[int, int], list[dict]] = {}
    for annotation in raw["annotations"]:
        info = next(i for i in raw["images"] if i["id"] == annotation["image_id"])
        by_size.setdefault((info["height"], info["width"]), []).append(annotation)
    assert len(by_size) == len(raw["images"])  # image sizes identify the images
    return raw, names, by_size


def _prompted(annotations: list[dict], prompt: np.ndarray, kind: str, scale: float = 1.0) -> dict:
    """The annotation a box (xyxy) or a point prompt (``[1, 2]`` xy) given at ``scale`` x the image refers to."""
    for annotation in annotations:
        x, y, w, h = annotation["bbox"]
        if kind == "box":
            hit = np.allclose(np.asarray(prompt) / scale, [x, y, x + w, y + h], atol=1.0 / scale)
        else:
            px, py = np.asarray(prompt, dtype=np.float64).reshape(2) / scale
            hit = bool(mask_utils.decode(annotation["segmentation"])[int(py), int(px)])
        if hit:
            return annotation
    raise AssertionError(f"no GT object at the {kind} prompt {prompt} (scale {scale})")


def _evaluate(model: object, val: Path, tmp_path: Path) -> dict:
    return evaluate_ovsam(
        model,
        tmp_path,
        annotations=str(val / "annotations" / "instances_val.json"),
        images_root=str(val / "val"),
        novel_classes=list(SYNTH_NOVEL_CLASSES),
    )


@pytest.mark.parametrize("answer", ["gt_mask", "box_as_mask"])
def test_evaluate_ovsam_scores_a_known_good_model_through_its_segment_call(
    val: Path, tmp_path: Path, answer: str
) -> None:
    """The ``samclip-eval eval=ovsam_*`` entry point itself (its ``embed_image`` / ``segment`` / ``probs.argmax``
    path) on a stub model that answers every prompt with its object's GT mask (IoU 100) or with the filled GT
    box (IoU = area / (w h) per instance, by hand from the annotation file), and the right label (accuracy 100).

    The smoke run's IoU of 0.0 is its random decoder (masks of a few pixels, away from the objects), not this code.
    """
    raw, names, by_size = _ground_truth(val)

    class KnownGood:
        ovsam = "stub"  # what evaluate_ovsam checks an OV-SAM by

        def embed_image(self, image: np.ndarray) -> np.ndarray:
            return image

        def segment(self, image, labels, boxes=None, points=None) -> SimpleNamespace:
            kind, prompts = ("box", boxes) if boxes is not None else ("point", points)
            masks, probs = [], torch.zeros(len(prompts), len(labels))
            for k, prompt in enumerate(prompts):
                annotation = _prompted(by_size[image.shape[:2]], prompt, kind)
                mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
                if answer == "box_as_mask":
                    x, y, w, h = (int(v) for v in annotation["bbox"])
                    mask = np.zeros_like(mask)
                    mask[y : y + h, x : x + w] = True
                masks.append(mask)
                probs[k, labels.index(names[annotation["category_id"]])] = 1.0
            return SimpleNamespace(masks=torch.from_numpy(np.stack(masks)), probs=probs)

    metrics = _evaluate(KnownGood(), val, tmp_path)
    assert all(float(v).is_integer() for a in raw["annotations"] for v in a["bbox"])  # pixel-tight boxes
    hand = {
        group: [
            100.0 * (a["area"] / (a["bbox"][2] * a["bbox"][3]) if answer == "box_as_mask" else 1.0)
            for a in raw["annotations"]
            if (names[a["category_id"]] in SYNTH_NOVEL_CLASSES) == (group == "novel")
        ]
        for group in ("base", "novel")
    }
    for kind in ("box", "point"):
        for group in ("base", "novel"):
            assert metrics[f"{kind}/iou_{group}"] == pytest.approx(float(np.mean(hand[group])))
            assert metrics[f"{kind}/accuracy_{group}"] == 100.0
        assert metrics[f"{kind}/accuracy"] == 100.0
    assert metrics["num_instances"] == len(raw["annotations"])
    if answer == "box_as_mask":
        assert 60.0 < metrics["box/iou_base"] < 99.0  # ellipses fill pi/4 of their box: not the GT masks' 100


def _low_res(mask: np.ndarray, scale: float, low: int, size: int) -> np.ndarray:
    """A mask (image pixels) in the padded ``size`` frame at ``low`` x ``low``: each cell samples the image pixel
    under its centre (cell i covers frame pixels [i size/low, (i + 1) size/low)); cells past the image are off."""
    height, width = mask.shape
    centre = ((np.arange(low) + 0.5) * (size / low) / scale).astype(int)
    inside = (centre[:, None] < height) & (centre[None, :] < width)
    return mask[np.minimum(centre, height - 1)[:, None], np.minimum(centre, width - 1)[None, :]] & inside


def test_ovsam_segment_maps_prompts_into_its_frame_and_low_res_masks_back_onto_the_image(
    val: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ``OpenVocabularySam.segment`` under evaluate_ovsam, its decoder replaced by an oracle: the oracle
    finds each prompt's object from the prompt as the decoder receives it (so boxes must arrive xyxy and points
    xy, scaled into the 256 px frame) and answers that object's GT mask sampled into the 64 x 64 low-res logits
    of the padded frame. segment's upscaling, crop of the padding and resize back to the image must then score
    what an independent reference scores: the same low-res mask taken back to image pixels by nearest lookup."""
    raw, names, by_size = _ground_truth(val)
    torch.manual_seed(0)
    model = OpenVocabularySam(create_ovsam_model("ovsam_tiny"))
    size, low = model.config.image_size, model.config.image_size // 4
    current: dict[str, tuple[int, int]] = {}
    embed_image = model.embed_image

    def recording_embed_image(image):
        frame = embed_image(image)
        current["size"] = frame.original_size
        return frame

    def oracle_decode(embedding, prompts, multimask=False) -> OvSamOutput:
        (group,) = prompts
        height, width = current["size"]
        scale = size / max(height, width)  # the frame's scale, computed here, not by the model's code
        kind, given = ("box", group.boxes) if group.boxes is not None else ("point", group.point_coords)
        logits, boxes = [], []
        for prompt in given.cpu().numpy():
            annotation = _prompted(by_size[(height, width)], prompt, kind, scale)
            mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
            logits.append(torch.where(torch.from_numpy(_low_res(mask, scale, low, size)), 10.0, -10.0))
            x, y, w, h = annotation["bbox"]
            boxes.append(torch.tensor([x, y, x + w, y + h]) * scale)
        count = len(logits)
        return OvSamOutput(
            torch.stack(logits)[:, None],
            torch.zeros(count, 1),
            torch.zeros(count, dtype=torch.long),
            torch.stack(boxes).float(),
            torch.zeros(count, model.ovsam.clip.embed_dim),
        )

    monkeypatch.setattr(model, "embed_image", recording_embed_image)
    monkeypatch.setattr(model.ovsam, "decode", oracle_decode)
    metrics = _evaluate(model, val, tmp_path)
    reference: dict[str, list[float]] = {"base": [], "novel": []}
    for annotation in raw["annotations"]:
        mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
        height, width = mask.shape
        scale = size / max(height, width)
        cells = _low_res(mask, scale, low, size)
        rows, cols = (
            np.minimum(((np.arange(n) + 0.5) * scale * low / size).astype(int), low - 1)
            for n in (height, width)
        )  # the low-res cell under each image pixel's centre
        back = cells[rows[:, None], cols[None, :]]
        group = "novel" if names[annotation["category_id"]] in SYNTH_NOVEL_CLASSES else "base"
        reference[group].append(100.0 * (back & mask).sum() / (back | mask).sum())
    assert metrics["num_instances"] == len(raw["annotations"])
    for group, ious in reference.items():
        assert (
            np.mean(ious) > 75.0
        )  # the masks come back: 64 x 64 cells lose only the edges (and tiny objects)
        for kind in ("box", "point"):
            assert metrics[f"{kind}/iou_{group}"] == pytest.approx(np.mean(ious), abs=2.0), (kind, group)
