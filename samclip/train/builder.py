"""Config -> objects: the one module that calls ``hydra.utils.instantiate``.

Everything below it takes typed arguments. The checks that must fail before any work (unknown
stage, bad resolution or batch, a trained head without loss, missing files) run in :func:`plan_run`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from samclip.data.teacher_cache import TeacherCache, teacher_identity
from samclip.models import SamClipModel
from samclip.models.final_checkpoint import ClipTeacherSpec
from samclip.models.teachers import is_checkpoint_path
from samclip.train.checkpoint import Checkpointer
from samclip.train.config_checks import check_run_values
from samclip.train.distributed import DistEnv
from samclip.train.flops import device_peak_tflops
from samclip.train.loop import LoopOptions
from samclip.train.optim import build_optimizer, set_trainable
from samclip.train.stages import Stage, TermPlan
from samclip.train.tasks.base import Task
from samclip.train.tasks.distill import build_term
from samclip.train.tasks.terms import TERM_KINDS, DistillTerm
from samclip.train.tracking import Tracker, WandbLogger
from samclip.train.validation import PREFIX, BestCheckpoint, Validator, check_keep_best

FINAL_NAME = "final.pt"
# Keys of the model config naming weight files it starts from (unused when starting from a final.pt).
_INITIAL_WEIGHT_KEYS = ("sam_checkpoint", "clip_pretrained")
# Keys of data.<stream> that configure the trainer's use of a stream, not the stream itself.
_TRAINER_STREAM_KEYS = ("micro_batch_size", "val_manifest")
# Keys of teacher.<stream> that configure the trainer's use of a teacher, not the teacher itself.
TEACHER_TRAINER_KEYS = ("cache",)


def build_stage(cfg: DictConfig, name: str) -> Stage:
    if name not in cfg.stage:
        raise ValueError(f"stages: unknown stage {name!r}; available: {list(cfg.stage)}")
    try:
        return instantiate(cfg.stage[name])
    except InstantiationException as error:
        if isinstance(error.__cause__, (ValueError, TypeError)):  # the stage's own check, naming its key
            raise error.__cause__ from None
        raise


def final_path(run_dir: Path, stage: str) -> Path:
    """A stage's weights once it is done; the next stage starts from them."""
    return run_dir / stage / FINAL_NAME


def init_source(cfg: DictConfig, stages: list[Stage], index: int, run_dir: Path) -> Path | None:
    """The final.pt stage ``index`` starts from; None when it starts from the SAM checkpoint."""
    if index == 0 and cfg.init_from is not None:
        return Path(cfg.init_from)
    stage = stages[index]
    if stage.previous is None:
        return None
    return final_path(run_dir, stage.previous)


def plan_run(cfg: DictConfig, env: DistEnv, run_dir: Path) -> list[Stage]:
    """The stages to run, validated as a whole before anything is built or written."""
    if not cfg.stages:
        raise ValueError("stages: the list of stages to run is empty")
    stages = [build_stage(cfg, name) for name in cfg.stages]
    check_run_values(cfg, {name for stage in stages for name in stage.streams})
    loop_options(cfg, env.device)  # micro-batch sizes and precision
    with torch.device("meta"):
        model = build_model(cfg, from_sam_checkpoint=False)
    for stage in stages:
        if stage.task not in cfg.tasks:
            raise ValueError(
                f"stage.{stage.name}.task: unknown task {stage.task!r}; available: {list(cfg.tasks)}"
            )
        try:
            trainable = set_trainable(model, stage.trainable)
        except ValueError as error:
            raise ValueError(f"stage.{stage.name}.trainable: {error}") from error
        stage.validate(
            trainable_names=trainable,
            terms=plan_terms(cfg, stage.task),
            world_size=env.world_size,
            patch_size=model.config.patch_size,
            image_size=model.config.image_size,
            model_name=cfg.model.name,
        )
    check_validation(cfg, stages)
    for index, stage in enumerate(stages):
        if (
            final_path(run_dir, stage.name).is_file()
            or build_checkpointer(cfg, run_dir / stage.name).latest()
        ):
            continue  # done or resumable: its starting point no longer matters
        source = init_source(cfg, stages, index, run_dir)
        produced_earlier = any(s.name == stage.previous for s in stages[:index])
        if source is not None and not produced_earlier and not source.is_file():
            key = "init_from" if index == 0 and cfg.init_from is not None else f"stage.{stage.name}.previous"
            raise FileNotFoundError(
                f"{key}: stage {stage.name} starts from {source}, which does not exist "
                f"(run stage {stage.previous} first, or set init_from=PATH/TO/final.pt)"
            )
    return stages


def check_files(cfg: DictConfig, stages: list[Stage]) -> None:
    """Checkpoints the run reads exist (after ``prepare`` may have written them), before the first stage."""
    if any(stage.previous is None for stage in stages) and cfg.init_from is None:
        _require_file(cfg.model.get("sam_checkpoint"), "model.sam_checkpoint", allow_none=True)
    for key, path, required in _teacher_files(cfg, stages):
        if required:
            _require_file(path, key, allow_none=False)
        elif path is not None and is_checkpoint_path(path):
            _require_file(path, key)


def _teacher_files(cfg: DictConfig, stages: list[Stage]) -> list[tuple[str, str | None, bool]]:
    """(key, path, required) of each weights file a teacher of the run reads: a ``checkpoint`` must be
    set; a ``pretrained`` may also be a hub tag or None (random weights)."""
    files: dict[str, tuple[str | None, bool]] = {}
    for stage in stages:
        terms = term_nodes(cfg, stage.task)
        owners = {name: t.teacher for name, t in terms.items() if t.stream in stage.streams}
        if not terms:  # a task without terms: the teachers of its streams
            owners = {s: cfg.teacher[s] for s in stage.streams if s in cfg.get("teacher", {})}
        for name, teacher in owners.items():
            if teacher is None:
                continue
            label = _teacher_key(cfg, stage.task, name, teacher)
            if "checkpoint" in teacher:
                files[f"{label}.checkpoint"] = (teacher.checkpoint, True)
            elif teacher.get("pretrained") is not None:
                files[f"{label}.pretrained"] = (teacher.pretrained, False)
    return [(key, path, required) for key, (path, required) in files.items()]


def _teacher_key(cfg: DictConfig, task: str, term: str, teacher: DictConfig) -> str:
    """``teacher.<name>`` when the term's teacher is an interpolation of it, else the term's own key."""
    nodes = cfg.tasks[task].get("terms")
    raw = OmegaConf.to_container(nodes[term], resolve=False).get("teacher") if nodes is not None else None
    if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}"):
        return raw[2:-1]
    return f"tasks.{task}.terms.{term}.teacher" if nodes is not None else f"teacher.{term}"


def prepare(cfg: DictConfig) -> None:
    if cfg.get("prepare") is not None:
        instantiate(cfg.prepare)


def build_model(cfg: DictConfig, *, from_sam_checkpoint: bool) -> SamClipModel:
    """The student; initialised from its weight files (SAM, CLIP) only when it does not start from a final.pt."""
    if from_sam_checkpoint:
        return instantiate(cfg.model)
    return instantiate(cfg.model, **{key: None for key in _INITIAL_WEIGHT_KEYS if key in cfg.model})


def build_task(cfg: DictConfig, stage: Stage, student: SamClipModel, teachers: Sequence[str] = ()) -> Task:
    """The stage's recipe task (``cfg.tasks[stage.task]``, built by its ``_target_``) around the student.

    A term whose stream the stage lacks is built without its teacher and loss (None), unless validation
    uses its teacher (``teachers``, from ``Validator.teachers``); a term whose outputs come from a teacher
    cache gets the teacher its kind still needs with the cache (none for an embedding, SAM's decoder for
    masks). Tasks without terms (OV-SAM) name the arguments only one stream needs in ``stream_parts``.
    """
    if stage.task not in cfg.tasks:
        raise ValueError(
            f"stage.{stage.name}.task: unknown task {stage.task!r}; available: {list(cfg.tasks)}"
        )
    node = OmegaConf.to_container(cfg.tasks[stage.task], resolve=True)
    if "terms" in node:
        return _build_term_task(cfg, stage, node, student, teachers)
    stream_parts = node.pop("stream_parts", None) or {}
    # A teacher's `cache` is where the trainer reads its outputs, not an argument of the teacher.
    for value in node.values():
        if isinstance(value, dict) and "_target_" in value:
            value.pop("cache", None)
    cached = cached_streams(cfg, stage)
    if cached:
        node["cached_streams"] = cached
    for stream, keys in stream_parts.items():
        if stream not in stage.streams and stream not in teachers:
            node.update(dict.fromkeys(keys))
    return instantiate(node, student=student)


def _build_term_task(
    cfg: DictConfig, stage: Stage, node: dict[str, Any], student: SamClipModel, teachers: Sequence[str]
) -> Task:
    cached = stream_caches(cfg, stage)
    cached_terms = {stream: term for stream, (term, _) in cached.items()}
    for name, term in node["terms"].items():
        teacher = term.get("teacher")
        if isinstance(teacher, dict):
            teacher.pop("cache", None)
        if term.get("stream") not in stage.streams and name not in teachers:
            term["teacher"], term["loss"] = None, None
        elif name in cached_terms.values() and name not in teachers and isinstance(teacher, dict):
            term["teacher"] = TERM_KINDS.get(term["kind"]).teacher_with_cache(teacher)
    node["cached_terms"] = cached_terms
    return instantiate(node, student=student, _convert_="all")


def plan_terms(cfg: DictConfig, task: str) -> list[TermPlan]:
    """The task's terms as built (their own checks run), without teachers or losses: what plan_run checks."""
    plans = []
    for name, node in term_nodes(cfg, task).items():
        values = OmegaConf.to_container(node, resolve=True)
        values.update(teacher=None, loss=None)
        term = build_term(name, values)
        raw = OmegaConf.to_container(node, resolve=False).get("weight")
        interpolated = isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") and ":" not in raw
        key = raw[2:-1] if interpolated else f"tasks.{task}.terms.{name}.weight"
        plans.append(TermPlan(name, term.stream, term.weight, term.student_module, key))
    return plans


def term_nodes(cfg: DictConfig, task: str) -> dict[str, DictConfig]:
    """The terms of ``tasks.<task>`` as config nodes (none for a task without terms)."""
    terms = cfg.tasks[task].get("terms")
    return dict(terms.items()) if terms is not None else {}


def cached_streams(cfg: DictConfig, stage: Stage) -> list[str]:
    """The stage's streams whose teacher outputs come from a cache (a teacher's ``cache``)."""
    return list(stream_caches(cfg, stage))


def stream_caches(cfg: DictConfig, stage: Stage) -> dict[str, tuple[str, DictConfig]]:
    """stream -> (the term, its teacher's config) for the stage's streams read with a teacher cache.

    For a task with terms, a term's teacher with ``cache`` set; otherwise ``teacher.<stream>.cache``. Only
    a task class that declares ``cacheable_streams`` reads cached outputs; a cache set for another task is
    an error rather than silently unused.
    """
    terms = term_nodes(cfg, stage.task)
    if terms:
        found = [
            (str(t.stream), name, t.teacher) for name, t in terms.items()
            if t.get("teacher") is not None and t.teacher.get("cache") and t.stream in stage.streams
        ]  # fmt: skip
    else:
        found = [
            (s, s, cfg.teacher[s]) for s in stage.streams
            if OmegaConf.select(cfg, f"teacher.{s}.cache", default=None)
        ]  # fmt: skip
    if not found:
        return {}
    task_class = get_class(str(cfg.tasks[stage.task]["_target_"]))
    cacheable = getattr(task_class, "cacheable_streams", ())
    unsupported = [name for stream, name, _ in found if stream not in cacheable]
    if unsupported:
        raise ValueError(
            f"teacher.{unsupported[0]}.cache: the {stage.task} task of stage {stage.name} computes its "
            f"teacher outputs online (cached: {list(cacheable) or 'none'}); unset the cache for this stage"
        )
    caches: dict[str, tuple[str, DictConfig]] = {}
    for stream, name, teacher in found:
        if stream in caches:
            raise ValueError(
                f"teacher.{name}.cache: the {stream} stream already replays the cache of term "
                f"{caches[stream][0]}; a stream carries one teacher cache"
            )
        caches[stream] = (name, teacher)
    return caches


def open_teacher_cache(
    cfg: DictConfig,
    stream: str,
    model: SamClipModel | None = None,
    teacher: DictConfig | None = None,
    *,
    name: str | None = None,
    term: DistillTerm | None = None,
) -> str:
    """The teacher's ``cache`` directory (``teacher.<stream>`` by default), checked against the configured
    teacher (its name ``name``, its model name, weights and input side), the outputs its ``term`` reads and
    their widths against the student's head (without a term: a cached embedding against the CLIP head)."""
    key = f"teacher.{name or stream}.cache"
    node = teacher if teacher is not None else cfg.teacher[stream]
    # The cache must hold teacher.<name>'s outputs; a teacher given inline (no name) is checked by identity.
    kind = name if teacher is not None else (name or stream)
    directory = str(node.cache)
    try:
        cache = TeacherCache(directory, kind)
    except ValueError as error:
        raise type(error)(f"{key}: {error}") from None
    manifest = cache.manifest
    if term is not None and not term.cache_outputs:
        raise ValueError(
            f"{key}: the {term.kind} term {term.name} names no teacher outputs a cache could hold"
        )
    outputs = term.cache_outputs if term is not None else ()
    missing = [output for output in outputs if output not in manifest.output_names]
    if missing:
        raise ValueError(
            f"{key}: {directory} holds the outputs {manifest.output_names}, its term reads {list(outputs)}"
        )
    side, configured = manifest.input_size, node.get("image_size")
    if side is not None and configured is not None and int(configured) != side:
        raise ValueError(
            f"{key}: {directory} holds the teacher's outputs of {side} px views, teacher.{name or stream}.image_size "
            f"is {configured}"
        )
    if model is not None and term is not None:
        shapes = {n: spec.get("shape") for n, spec in (manifest.outputs or {}).items()}
        try:
            term.check_cached(shapes, model)
        except ValueError as error:
            raise ValueError(f"{key}: {directory} {error}") from None
    elif (
        model is not None
        and manifest.embed_dim is not None
        and manifest.embed_dim != model.config.clip_embed_dim
    ):
        raise ValueError(
            f"{key}: {directory} holds {manifest.embed_dim}-d embeddings but the student's CLIP head "
            f"has clip_embed_dim={model.config.clip_embed_dim}"
        )
    try:
        cache.check_teacher(configured_identity(cfg, node))
    except ValueError as error:
        raise type(error)(f"{key}: {error}") from None
    return directory


def configured_identity(cfg: DictConfig, node: DictConfig) -> dict[str, Any]:
    """What names a configured teacher in a cache manifest (its model name and weights file or tag)."""
    weights = node.get("pretrained", node.get("checkpoint"))
    return teacher_identity(node.get("model_name", cfg.model.name), weights)


def build_teacher(cfg: DictConfig, name: str) -> torch.nn.Module:
    """``teacher.<name>`` built as configured (without the trainer's keys, e.g. its ``cache``)."""
    node = OmegaConf.to_container(cfg.teacher[name], resolve=True)
    for key in TEACHER_TRAINER_KEYS:
        node.pop(key, None)
    return instantiate(node)


def clip_teacher_spec(cfg: DictConfig, run_dir: str | Path | None = None) -> ClipTeacherSpec:
    """The CLIP teacher as configured (``_target_`` and arguments), written into final.pt: it provides the
    text tower. Its weights file is recorded as an absolute path and relative to ``run_dir``."""
    node = OmegaConf.to_container(cfg.teacher.clip, resolve=True)
    for key in TEACHER_TRAINER_KEYS:  # where the trainer reads teacher outputs, not the teacher's own
        node.pop(key, None)
    return ClipTeacherSpec.from_config(node, run_dir)


def build_streams(
    cfg: DictConfig, stage: Stage, env: DistEnv, model: SamClipModel | None = None
) -> dict[str, Any]:
    # A different data order per stage (the stage's place among the configured stages).
    seed = int(cfg.seed) + list(cfg.stage).index(stage.name)
    common = {"seed": seed, "rank": env.rank, "world_size": env.world_size}
    cached = stream_caches(cfg, stage)
    streams = {}
    for name in stage.streams:
        if name not in cfg.data:
            raise ValueError(f"stage.{stage.name} reads the {name} stream but data.{name} is not configured")
        extra = (
            {"teacher_cache": _open_stream_cache(cfg, stage, name, *cached[name], model)}
            if name in cached
            else {}
        )
        try:
            streams[name] = instantiate(
                _stream_node(cfg.data[name]), **stage.streams[name].stream_kwargs(), **common, **extra
            )
        except InstantiationException as error:
            if extra and isinstance(error.__cause__, ValueError):  # a stale cache, naming the shard
                raise error.__cause__ from None
            raise
    return streams


def _open_stream_cache(
    cfg: DictConfig, stage: Stage, stream: str, term: str, teacher: DictConfig, model: SamClipModel | None
) -> str:
    """The cache a stream carries, checked for the term that reads it (its teacher's name and outputs)."""
    key = _teacher_key(cfg, stage.task, term, teacher)
    # A teacher given inline in its term has no name a cache could carry: its identity alone is checked.
    name = key.removeprefix("teacher.") if key.startswith("teacher.") and key.count(".") == 1 else None
    nodes = term_nodes(cfg, stage.task)
    built = None
    if term in nodes:
        values = OmegaConf.to_container(nodes[term], resolve=True)
        values.update(teacher=None, loss=None)
        built = build_term(term, values)
    return open_teacher_cache(cfg, stream, model, teacher, name=name, term=built)


def validation_evaluators(cfg: DictConfig, stage: str) -> list[str]:
    """Names of the evaluators ``validation.stages.<stage>`` runs (none without a validation config)."""
    validation = cfg.get("validation")
    if validation is None or validation.get("stages") is None:
        return []
    return list(validation.stages.get(stage) or [])


def check_validation(cfg: DictConfig, stages: Sequence[Stage]) -> None:
    """Unknown evaluator or stage names, a keep_best nothing produces, a held-out split training reads."""
    validation = cfg.get("validation")
    produced: list[str] = []
    if validation is not None:
        if int(validation.every_steps) < 0:
            raise ValueError(
                f"validation.every_steps must be >= 0 (0 = only at the end), got {validation.every_steps}"
            )
        for stage_name in validation.get("stages") or {}:
            if stage_name not in cfg.stage:
                raise ValueError(
                    f"validation.stages: unknown stage {stage_name!r}; available: {list(cfg.stage)}"
                )
        for stage in stages:
            for name in validation_evaluators(cfg, stage.name):
                if name not in (validation.get("evaluators") or {}):
                    raise ValueError(
                        f"validation.stages.{stage.name}: unknown evaluator {name!r}; "
                        f"available: {list(validation.get('evaluators') or {})}"
                    )
                if validation.evaluators[name].get("data") is not None:
                    _check_held_out(cfg, name, validation.evaluators[name].data)
        # Against every configured stage, not only those that run now: `stages=[head_probe]` of a recipe
        # whose multitask validation feeds keep_best is a valid run (a stage without the metric keeps none).
        produced = [
            f"{PREFIX}{name}" for stage_name in validation.get("stages") or {}
            for name in validation_evaluators(cfg, stage_name)
        ]  # fmt: skip
    check_keep_best(cfg.checkpoint.get("keep_best"), produced)


def _check_held_out(cfg: DictConfig, name: str, data: DictConfig) -> None:
    """The evaluator's samples must be ones the training stream of the same data never reads."""
    key = f"validation.evaluators.{name}.data"
    target = str(data.get("_target_", ""))
    if target.endswith("ClipStream"):
        train = cfg.data.clip
        if data.get("split", "all") == "all":
            if data.urls == train.urls:
                raise ValueError(
                    f"{key}: reads the training shards data.clip.urls with split=all (use held_out)"
                )
            return
        held_out = (data.get("holdout_fraction"), data.get("holdout_seed", 0))
        if (
            train.get("split", "all") != "train"
            or (train.get("holdout_fraction"), train.get("holdout_seed", 0)) != held_out
        ):
            raise ValueError(
                f"{key}: holds out (fraction, seed) = {held_out} but data.clip reads split="
                f"{train.get('split', 'all')} with ({train.get('holdout_fraction')}, {train.get('holdout_seed', 0)}): "
                "training would read held-out samples"
            )
    elif target.endswith("SamStream") and data.urls == cfg.data.sam.urls:
        if data.get("manifest") is None or cfg.data.sam.get("manifest") is None:
            raise ValueError(
                f"{key}: validation and training read the same SA-1B shards, so both need manifests "
                "(data.sam.manifest = train.txt, data.sam.val_manifest = val.txt of samclip-data sa1b-manifest)"
            )
        if data.manifest == cfg.data.sam.manifest:
            raise ValueError(f"{key}.manifest: {data.manifest} is the training manifest data.sam.manifest")


def build_validator(
    cfg: DictConfig,
    stage: Stage,
    env: DistEnv,
    directory: Path,
    *,
    image_size: int,
    save_best: Callable[[Path, int], None],
    autocast: torch.dtype | None = None,
) -> Validator | None:
    """The stage's evaluators on their held-out streams, and its best-checkpoint keeping; None if it validates nothing."""
    names = validation_evaluators(cfg, stage.name)
    if not names:
        return None
    evaluators = {}
    for name in names:
        node = cfg.validation.evaluators[name]
        if node.get("data") is None:  # the evaluator reads its own files (zeroshot_top1's ImageFolder)
            evaluators[name] = instantiate(node, rank=env.rank, world_size=env.world_size)
            continue
        num_batches = int(node.num_batches)
        data = OmegaConf.to_container(node.data, resolve=True)
        extras: dict[str, Any] = {
            "seed": int(cfg.validation.seed),
            "rank": env.rank,
            "world_size": env.world_size,
            "steps_per_epoch": num_batches,
        }
        if str(data["_target_"]).endswith("SamStream"):
            extras["image_size"] = image_size
        try:
            stream = instantiate(data, **extras)
        except ValueError as error:
            raise ValueError(f"validation.evaluators.{name}.data: {error}") from error
        settings = {k: v for k, v in node.items() if k != "data"}
        evaluators[name] = instantiate(OmegaConf.create(settings), data=stream)
    validator = Validator(evaluators, int(cfg.validation.every_steps), autocast_dtype=autocast)
    metric = cfg.checkpoint.get("keep_best")
    if metric is not None and metric in validator.metric_names:
        validator.best = BestCheckpoint(directory, metric, cfg.checkpoint.keep_best_mode, save_best)
    return validator


def micro_batch_sizes(cfg: DictConfig) -> dict[str, int]:
    sizes = {name: int(node.micro_batch_size) for name, node in cfg.data.items()}
    for name, size in sizes.items():
        if size < 1:
            raise ValueError(f"data.{name}.micro_batch_size must be >= 1, got {size}")
    return sizes


def build_stage_optimizer(cfg: DictConfig, stage: Stage, model: SamClipModel) -> torch.optim.AdamW:
    return build_optimizer(
        model,
        lr=stage.lr,
        weight_decay=cfg.optim.weight_decay,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        lr_multipliers=stage.lr_multipliers,
        no_weight_decay=list(cfg.optim.no_weight_decay),
    )


def build_checkpointer(cfg: DictConfig, directory: Path) -> Checkpointer:
    return Checkpointer(directory / "checkpoints", cfg.checkpoint.every_steps, cfg.checkpoint.keep_last)


def build_tracker(
    cfg: DictConfig, directory: Path, stage: Stage, env: DistEnv, start_step: int, last_step: int
) -> Tracker:
    wandb = None
    if env.is_main and cfg.logger.get("wandb") is not None:
        wandb = WandbLogger(
            name=f"{cfg.name}/{stage.name}",
            directory=directory,
            config=resolved_config(cfg),
            **OmegaConf.to_container(cfg.logger.wandb, resolve=True),
        )
    return Tracker(
        directory,
        stage.name,
        enabled=env.is_main,
        log_every=cfg.logger.log_every,
        last_step=last_step,
        start_step=start_step,
        wandb=wandb,
        progress=cfg.logger.progress,
        peak_tflops=device_peak_tflops(env.device, cfg.trainer.get("peak_tflops")),
    )


def loop_options(cfg: DictConfig, device: torch.device) -> LoopOptions:
    return LoopOptions(
        micro_batch_sizes=micro_batch_sizes(cfg),
        max_grad_norm=cfg.trainer.max_grad_norm,
        max_consecutive_nonfinite=cfg.trainer.max_consecutive_nonfinite,
        autocast_dtype=autocast_dtype(cfg, device),
    )


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def autocast_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype | None:
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"trainer.precision must be auto, bf16 or fp32, got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else None


def _stream_node(node: DictConfig) -> dict[str, Any]:
    values = OmegaConf.to_container(node, resolve=True)
    for key in _TRAINER_STREAM_KEYS:
        values.pop(key, None)
    return values


def _require_file(path: str | None, key: str, allow_none: bool = False) -> None:
    if path is None:
        if allow_none:
            return
        raise ValueError(f"{key} is not set")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist")
