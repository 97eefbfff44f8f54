"""``samclip-train`` / ``python -m samclip.train``: run an experiment's stages in order, resumably.

    samclip-train experiment=smoke run_dir=runs/smoke
    torchrun --nproc_per_node=8 -m samclip.train experiment=samclip_vit_b run_dir=/ckpt/samclip_vit_b

Each stage runs in ``run_dir/<stage>/``. A stage with a ``final.pt`` is done and skipped; one with a
training checkpoint resumes from it; otherwise it starts from ``init_from`` (for the first stage of
``stages``), the previous stage's ``final.pt``, or the SAM checkpoint (resume > init_from > fresh).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from samclip.cli_errors import user_errors
from samclip.config_root import config_dir
from samclip.models import SamClipModel
from samclip.models.final_checkpoint import load_final_checkpoint, save_final_checkpoint
from samclip.train import builder
from samclip.train.checkpoint import StageState, restore_training_state
from samclip.train.config_checks import require_number
from samclip.train.distributed import (
    DistEnv,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
    wrap_student,
)
from samclip.train.flops import StepFlops
from samclip.train.loop import train_stage
from samclip.train.optim import build_scheduler, set_trainable
from samclip.train.resume import ALLOW_KEY, check_resume_config
from samclip.train.run_record import RunDirLock, RunDirLocked, record_config
from samclip.train.stages import Stage
from samclip.train.teacher_setup import prepare_teachers

log = logging.getLogger(__name__)


CONFIG_DIR = config_dir("train.yaml")


def run(cfg: DictConfig) -> Path:
    """Run ``cfg.stages``; returns the run directory. Config errors raise before any stage starts."""
    require_number("trainer.dist_timeout_s", cfg.trainer.dist_timeout_s, above=0)
    env = init_distributed(cfg.trainer.device, timeout_s=float(cfg.trainer.dist_timeout_s))
    if not env.is_main:
        logging.getLogger("samclip").setLevel(logging.WARNING)
    lock = None
    try:
        run_dir = _resolve_run_dir(cfg)
        stages = builder.plan_run(cfg, env, run_dir)
        lock = _lock_run_dir(run_dir, env)
        if env.is_main:
            builder.prepare(cfg)
            log.info("config of this invocation: %s", record_config(cfg, run_dir))
        barrier(env)
        builder.check_files(cfg, stages)
        for index, stage in enumerate(stages):
            final = builder.final_path(run_dir, stage.name)
            if final.is_file():
                log.info("%s: %s exists, stage done", stage.name, final)
                continue
            run_stage(cfg, stages, index, env, run_dir)
    finally:
        if lock is not None:
            lock.release()
        shutdown(env)
    return run_dir


def _lock_run_dir(run_dir: Path, env: DistEnv) -> RunDirLock:
    """Rank 0 takes ``run_dir``'s lock; every rank learns whether it got it, so all stop together if not."""
    lock = RunDirLock(run_dir)
    refusal = None
    if env.is_main:
        try:
            lock.acquire()
        except RunDirLocked as error:
            refusal = str(error)
    refusal = broadcast_object(refusal, env)
    if refusal is not None:
        raise RunDirLocked(refusal)
    return lock


def run_stage(cfg: DictConfig, stages: list[Stage], index: int, env: DistEnv, run_dir: Path) -> None:
    """Train ``stages[index]`` in ``run_dir/<stage>/`` up to its final.pt (resume > init_from > fresh)."""
    stage = stages[index]
    directory = run_dir / stage.name
    checkpointer = builder.build_checkpointer(cfg, directory)
    if env.is_main:
        checkpointer.clean_partial_writes()
    resume_path, resumed = checkpointer.load_latest() or (None, None)
    changes = []
    if resumed is not None:
        allow = bool(OmegaConf.select(cfg, ALLOW_KEY, default=False))
        changes = check_resume_config(
            resume_path, resumed.get("config"), builder.resolved_config(cfg), stage.name, allow
        )
        for key, old, new in changes:
            log.warning(
                "%s: resuming with %s=%r (the checkpoint's was %r; %s)", stage.name, key, new, old, ALLOW_KEY
            )
    source = None if resume_path is not None else builder.init_source(cfg, stages, index, run_dir)
    log.info(
        "%s: %s",
        stage.name,
        f"resuming from {resume_path}" if resume_path else f"starting from {source or 'SAM'}",
    )
    model = _build_student(
        cfg, stage, from_sam_checkpoint=resume_path is None and source is None, source=source
    )
    spec = builder.clip_teacher_spec(cfg, run_dir)
    validator = builder.build_validator(
        cfg,
        stage,
        env,
        directory,
        image_size=model.config.image_size,
        save_best=lambda path, step: save_final_checkpoint(path, model, spec, stage.name, step),
        autocast=builder.autocast_dtype(cfg, env.device),
    )
    teachers = validator.teachers if validator is not None else ()
    task = builder.build_task(cfg, stage, model, teachers).to(env.device)
    autocast = builder.autocast_dtype(cfg, env.device)
    prepared = prepare_teachers(task, autocast, bool(cfg.trainer.get("compile_teachers", False)))
    if prepared:
        log.info("%s: teachers: %s", stage.name, ", ".join(prepared))
    # Before the optimizer: a parameter no loss reaches must not be decayed (nor registered with DDP).
    frozen = task.freeze_without_loss_path(tuple(stage.streams))
    if frozen:
        log.info("%s: frozen, no loss path: %s", stage.name, ", ".join(frozen))
    fit_terms(task, cfg, stage, env, model)
    streams = builder.build_streams(cfg, stage, env, model)
    optimizer = builder.build_stage_optimizer(cfg, stage, model)
    # An epoch of the stage's first stream that knows its length (D_CLIP in the SAM-CLIP stages).
    steps_per_epoch = next(
        (s.steps_per_epoch for s in streams.values() if getattr(s, "steps_per_epoch", None)), None
    )
    scheduler = build_scheduler(
        optimizer, stage.warmup_steps, stage.schedule_length(steps_per_epoch), stage.min_lr_ratio
    )
    last_step = stage.stop_length(steps_per_epoch, cfg.trainer.max_steps)
    if resume_path is not None:
        state = restore_training_state(
            resume_path,
            model,
            optimizer,
            scheduler,
            streams,
            env=env,
            checkpoint=resumed,
            stage=stage.name,
            keep_new_hyperparameters=bool(changes),
        )
    else:
        state = StageState()
        # Per-rank randomness (augmentation, prompt sampling in the model) must differ between ranks.
        torch.manual_seed(cfg.seed + 1 + env.rank)
    if cfg.trainer.compile:
        model.compile()  # in place: task.student, the DDP wrapper and state-dict keys all see the same module
    ddp = cfg.trainer.get("ddp") or {}
    student = wrap_student(
        model,
        env,
        find_unused_parameters=task.find_unused_parameters,
        static_graph=bool(ddp.get("static_graph", False)),
        gradient_as_bucket_view=bool(ddp.get("gradient_as_bucket_view", False)),
    )
    tracker = builder.build_tracker(cfg, directory, stage, env, state.step, last_step)
    try:
        train_stage(
            task,
            student,
            optimizer,
            scheduler,
            streams,
            state,
            last_step,
            stage=stage.name,
            options=builder.loop_options(cfg, env.device),
            env=env,
            tracker=tracker,
            checkpointer=checkpointer,
            extra_state={"config": builder.resolved_config(cfg)},
            validator=validator,
            flops=StepFlops() if cfg.trainer.get("count_flops", True) else None,
        )
    finally:
        tracker.close()
    if env.is_main:
        final = builder.final_path(run_dir, stage.name)
        save_final_checkpoint(final, model, spec, stage.name, state.step)
        log.info("%s: done at step %d, wrote %s", stage.name, state.step, final)
    barrier(env)


def fit_terms(task: Any, cfg: DictConfig, stage: Stage, env: DistEnv, model: Any) -> None:
    """Terms that fit statistics of their teacher before training (PHI-S) read a fresh copy of their stream,
    so the training stream's order is untouched and a resumed stage fits the same images again."""
    for term in getattr(task, "terms", ()):
        if not getattr(term, "needs_fit", False) or term.stream not in stage.streams:
            continue
        stream = builder.build_streams(cfg, stage, env, model)[term.stream]
        # Whole batches as micro-batches: they carry the stream's cached teacher outputs, if any.
        micros = (
            micro for batch in stream
            for micro in task.split(term.stream, batch.to(env.device), max(len(batch.images), 1))
        )  # fmt: skip
        images = term.fit(micros, env)
        log.info("%s: %s: fitted PHI-S on %d images of the %s stream", stage.name, term.name, images, term.stream)


def _build_student(
    cfg: DictConfig, stage: Stage, *, from_sam_checkpoint: bool, source: Path | None
) -> SamClipModel:
    """The student with the stage's trainable parts, from SAM, from ``source`` (a final.pt), or random (resume)."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = builder.build_model(cfg, from_sam_checkpoint=from_sam_checkpoint)
    if source is not None:
        initial = load_final_checkpoint(source)
        if initial.model_config != model.config:
            raise ValueError(f"init_from: {source} holds a {initial.model_config} model, not {model.config}")
        model.load_state_dict(initial.model_state, strict=True)
    set_trainable(model, stage.trainable)
    model.set_grad_checkpointing(bool(cfg.trainer.grad_checkpointing))
    return model


def _resolve_run_dir(cfg: DictConfig) -> Path:
    """Hydra's output dir (``run_dir``, or the job's folder inside the sweep dir in multirun), made absolute.

    ``cfg.run_dir`` is set to it so that ``${run_dir}`` in other keys (smoke teachers and data) follows.
    """
    output = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.run_dir
    run_dir = Path(output).absolute()
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return run_dir


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """User errors print one line and exit 2 (``SAMCLIP_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``: the traceback)."""
    with user_errors("samclip-train"):
        run(cfg)


if __name__ == "__main__":
    main()
