"""Three teachers on the proxy world: does a third (dense) teacher add what it knows without costing the
other two theirs? Issue 17's evidence, beside the two-teacher study of ``samclip.proxy.study``.

The third teacher (``samclip.proxy.dense_teacher``) knows each pixel's shape class. Per seed the study trains
the two-teacher recipe (``experiment=proxy``, the study's own ``seed_<S>/recipe`` when it is already there)
and the three-teacher one (``experiment=proxy_dense``) with the same lengths and seed, and scores each merged
model on zero-shot top-1 and box / point mIoU (the two teachers' metrics) and on k-NN semantic segmentation
of the world's VOC tree (the third's probe), on the student's tokens and, for the three-teacher student, on
its dense adaptor. Written under ``DIR``::

    DIR/teachers/dense_proxy.pth            the dense teacher (timm format, read by DinoTeacher)
    DIR/seed_<S>/three_teachers/            samclip-train's run of experiment=proxy_dense
    DIR/three_teachers.{json,md,png}
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from samclip.eval.datasets.semseg import open_segmentation_dataset
from samclip.eval.knn_seg import knn_segmentation
from samclip.eval.seg_probe import backbone_encoder
from samclip.models import create_model
from samclip.models.dino_teacher import DinoTeacher
from samclip.proxy.dense_teacher import DenseTeacherTraining, train_dense_teacher
from samclip.proxy.evaluate import PROXY_LAYOUT
from samclip.proxy.study import (
    SAM_TEACHER_FILE,
    StudySize,
    aggregate,
    compose_recipe,
    evaluate_merged,
    evaluate_teachers,
    prepare_world_and_teachers,
    report_eval,
    resolve_size,
    run_seeds,
    timed,
)
from samclip.proxy.world import SEMSEG_SETS, ProxyWorld, write_semseg_split
from samclip.serve.merged import load
from samclip.train.runner import run

DENSE_TEACHER_FILE = "dense_proxy.pth"  # configs/experiment/proxy_dense.yaml
THREE_TEACHERS = "three_teachers"
DENSE_HEAD = "dense"  # the adaptor's name in proxy_dense.yaml
DENSE_TRAINING = {
    "test": DenseTeacherTraining(images=8000, steps=2500, lr=2e-3),
    "quick": DenseTeacherTraining(images=8000, steps=2500, lr=2e-3),
    "full": DenseTeacherTraining(images=16000, steps=5000, lr=2e-3),
}
# The k-NN probe's memory bank: labelled images of the world's own semseg_train split (VOC's train set).
KNN_TRAIN_IMAGES = {"test": 48, "quick": 80, "full": 160}
# ~3-10 k bank patches: k = 10 keeps a patch's neighbours within one object more often than Hummingbird's 30.
KNN_NEIGHBOURS = 10


def ensure_knn_train_split(world: ProxyWorld, num_images: int, seed: int) -> None:
    """The VOC tree's train set (world split ``semseg_train``), written once beside its val set."""
    image_set, _ = SEMSEG_SETS["semseg_train"]
    if not (world.semseg_root / "VOC2012" / "ImageSets" / "Segmentation" / f"{image_set}.txt").is_file():
        write_semseg_split(world.semseg_root / "VOC2012", seed, num_images, "semseg_train")


def knn_miou(encode: Any, world: ProxyWorld, run_dir: Path, resolution: int) -> float:
    """k-NN label transfer from the VOC tree's train set to its val set with ``encode``'s features (mIoU, %)."""
    train = open_segmentation_dataset(PROXY_LAYOUT, str(world.semseg_root), "train")
    val = open_segmentation_dataset(PROXY_LAYOUT, str(world.semseg_root), "val")
    results = knn_segmentation(
        encode, train, val, run_dir, resolution=resolution, k=KNN_NEIGHBOURS, num_visualize=2
    )
    return float(results["mIoU"])


def dense_teacher_knn(
    out: Path, world: ProxyWorld, pretrained: Path | None, name: str, seed: int = 0
) -> float:
    """k-NN mIoU of the dense teacher's patch tokens; ``pretrained=None``: its ViT at a seeded random init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = DinoTeacher("samclip_proxy_dino", pretrained=None if pretrained is None else str(pretrained),
                              image_size=DenseTeacherTraining().image_size)  # fmt: skip
    return knn_miou(
        lambda images: teacher.encode(images).patches, world, out / "evals" / name, teacher.image_size
    )


def evaluate_student(
    checkpoint: Path, world: ProxyWorld, size: StudySize, out: Path, name: str
) -> dict[str, float]:
    """The two teachers' metrics of ``checkpoint`` and the k-NN mIoU of its tokens (and dense adaptor)."""
    metrics = evaluate_merged(checkpoint, world, size, out, name, semseg=False)
    model = load(checkpoint).model.eval()
    run_dir = out / "evals" / name
    metrics["knn_miou_tokens"] = knn_miou(
        backbone_encoder(model, "tokens"), world, run_dir / "knn_tokens", size.eval_resolution
    )
    if DENSE_HEAD in dict(model.config.adaptors):
        metrics["knn_miou_adaptor"] = knn_miou(
            backbone_encoder(model, f"adaptor:{DENSE_HEAD}"),
            world,
            run_dir / "knn_adaptor",
            size.eval_resolution,
        )
    return metrics


def run_seed(out: Path, world: ProxyWorld, size: StudySize, seed: int, timings: dict[str, float]) -> dict:
    seed_dir = out / f"seed_{seed}"
    runs = {
        "two_teachers": (seed_dir / "recipe", "proxy"),
        THREE_TEACHERS: (seed_dir / THREE_TEACHERS, "proxy_dense"),
    }
    rows = {}
    for row, (run_dir, experiment) in runs.items():
        cfg = compose_recipe(out, run_dir, size, f"seed={seed}", experiment=experiment)
        timed(timings, f"seed_{seed}/{row}", run, cfg)  # finished stages are reused
        rows[row] = evaluate_student(
            run_dir / "res_adapt" / "final.pt", world, size, out, f"seed_{seed}/{row}"
        )
    return rows


def run_three_teacher_study(
    out: str | Path, size_name: str = "quick", seeds: Sequence[int] | None = None, workers: int = 1
) -> dict[str, Any]:
    """The two- and three-teacher students of every seed in ``out``; returns ``three_teachers.json``'s content.

    ``workers`` > 1 runs seeds in that many processes of one thread each (the world and teachers first)."""
    size, seeds = resolve_size(size_name, seeds)
    out = Path(out).absolute()
    timings: dict[str, float] = {}
    start = time.time()
    world = prepare_world_and_teachers(out, size, seeds[0], timings)
    ensure_knn_train_split(world, KNN_TRAIN_IMAGES[size_name], seeds[0])
    dense_file = out / "teachers" / DENSE_TEACHER_FILE
    if not dense_file.is_file():
        timed(timings, "dense_teacher", train_dense_teacher, dense_file, DENSE_TRAINING[size_name], seeds[0])
    teachers = evaluate_teachers(world, out, size)
    sam = create_model(size.sam_teacher.model_name, sam_checkpoint=out / "teachers" / SAM_TEACHER_FILE).eval()
    teachers["dense"] = {"knn_miou": dense_teacher_knn(out, world, dense_file, "dense_teacher")}
    teachers["dense_untrained"] = {"knn_miou": dense_teacher_knn(out, world, None, "dense_untrained")}
    teachers["sam"]["knn_miou_tokens"] = knn_miou(
        backbone_encoder(sam, "tokens"), world, out / "evals" / "sam_teacher_knn", size.eval_resolution
    )
    per_seed = run_seeds(run_seed, out, world, size, seeds, timings, workers)
    timings["total"] = round(time.time() - start, 1)
    results = {
        "size": size_name,
        "seeds": list(seeds),
        "teachers": teachers,
        "rows": aggregate(per_seed),
        "per_seed": dict(zip((str(s) for s in seeds), per_seed, strict=True)),
    }
    (out / f"{THREE_TEACHERS}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{THREE_TEACHERS}_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    from samclip.proxy.three_teachers_report import plot_three_teachers, three_teachers_markdown

    (out / f"{THREE_TEACHERS}.md").write_text(three_teachers_markdown(results, timings))
    plot_three_teachers(results, out / f"{THREE_TEACHERS}.png")
    report_eval(out, THREE_TEACHERS, {"rows": results["rows"], "teachers": teachers})
    return results
