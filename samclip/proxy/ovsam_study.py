"""Open-Vocabulary SAM's Table 1 on the proxy world, beside SAM-CLIP's merged model and the two teachers.

    samclip-proxy --out DIR --ovsam [--ovsam-size test] [--seeds 0 1 2]

``DIR`` holds world/ and teachers/ (a finished proxy study's, or links to them). Per seed,
``experiment=proxy_ovsam`` trains SAM2CLIP then CLIP2SAM (base shapes only) in ``DIR/ovsam/seed_<S>/``; every
model is then prompted with the held-out instances' GT boxes and mask-centre points
(``samclip.eval.ovsam.evaluate_prompts``, the evaluator of ``eval=ovsam_coco``). Rows:

- ``ovsam``: OV-SAM as the paper runs it (CLIP2SAM's and the frozen CLIP's class scores fused);
  ``ovsam_learned`` / ``ovsam_frozen_clip``: the same masks, named by CLIP2SAM alone / the frozen CLIP alone.
- ``samclip``: the merged SAM-CLIP of ``DIR/seed_<S>/recipe/res_adapt/final.pt`` where it exists: masks from
  its SAM head; the name from its CLIP head's zero-shot classification of the object's crop (the prompt's
  box, or the predicted mask's for points, as OV-SAM recognises). It has no region or mask-pooled path, so
  its accuracy is a crop classifier's, not a label token's; and it never saw a base/novel split (its CLIP
  head distils a CLIP trained on every shape), so its "novel" column is not held out.
- ``teachers``: the proxy SAM teacher's masks, named by the proxy CLIP teacher on the same crops: where
  OV-SAM's decoder starts, and what its frozen CLIP knows of every shape.
- ``box_fill``: the box prompt itself filled as the mask (box IoU only): what the prompt alone gives.

Writes ``DIR/ovsam/results.json`` and ``results.md`` (mean +- SE over seeds).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from samclip.config_root import config_dir
from samclip.data.clip_stream import clip_eval_transform
from samclip.eval.ovsam import PROMPT_KINDS, evaluate_prompts
from samclip.models import create_model
from samclip.models.samclip_model import SamClipModel
from samclip.models.zeroshot_classifier import build_text_classifier
from samclip.proxy.instances import PROXY_NOVEL_CLASSES, prepare_proxy_instances
from samclip.proxy.study import CLIP_TEACHER_FILE, SAM_TEACHER_FILE, mean_se
from samclip.proxy.world import SHAPES
from samclip.serve.merged import MergedSamClip, load
from samclip.serve.ovsam import OpenVocabularySam
from samclip.train.runner import run

log = logging.getLogger(__name__)

# Table 1's columns, per prompt kind (samclip.eval.ovsam.table1_metrics's keys).
TABLE_COLUMNS = ("iou_base", "iou_novel", "accuracy_base", "accuracy_novel", "accuracy")
ROWS = ("ovsam", "ovsam_learned", "ovsam_frozen_clip", "samclip", "teachers", "box_fill")
# OV-SAM's fusion weight of the frozen CLIP's scores per row (None: the checkpoint's own).
OVSAM_FUSION = {"ovsam": None, "ovsam_learned": 0.0, "ovsam_frozen_clip": 1.0}
SAMCLIP_FINAL = Path("recipe") / "res_adapt" / "final.pt"  # under DIR/seed_<S>/ (samclip.proxy.study)
CROP_CONTEXT = 1.5  # the crop is a square of 1.5x the box's longer side: the object plus some background
SAMCLIP_CROP_RESOLUTION = 128  # the proxy study's zero-shot resolution for the merged model


@dataclass(frozen=True)
class OvSamStudySize:
    sam2clip_steps: int
    clip2sam_steps: int
    num_train: int  # instance scenes for CLIP2SAM
    num_val: int  # held-out scenes for Table 1
    seeds: tuple[int, ...] = (0,)


OVSAM_STUDY_SIZES = {
    "tiny": OvSamStudySize(2, 2, 8, 4),  # tests: the pipeline, not learning
    "test": OvSamStudySize(1500, 800, 400, 100, seeds=(0, 1, 2)),
}


def compose_ovsam(
    proxy_dir: Path, instances_dir: Path, run_dir: Path, size: OvSamStudySize, *overrides: str
) -> DictConfig:
    """``experiment=proxy_ovsam`` with the size's lengths, as ``samclip-train`` would compose it."""
    lengths = [
        f"stage.sam2clip.schedule_steps={size.sam2clip_steps}",
        f"stage.sam2clip.warmup_steps={max(1, size.sam2clip_steps // 20)}",
        f"stage.clip2sam.schedule_steps={size.clip2sam_steps}",
        f"stage.clip2sam.warmup_steps={max(1, size.clip2sam_steps // 20)}",
        f"prepare.num_train={size.num_train}",
        f"prepare.num_val={size.num_val}",
    ]
    with initialize_config_dir(config_dir=str(config_dir("train.yaml")), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "experiment=proxy_ovsam",
                f"proxy_dir={proxy_dir}",
                f"instances_dir={instances_dir}",
                f"run_dir={run_dir}",
                *lengths,
                *overrides,
            ],
        )


def crop_square(image: np.ndarray, box: Sequence[float], context: float = CROP_CONTEXT) -> Image.Image:
    """A square crop around ``box`` (xyxy) of ``context`` x its longer side, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0, 2.0) * context / 2
    height, width = image.shape[:2]
    left, top = int(max(0, np.floor(cx - half))), int(max(0, np.floor(cy - half)))
    right, bottom = int(min(width, np.ceil(cx + half))), int(min(height, np.ceil(cy + half)))
    return Image.fromarray(image[top : max(bottom, top + 1), left : max(right, left + 1)])


def mask_box(mask: np.ndarray, fallback: Sequence[float]) -> list[float]:
    """xyxy of a predicted mask (``fallback`` if it is empty)."""
    ys, xs = np.nonzero(mask)
    if not xs.size:
        return [float(v) for v in fallback]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def crop_predictor(
    sam_model: SamClipModel, classify: Callable[[Image.Image, Sequence[str]], int]
) -> Callable[[np.ndarray, np.ndarray, str, Sequence[str]], tuple[np.ndarray, np.ndarray]]:
    """A Table 1 predictor: masks from a SAM head, each named by ``classify`` on its crop (the box prompt's,
    or the predicted mask's box for a point: what OV-SAM's RoIAlign sees)."""

    def predict(
        image: np.ndarray, prompts: np.ndarray, kind: str, names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        embedding = sam_model.embed_image(image)
        if kind == "box":
            masks = sam_model.segment(embedding, boxes=prompts).masks.cpu().numpy()
            boxes = [list(b) for b in prompts]
        else:
            ones = np.ones(prompts.shape[:2], dtype=np.int64)
            masks = sam_model.segment(embedding, points=prompts, point_labels=ones).masks.cpu().numpy()
            boxes = [mask_box(m, [*(p[0] - 1), *(p[0] + 1)]) for m, p in zip(masks, prompts, strict=True)]
        labels = np.array([classify(crop_square(image, box), names) for box in boxes])
        return masks, labels

    return predict


class ClipCropClassifier:
    """The proxy CLIP teacher's zero-shot label of a crop (its own resolution, OpenAI templates)."""

    def __init__(self, model_name: str, pretrained: str | Path) -> None:
        self.model = open_clip.create_model(model_name, pretrained=str(pretrained)).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = self.model.visual.image_size
        self.resolution = int(size if isinstance(size, int) else size[0])
        self.mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        self._classifiers: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, crop: Image.Image, names: Sequence[str]) -> int:
        key = tuple(names)
        if key not in self._classifiers:
            self._classifiers[key] = build_text_classifier(self.model, self.tokenizer, key)
        pixels = clip_eval_transform(crop.convert("RGB"), self.resolution)[None]
        features = self.model.encode_image((pixels - self.mean) / self.std, normalize=True)
        return int((features @ self._classifiers[key]).argmax(1))


def table1(predict: Any, instances_dir: Path) -> dict[str, Any]:
    """Table 1's columns of ``predict`` on the held-out instances, flat (``box/iou_base`` ...)."""
    metrics, results = evaluate_prompts(
        predict,
        str(instances_dir / "annotations" / "instances_val.json"),
        str(instances_dir / "val"),
        novel_classes=PROXY_NOVEL_CLASSES,
    )
    flat = {f"{kind}/{key}": value for kind, values in metrics.items() for key, value in values.items()}
    return flat | {"num_instances": len(results) // len(PROMPT_KINDS)}


def evaluate_ovsam_rows(checkpoint: Path, instances_dir: Path) -> dict[str, dict[str, Any]]:
    """The three OV-SAM rows of one clip2sam final.pt: the fused scores, and each score source alone."""
    model = load(checkpoint)
    assert isinstance(model, OpenVocabularySam), checkpoint
    config = model.ovsam.config
    rows = {}
    for row, weight in OVSAM_FUSION.items():
        model.ovsam.config = config if weight is None else replace(config, clip_score_weight=weight)

        def predict(
            image: np.ndarray, prompts: np.ndarray, kind: str, names: Sequence[str]
        ) -> tuple[np.ndarray, np.ndarray]:
            frame = model.embed_image(image)
            given = {"boxes": prompts} if kind == "box" else {"points": prompts}
            out = model.segment(frame, labels=list(names), **given)
            return out.masks.cpu().numpy(), out.probs.argmax(-1).cpu().numpy()

        rows[row] = table1(predict, instances_dir)
    model.ovsam.config = config
    return rows


def evaluate_samclip(checkpoint: Path, instances_dir: Path) -> dict[str, Any]:
    merged = load(checkpoint)
    assert isinstance(merged, MergedSamClip), checkpoint

    def classify(crop: Image.Image, names: Sequence[str]) -> int:
        return int(merged.classify(crop, names, resolution=SAMCLIP_CROP_RESOLUTION).probs.argmax())

    return table1(crop_predictor(merged.model, classify), instances_dir)


def evaluate_teachers(proxy_dir: Path, instances_dir: Path, clip_model_name: str) -> dict[str, Any]:
    sam = create_model("samclip_tiny", sam_checkpoint=proxy_dir / "teachers" / SAM_TEACHER_FILE).eval()
    clip = ClipCropClassifier(clip_model_name, proxy_dir / "teachers" / CLIP_TEACHER_FILE)
    return table1(crop_predictor(sam, clip), instances_dir)


def evaluate_box_fill(instances_dir: Path) -> dict[str, Any]:
    """The box prompt filled as the mask, no image seen (``samclip.proxy.evaluate.box_baselines``'s baseline
    on these instances): a model whose box IoU is below it has learned less than its prompt says."""

    def predict(
        image: np.ndarray, prompts: np.ndarray, kind: str, names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        masks = np.zeros((len(prompts), *image.shape[:2]), dtype=bool)
        if kind == "box":
            for mask, (x0, y0, x1, y1) in zip(masks, prompts, strict=True):
                mask[round(y0) : round(y1), round(x0) : round(x1)] = True
        return masks, np.full(len(prompts), -1)

    return {k: v for k, v in table1(predict, instances_dir).items() if k.startswith("box/iou_")}


def table_markdown(results: dict[str, Any]) -> str:
    """Table 1's layout: one row per model, IoU base / novel and accuracy base / novel / all per prompt kind."""
    seeds = ", ".join(str(s) for s in results["seeds"])
    lines = [
        f"# Open-Vocabulary SAM on the proxy world (size {results['size']}, seeds {seeds})",
        "",
        f"Base classes {', '.join(results['base_classes'])}; novel {', '.join(results['novel_classes'])}. "
        f"{results['num_instances']} held-out instances, each prompted by its GT box and by its mask centre. "
        f"IoU and accuracy in %, mean ± SE over seeds; chance accuracy {results['chance_accuracy']:.0f}.",
        "",
    ]
    header = ["model"] + [f"{kind} {col}" for kind in PROMPT_KINDS for col in TABLE_COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, cells in results["rows"].items():
        values = []
        for kind in PROMPT_KINDS:
            for col in TABLE_COLUMNS:
                cell = cells.get(f"{kind}/{col}")
                values.append("–" if cell is None else f"{cell['mean']:.1f} ± {cell['se']:.1f}")
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    lines += ["", "Rows: see samclip/proxy/ovsam_study.py's docstring; `samclip` is not held out on cross."]
    if results.get("missing"):
        lines += ["", "Not evaluated: " + "; ".join(results["missing"])]
    lines += ["", f"Timings (s): {json.dumps(results['timings'])}", ""]
    return "\n".join(lines)


def aggregate_rows(per_seed: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """{seed: {row: {key: value}}} -> {row: {key: mean/se/values}} over the seeds that have the row."""
    rows: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        present = [seed_rows[row] for seed_rows in per_seed.values() if row in seed_rows]
        if not present:
            continue
        keys = [k for k in present[0] if all(isinstance(p.get(k), int | float) for p in present)]
        rows[row] = {k: mean_se([float(p[k]) for p in present]) for k in keys}
    return rows


def run_ovsam_study(
    out: str | Path, size_name: str = "test", seeds: Sequence[int] | None = None
) -> dict[str, Any]:
    """Train (or reuse) OV-SAM per seed on ``out``'s world and teachers and write Table 1 to ``out/ovsam/``."""
    if size_name not in OVSAM_STUDY_SIZES:
        raise ValueError(f"unknown OV-SAM study size {size_name!r}; available: {sorted(OVSAM_STUDY_SIZES)}")
    size, out = OVSAM_STUDY_SIZES[size_name], Path(out).absolute()
    seeds = tuple(size.seeds if seeds is None else seeds)
    if not seeds:
        raise ValueError("the OV-SAM study needs at least one seed")
    for needed in (
        out / "world" / "DONE",
        out / "teachers" / CLIP_TEACHER_FILE,
        out / "teachers" / SAM_TEACHER_FILE,
    ):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed} does not exist: run samclip-proxy --out {out} first (or link it)"
            )
    study = out / "ovsam"
    instances = study / "instances"
    prepare_proxy_instances(str(instances), str(out), size.num_train, size.num_val)
    timings: dict[str, float] = {}
    per_seed: dict[str, dict[str, dict[str, Any]]] = {}
    missing = []
    for seed in seeds:
        run_dir = study / f"seed_{seed}"
        cfg = compose_ovsam(out, instances, run_dir, size, f"seed={seed}")
        start = time.time()
        run(cfg)
        timings[f"seed_{seed}/train"] = round(time.time() - start, 1)
        start = time.time()
        rows = evaluate_ovsam_rows(run_dir / "clip2sam" / "final.pt", instances)
        merged = out / f"seed_{seed}" / SAMCLIP_FINAL
        if merged.is_file():
            rows["samclip"] = evaluate_samclip(merged, instances)
        else:
            missing.append(f"samclip seed {seed}: {merged} does not exist")
        timings[f"seed_{seed}/evaluation"] = round(time.time() - start, 1)
        per_seed[str(seed)] = rows
        log.info("ovsam study: seed %d: %s", seed, json.dumps(rows["ovsam"]))
    start = time.time()
    teachers = evaluate_teachers(out, instances, cfg.model.clip_model_name)
    box_fill = evaluate_box_fill(instances)
    timings["teachers/evaluation"] = round(time.time() - start, 1)
    for rows in per_seed.values():
        # Neither depends on the seed: their SE over seeds is 0 by construction.
        rows["teachers"], rows["box_fill"] = teachers, box_fill
    results = {
        "size": size_name,
        "seeds": list(seeds),
        "base_classes": [s for s in SHAPES if s not in PROXY_NOVEL_CLASSES],
        "novel_classes": list(PROXY_NOVEL_CLASSES),
        "chance_accuracy": 100.0 / len(SHAPES),
        "num_instances": teachers["num_instances"],
        "rows": aggregate_rows(per_seed),
        "per_seed": per_seed,
        "missing": missing,
        "timings": timings,
    }
    (study / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (study / "results.md").write_text(table_markdown(results))
    return results
