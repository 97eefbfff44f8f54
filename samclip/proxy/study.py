"""The proxy study: world -> trained teachers -> the three-stage recipe -> samclip-eval's tasks -> λ ablation.

Everything is written under one directory (``samclip-proxy --out DIR``)::

    DIR/world/     the proxy world (samclip.proxy.world)
    DIR/teachers/  clip_proxy.pt (open_clip state dict), sam_proxy.pth (official SAM layout)
    DIR/seed_<S>/recipe/    samclip-train's run: head_probe/, multitask/ (λ = 10), res_adapt/
    DIR/seed_<S>/control_no_clip/  multitask without L_clip, then res_adapt, from recipe/head_probe
    DIR/seed_<S>/lambda_<λ>/multitask/  the ablation's other λ, each from recipe/head_probe/final.pt
    DIR/evals/     one samclip-eval report folder per (model, task), seed_<S>/ for the student's
    DIR/results.json, results.md, stages.png, lambda.png, timings.json

Finished parts (world, teachers, stage finals) are reused when the study is run again on the same DIR.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from samclip.config_root import config_dir
from samclip.eval.report import write_results
from samclip.eval.semseg import evaluate_semseg
from samclip.eval.zeroshot_cls import evaluate_zeroshot_cls
from samclip.models import create_model
from samclip.proxy.evaluate import PROXY_LAYOUT, box_baselines, evaluate_prompted_miou, majority_top1
from samclip.proxy.teachers import (
    ClipTeacherTraining,
    SamTeacherTraining,
    train_clip_teacher,
    train_sam_teacher,
)
from samclip.proxy.world import SHAPES, ProxyWorld, write_world
from samclip.serve.merged import load
from samclip.train.runner import run

log = logging.getLogger(__name__)

STAGES = ("head_probe", "multitask", "res_adapt")
SAM_WEIGHTS = (0.0, 1.0, 10.0, 100.0)
RECIPE_SAM_WEIGHT = 10.0  # the paper's λ; the recipe's own multitask stage is this ablation point
CLIP_TEACHER_FILE, SAM_TEACHER_FILE = "clip_proxy.pt", "sam_proxy.pth"  # configs/experiment/proxy.yaml
# Rows of the study besides the recipe: the control trains stage 2 without L_clip (SAM term only), then
# res_adapt as the recipe does. If it scores like the recipe, stage 2's CLIP term is doing nothing.
CONTROL = "control_no_clip"


@dataclass(frozen=True)
class StudySize:
    world: str
    clip_teacher: ClipTeacherTraining
    sam_teacher: SamTeacherTraining
    head_probe_steps: int
    multitask_steps: int  # the schedule; the stage stops at 80 % of it (the paper's 16 of 20 epochs)
    res_adapt_steps: int
    eval_resolution: int = 128  # zero-shot classification; semantic segmentation runs at 2x (as 448 vs 224)
    recipe_overrides: tuple[str, ...] = field(default_factory=tuple)
    sam_weights: tuple[float, ...] = SAM_WEIGHTS  # the λ sweep (always includes the recipe's λ)
    seeds: tuple[int, ...] = (0, 1, 2)  # student runs; world and teachers are built once, from the first


def _sam(steps: int) -> SamTeacherTraining:
    return SamTeacherTraining(steps=steps, images_per_step=4, masks_per_image=4, lr=3e-3, focal_alpha=-1.0)


# Stage 2 lengths come from the pilots in docs/proxy/README.md: at 120 steps (the old length) the backbone
# moves ~1 % and zero-shot stays near the head probe; L_clip alone needs ~1500 steps at lr 1e-3 to reach
# two thirds of the teacher. The test size keeps the same shape at a length CI can afford. The SAM teacher's
# lengths come from its held-out curve (pilot 5): at 800 steps it scored below filling the box (54 vs 60 on
# the quick world), which let no student forget; it reaches 77 at 2500 and stays there at 3000.
STUDY_SIZES = {
    "test": StudySize(
        "test", ClipTeacherTraining(epochs=8), _sam(3000), 150, 400, 30, sam_weights=(0.0, 10.0), seeds=(0,)
    ),
    "quick": StudySize("quick", ClipTeacherTraining(epochs=8), _sam(3000), 150, 1500, 30),
    "full": StudySize("full", ClipTeacherTraining(epochs=5), _sam(6000), 300, 3000, 60),
}


def compose_recipe(
    proxy_dir: Path, run_dir: Path, size: StudySize, *overrides: str, experiment: str = "proxy"
) -> DictConfig:
    """``experiment`` (proxy, or proxy_dense with the third teacher) with the study's lengths and
    ``overrides``, as ``samclip-train`` would compose it."""
    lengths = [
        f"stage.head_probe.schedule_steps={size.head_probe_steps}",
        f"stage.multitask.schedule_steps={size.multitask_steps}",
        f"stage.multitask.stop_step={int(0.8 * size.multitask_steps)}",
        f"stage.res_adapt.schedule_steps={size.res_adapt_steps}",
    ]
    with initialize_config_dir(config_dir=str(config_dir("train.yaml")), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"experiment={experiment}",
                f"proxy_dir={proxy_dir}",
                f"run_dir={run_dir}",
                *lengths,
                *size.recipe_overrides,
                *overrides,
            ],
        )


def ablation_overrides(sam_weight: float, head_probe_final: Path) -> list[str]:
    """The multitask stage alone with ``loss.sam_weight=λ``, from the recipe's head_probe final.pt.

    λ = 0 drops the SA-1B stream and freezes the SAM head (it would get no gradient; the trainer refuses a
    trainable head without loss), so only L_clip moves the shared backbone: the forgetting the λ guards against.
    """
    overrides = ["stages=[multitask]", f"init_from={head_probe_final}", f"loss.sam_weight={sam_weight}"]
    if sam_weight == 0.0:
        overrides += ["stage.multitask.sam=null", "stage.multitask.trainable=['backbone.*','clip_head.*']"]
    return overrides


def control_overrides(head_probe_final: Path) -> list[str]:
    """Stage 2 without L_clip (the SAM term alone trains backbone and mask decoder), then res_adapt, from the
    recipe's head_probe final.pt: what the merged model scores when stage 2 ignores the CLIP teacher."""
    return [
        "stages=[multitask,res_adapt]",
        f"init_from={head_probe_final}",
        "stage.multitask.clip=null",
        "stage.multitask.trainable=['backbone.*','sam_head.mask_decoder.*']",
    ]


def timed(timings: dict[str, float], name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    start = time.time()
    result = fn(*args, **kwargs)
    timings[name] = round(time.time() - start, 1)
    log.info("proxy study: %s took %.0fs", name, timings[name])
    return result


def report_eval(out: Path, name: str, results: dict[str, Any]) -> dict[str, Any]:
    write_results(out / "evals" / name, name, results)
    return results


def evaluate_merged(
    checkpoint: Path, world: ProxyWorld, size: StudySize, out: Path, name: str, *, semseg: bool = True
) -> dict[str, float]:
    """The issue's metrics of one final.pt, through samclip-eval's task functions (percent, against GT)."""
    model = load(checkpoint)
    run_dir = out / "evals" / name
    zeroshot = evaluate_zeroshot_cls(
        model, run_dir / "zeroshot", layout="imagefolder", root=str(world.classification_root),
        classnames=None, resolutions=[size.eval_resolution], num_workers=0, batch_size=100,
    )  # fmt: skip
    prompted = evaluate_prompted_miou(model, run_dir / "prompted", shards=world.sam_val_shards)
    report_eval(out, f"{name}/zeroshot", zeroshot)
    report_eval(out, f"{name}/prompted", prompted)
    metrics = {
        "zeroshot_top1": zeroshot[f"top1@{size.eval_resolution}"],
        "box_miou": prompted["box_mIoU"],
        "point_miou": prompted["point_mIoU"],
    }
    if semseg:
        for mode in ("clip", "composed"):
            result = evaluate_semseg(
                model, run_dir / f"semseg_{mode}", layout=PROXY_LAYOUT, root=str(world.semseg_root),
                mode=mode, resolution=2 * size.eval_resolution, threshold=0.5, num_points=3, num_visualize=2,
            )  # fmt: skip
            report_eval(out, f"{name}/semseg_{mode}", result)
            metrics[f"semseg_miou_{mode}"] = result["mIoU"]
    return metrics


def evaluate_teachers(world: ProxyWorld, out: Path, size: StudySize) -> dict[str, dict[str, float]]:
    clip_file, sam_file = out / "teachers" / CLIP_TEACHER_FILE, out / "teachers" / SAM_TEACHER_FILE
    zeroshot = evaluate_zeroshot_cls(
        None, out / "evals" / "clip_teacher", layout="imagefolder", root=str(world.classification_root),
        classnames=None, encoder="teacher", teacher_model=size.clip_teacher.model_name,
        teacher_pretrained=str(clip_file), num_workers=0, batch_size=100,
    )  # fmt: skip
    report_eval(out, "clip_teacher", zeroshot)
    top1 = next(value for key, value in zeroshot.items() if key.startswith("top1@"))
    # The SAM teacher through the student's own code path: create_model from the official checkpoint is
    # exactly where the recipe starts (its SAM head and backbone are the teacher's weights).
    sam = create_model(size.sam_teacher.model_name, sam_checkpoint=sam_file).eval()
    prompted = report_eval(
        out, "sam_teacher", evaluate_prompted_miou(sam, out / "evals", shards=world.sam_val_shards)
    )
    return {
        "clip": {"zeroshot_top1": top1},
        "sam": {"box_miou": prompted["box_mIoU"], "point_miou": prompted["point_mIoU"]},
    }


def sam_teacher_curve(teachers: Path) -> list[dict[str, float]]:
    """The SAM teacher's held-out mIoU during its training (``train_sam_teacher``'s curve file; empty for a
    teacher trained before it was written): whether the teacher had converged, before reading forgetting."""
    curve = (teachers / SAM_TEACHER_FILE).with_suffix(".curve.json")
    return json.loads(curve.read_text()) if curve.is_file() else []


def log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def train_teachers(world: ProxyWorld, teachers: Path, size: StudySize, seed: int) -> None:
    """Whichever teacher file is missing, trained in its own process: the two are independent, and each
    uses one core (the study is sized for 2 CPU cores)."""
    jobs = []
    if not (teachers / CLIP_TEACHER_FILE).is_file():
        clip_args = (world.clip_shards, teachers / CLIP_TEACHER_FILE, size.clip_teacher, seed)
        jobs.append((train_clip_teacher, clip_args, {"held_out": world.classification_root}))
    if not (teachers / SAM_TEACHER_FILE).is_file():
        sam_args = (world.sam_shards, teachers / SAM_TEACHER_FILE, size.sam_teacher, seed)
        curve = {"held_out": world.sam_val_shards, "evaluate_every": max(1, size.sam_teacher.steps // 10)}
        jobs.append((train_sam_teacher, sam_args, curve))
    if not jobs:
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(jobs), mp_context=context, initializer=log_to_stderr) as pool:
        futures = [pool.submit(fn, *args, **kwargs) for fn, args, kwargs in jobs]
        for future in futures:
            future.result()


def mean_se(values: list[float]) -> dict[str, Any]:
    """Mean and standard error of the mean over seeds (SE 0 for one seed: no spread measured)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return {"mean": mean, "se": math.sqrt(var / len(values)), "values": values}


def aggregate(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{row: {metric: value}} per seed -> {row: {metric: {mean, se, values}}}."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for row in per_seed[0]:
        rows[row] = {
            metric: mean_se([seed_rows[row][metric] for seed_rows in per_seed]) for metric in per_seed[0][row]
        }
    return rows


def run_seed(out: Path, world: ProxyWorld, size: StudySize, seed: int, timings: dict[str, float]) -> dict:
    """Every student run of one seed under ``out/seed_<seed>/`` and its metrics, one dict per row."""
    seed_dir = out / f"seed_{seed}"
    recipe = seed_dir / "recipe"
    timed(timings, f"seed_{seed}/recipe", run, compose_recipe(out, recipe, size, f"seed={seed}"))
    head_probe_final = recipe / "head_probe" / "final.pt"
    control = seed_dir / CONTROL
    cfg = compose_recipe(out, control, size, f"seed={seed}", *control_overrides(head_probe_final))
    timed(timings, f"seed_{seed}/{CONTROL}", run, cfg)
    lambda_dirs = {}  # the other λ; the recipe's own multitask stage is the λ = 10 point
    for sam_weight in size.sam_weights:
        if sam_weight == RECIPE_SAM_WEIGHT:
            continue
        run_dir = seed_dir / f"lambda_{sam_weight:g}"
        cfg = compose_recipe(
            out, run_dir, size, f"seed={seed}", *ablation_overrides(sam_weight, head_probe_final)
        )
        timed(timings, f"seed_{seed}/multitask_lambda_{sam_weight:g}", run, cfg)
        lambda_dirs[sam_weight] = run_dir

    eval_start = time.time()
    tag = f"seed_{seed}"
    rows = {
        stage: evaluate_merged(recipe / stage / "final.pt", world, size, out, f"{tag}/{stage}")
        for stage in STAGES
    }
    rows[f"{CONTROL}/multitask"] = evaluate_merged(
        control / "multitask" / "final.pt", world, size, out, f"{tag}/{CONTROL}_multitask", semseg=False
    )
    rows[CONTROL] = evaluate_merged(
        control / "res_adapt" / "final.pt", world, size, out, f"{tag}/{CONTROL}", semseg=False
    )
    for sam_weight, run_dir in lambda_dirs.items():
        rows[f"lambda_{sam_weight:g}"] = evaluate_merged(
            run_dir / "multitask" / "final.pt", world, size, out, f"{tag}/lambda_{sam_weight:g}", semseg=False
        )
    rows[f"lambda_{RECIPE_SAM_WEIGHT:g}"] = {
        k: v for k, v in rows["multitask"].items() if k in ("zeroshot_top1", "box_miou", "point_miou")
    }
    timings[f"seed_{seed}/evaluation"] = round(time.time() - eval_start, 1)
    return rows


SeedRunner = Callable[[Path, ProxyWorld, StudySize, int, dict[str, float]], dict]


def _seed_in_worker(
    run_one: SeedRunner, out: Path, world: ProxyWorld, size: StudySize, seed: int
) -> tuple[dict, dict[str, float]]:
    torch.set_num_threads(1)
    timings: dict[str, float] = {}
    return run_one(out, world, size, seed, timings), timings


def run_seeds(
    run_one: SeedRunner,
    out: Path,
    world: ProxyWorld,
    size: StudySize,
    seeds: Sequence[int],
    timings: dict[str, float],
    workers: int = 1,
) -> list[dict]:
    """``run_one`` (a study's per-seed runs) for every seed, in ``workers`` processes of one thread each
    when > 1: seeds share nothing but the world and teachers, which are read-only by then."""
    if workers <= 1 or len(seeds) == 1:
        return [run_one(out, world, size, seed, timings) for seed in seeds]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(seeds)), mp_context=context, initializer=log_to_stderr) as pool:
        jobs = [(run_one, out, world, size, seed) for seed in seeds]
        finished = list(pool.map(_seed_in_worker, *zip(*jobs, strict=True)))
    for _, seed_timings in finished:
        timings.update(seed_timings)
    return [rows for rows, _ in finished]


def prepare_world_and_teachers(
    out: Path, size: StudySize, seed: int, timings: dict[str, float]
) -> ProxyWorld:
    """The world and the CLIP and SAM teachers under ``out``, built from ``seed`` unless already there."""
    marker = out / "world" / "DONE"
    if not marker.is_file():
        timed(timings, "world", write_world, out / "world", size.world, seed)
        marker.write_text(f"size={size.world} seed={seed}\n")
    world = ProxyWorld(out / "world")
    teachers = out / "teachers"
    teachers.mkdir(parents=True, exist_ok=True)
    timed(timings, "teachers", train_teachers, world, teachers, size, seed)
    return world


def resolve_size(size_name: str, seeds: Sequence[int] | None) -> tuple[StudySize, tuple[int, ...]]:
    """The study size of that name and the seeds to run (the size's own when ``seeds`` is None)."""
    if size_name not in STUDY_SIZES:
        raise ValueError(f"unknown study size {size_name!r}; available: {sorted(STUDY_SIZES)}")
    size = STUDY_SIZES[size_name]
    seeds = tuple(size.seeds if seeds is None else seeds)
    if not seeds:
        raise ValueError("the proxy study needs at least one seed")
    return size, seeds


def run_study(
    out: str | Path, size_name: str = "quick", seeds: Sequence[int] | None = None, workers: int = 1
) -> dict[str, Any]:
    """Run (or finish) the whole study in ``out``; returns what it writes to ``out/results.json``.

    The world and both teachers are built once, from the first seed; each seed then reruns every student
    run (data order, augmentation, prompt sampling, head initialisation), so the reported spread is the
    recipe's own, at fixed teachers. ``workers`` > 1 runs the seeds in that many processes.
    """
    size, seeds = resolve_size(size_name, seeds)
    out = Path(out).absolute()
    timings: dict[str, float] = {}
    start = time.time()
    world = prepare_world_and_teachers(out, size, seeds[0], timings)
    teacher_metrics = evaluate_teachers(world, out, size)
    per_seed = run_seeds(run_seed, out, world, size, seeds, timings, workers)
    timings["total"] = round(time.time() - start, 1)
    results: dict[str, Any] = {
        "size": size_name,
        "seeds": list(seeds),
        "chance_top1": 100.0 / len(SHAPES),
        "majority_top1": majority_top1(world.classification_root),
        "baselines": box_baselines(world.sam_val_shards),
        "teachers": teacher_metrics,
        "sam_teacher_curve": sam_teacher_curve(out / "teachers"),
        "rows": aggregate(per_seed),
        "per_seed": dict(zip((str(s) for s in seeds), per_seed, strict=True)),
        "sam_weights": sorted(size.sam_weights),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    from samclip.proxy.report import plot_curves, plot_results, results_markdown

    (out / "results.md").write_text(results_markdown(results, timings))
    plot_results(results, out)
    plot_curves(results, out, curve_runs({seed: out for seed in seeds}))
    return results


def curve_runs(study_of_seed: dict[int, Path]) -> dict[str, dict[int, list[Path]]]:
    """The stage directories whose validation curves ``curves.png`` draws: the recipe's three stages and the
    control's (the recipe's head probe, then its own multitask and res_adapt), per seed."""
    recipe = {seed: [study / f"seed_{seed}" / "recipe" / stage for stage in STAGES]
              for seed, study in study_of_seed.items()}  # fmt: skip
    control = {seed: [dirs[0], *(dirs[0].parents[1] / CONTROL / stage for stage in STAGES[1:])]
               for seed, dirs in recipe.items()}  # fmt: skip
    return {"recipe (λ = 10)": recipe, "control: stage 2 without L_clip": control}


def combine_studies(out: str | Path, study_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """One report from studies that ran different seeds on the same world and teachers (e.g. one process
    per seed, in parallel: ``samclip-proxy --out DIR_S --seeds S`` with DIR_S/world and DIR_S/teachers
    linked to one study's); refuses studies whose size or teachers' numbers differ."""
    loaded = [json.loads((Path(d) / "results.json").read_text()) for d in study_dirs]
    if not loaded:
        raise ValueError("combine_studies needs at least one study directory")
    first = loaded[0]
    for directory, other in zip(study_dirs, loaded, strict=True):
        if other["size"] != first["size"] or other["teachers"] != first["teachers"]:
            raise ValueError(f"{directory}: another size or other teachers than {study_dirs[0]}")
    per_seed = {seed: rows for study in loaded for seed, rows in study["per_seed"].items()}
    results = first | {
        "seeds": [int(seed) for seed in per_seed],
        "per_seed": per_seed,
        "rows": aggregate(list(per_seed.values())),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {f"{Path(d).name}/{k}": v for d, s in zip(study_dirs, loaded, strict=True)
               for k, v in json.loads((Path(d) / "timings.json").read_text()).items()}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from samclip.proxy.report import plot_curves, plot_results, results_markdown

    (out / "results.md").write_text(results_markdown(results, timings))
    plot_results(results, out)
    studies = {int(seed): Path(d).absolute() for d, study in zip(study_dirs, loaded, strict=True)
               for seed in study["per_seed"]}  # fmt: skip
    plot_curves(results, out, curve_runs(studies))
    return results
