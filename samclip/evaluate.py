"""``samclip-eval``: run one benchmark of the paper on a checkpoint and write ``run_dir/results.{json,md}``.

    samclip-eval eval=semseg_voc checkpoint=runs/x/multitask/final.pt run_dir=evals/voc eval.root=VOC2012
    samclip-eval eval=zeroshot_cls eval.encoder=teacher run_dir=evals/teacher eval.root=imagenet/val

Each ``configs/evaluate/eval/<task>.yaml`` names the task function in ``_target_``; its other keys are that
function's arguments (``name`` is the title of the report). ``checkpoint`` is a final.pt or a samclip export
directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from samclip.config_root import config_dir
from samclip.eval.report import to_markdown, write_results
from samclip.inference import load

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
    path = write_results(run_dir, name, results)
    log.info("wrote %s\n%s", path, to_markdown(name, {k: v for k, v in results.items() if k != "per_class"}))
    return results


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Console entry point: ``samclip-eval eval=<task> checkpoint=FILE run_dir=DIR [eval.* overrides]``."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
