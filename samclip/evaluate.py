"""``samclip-eval``: run one benchmark of the paper on a checkpoint and write ``run_dir/results.{json,md}``.

    samclip-eval eval=semseg_voc checkpoint=runs/x/multitask/final.pt run_dir=evals/voc eval.root=VOC2012
    samclip-eval eval=zeroshot_cls eval.encoder=teacher run_dir=evals/teacher eval.root=imagenet/val

Each ``configs/eval/<task>.yaml`` names the task function in ``_target_``; its other keys are that function's
arguments (``name`` is the title of the report). ``checkpoint`` is a final.pt or a samclip export directory.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from samclip.eval.report import to_markdown, write_results
from samclip.inference import load

log = logging.getLogger(__name__)


def _config_dir() -> str:
    """``samclip/configs`` (the link to the repository's ``configs/`` the package ships) or ``configs/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "evaluate.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no evaluate.yaml in {here / 'configs'} or {here.parent / 'configs'}")


CONFIG_DIR = Path(_config_dir())
# configs/ also holds the trainer's ``checkpoint`` group, so Hydra would read ``checkpoint=FILE`` as a group
# choice. main() takes that argument off the command line itself and sets the value after composition.
_CHECKPOINT_ARG = "checkpoint="
_checkpoint_from_cli: list[str] = []


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
def _hydra_main(cfg: DictConfig) -> None:
    if _checkpoint_from_cli:
        OmegaConf.update(cfg, "checkpoint", _checkpoint_from_cli[-1])
    evaluate(cfg)


def main() -> None:
    """Console entry point: ``samclip-eval eval=<task> checkpoint=FILE run_dir=DIR [eval.* overrides]``."""
    _checkpoint_from_cli.clear()
    _checkpoint_from_cli.extend(
        arg[len(_CHECKPOINT_ARG) :] for arg in sys.argv[1:] if arg.startswith(_CHECKPOINT_ARG)
    )
    sys.argv = [arg for arg in sys.argv if not arg.startswith(_CHECKPOINT_ARG)]
    _hydra_main()


if __name__ == "__main__":
    main()
