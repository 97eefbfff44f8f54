"""``samclip-eval``: run one benchmark of the paper on a checkpoint and write ``run_dir/results.{json,md}``.

    samclip-eval eval=semseg_voc checkpoint=runs/x/multitask/final.pt run_dir=evals/voc eval.root=VOC2012
    samclip-eval eval=zeroshot_cls eval.encoder=teacher run_dir=evals/teacher eval.root=imagenet/val

Each ``configs/evaluate/eval/<task>.yaml`` names the task function in ``_target_``; its other keys are that
function's arguments (``name`` is the title of the report). ``checkpoint`` is a final.pt or a samclip export
directory.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import samclip
from samclip.cli_errors import user_errors
from samclip.config_root import config_dir
from samclip.eval.report import to_markdown, write_results
from samclip.serve.merged import MergedSamClip, load

log = logging.getLogger(__name__)


CONFIG_DIR = config_dir("evaluate/evaluate.yaml")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load the model named by ``cfg.checkpoint`` (if any), run ``cfg.eval``'s task, write the report."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(str(cfg.device))
    OmegaConf.update(cfg, "device", device)
    task_config: dict[str, Any] = OmegaConf.to_container(cfg.eval, resolve=True, throw_on_missing=True)  # type: ignore[assignment]
    if "_target_" not in task_config:
        raise ValueError("the eval config has no _target_ (choose one with eval=<task>)")
    name = str(task_config.pop("name", task_config["_target_"].rsplit(".", 1)[-1]))
    for nested in (task_config.get("tasks") or {}).values():
        nested.pop("name", None)
        nested["_partial_"] = True
    model = load(cfg.checkpoint, device=device) if cfg.checkpoint else None
    task = instantiate(task_config, _partial_=True)
    results = task(model=model, run_dir=run_dir)
    results["provenance"] = provenance(model, cfg)
    path = write_results(run_dir, name, results)
    log.info("wrote %s\n%s", path, to_markdown(name, {k: v for k, v in results.items() if k != "per_class"}))
    return results


def provenance(model: MergedSamClip | None, cfg: DictConfig) -> dict[str, Any]:
    """What produced a results.json: the checkpoint (path, stage, step), the resolved eval config, the code."""
    return {
        "checkpoint": None if model is None else dict(model.source),
        "eval_config": OmegaConf.to_container(cfg, resolve=True),
        "samclip_version": samclip.__version__,
        "git_commit": source_commit(),
    }


def source_commit() -> str | None:
    """The git commit of the samclip source tree in use (None for an installed wheel or without git)."""
    package = Path(samclip.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(package), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    with user_errors("samclip-eval"):
        evaluate(cfg)


def main() -> None:
    """Console entry point: ``samclip-eval eval=<task> checkpoint=FILE run_dir=DIR [eval.* overrides]``.

    User errors print one line and exit 2 (``SAMCLIP_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``: the traceback).
    """
    arguments = sys.argv[1:]
    # Checked before Hydra: its own report of the unset run_dir is a 100-line interpolation error.
    asks_hydra = any(argument.startswith("-") for argument in arguments)  # --help, --cfg, -m, ...
    if not asks_hydra and not any(
        argument.lstrip("+").startswith(("run_dir=", "hydra.run.dir=")) for argument in arguments
    ):
        print(
            "samclip-eval: error: run_dir=DIR is required (where results.json, results.md and pictures go)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    hydra_main()


if __name__ == "__main__":
    main()
