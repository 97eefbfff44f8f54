"""``samclip-eval`` through Hydra: every eval config composes onto its task function; ``checkpoint=FILE`` is a
plain value; a run writes its report."""

from __future__ import annotations

import inspect
import json
import sys

import numpy as np
import pytest
from constructed import write_voc
from hydra import compose, initialize_config_dir
from hydra.utils import get_method
from omegaconf import OmegaConf

import samclip
from samclip.cli.eval import CONFIG_DIR, main
from samclip.data.classnames import VOC_CLASSES

TASKS = sorted(path.stem for path in (CONFIG_DIR / "eval").glob("*.yaml"))


def test_all_paper_tasks_have_a_config():
    assert {
        "zeroshot_cls",
        "retrieval",
        "instseg_coco",
        "instseg_lvis",
        "semseg_voc",
        "semseg_ade",
        "semseg_context",
        "semseg_cocostuff",
        "semseg_cocopanoptic",
        "seg_probe_voc",
        "seg_probe_ade",
        "linear_probe",
        "wiseft",
    } <= set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_eval_config_keys_are_the_task_arguments(task):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"eval={task}", "run_dir=unused"])
    configs = [cfg.eval, *cfg.eval.get("tasks", {}).values()]
    for config in configs:
        parameters = inspect.signature(get_method(config._target_)).parameters
        keys = set(config) - {"_target_", "name"}
        assert keys <= set(parameters), f"{task}: {sorted(keys - set(parameters))} are not arguments"
        assert {"model", "run_dir"} <= set(parameters)


def test_checkpoint_is_a_value_not_a_config_group(tmp_path):
    """The trainer's config root has a ``checkpoint`` group; the eval root must not, or Hydra would read
    ``checkpoint=FILE`` as a choice in it."""
    checkpoint = tmp_path / "runs" / "multitask" / "final.pt"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=["eval=semseg_voc", f"checkpoint={checkpoint}", "run_dir=unused"])
    assert cfg.checkpoint == str(checkpoint)
    assert cfg.eval._target_ == "samclip.eval.semseg.evaluate_semseg"


def _voc(tmp_path):
    rng = np.random.default_rng(0)
    samples = {}
    for index in range(3):
        label = np.zeros((48, 64), dtype=np.uint8)
        label[10:40, 20:50] = 12 + index
        label[9, 19:51] = 255
        samples[f"2007_00000{index}"] = ((rng.random((48, 64, 3)) * 255).astype(np.uint8), label)
    return write_voc(tmp_path / "VOC2012", samples)


@pytest.mark.parametrize("mode", ["clip", "composed"])
def test_semseg_voc_run_writes_results_markdown_and_pictures(final_checkpoint, tmp_path, monkeypatch, mode):
    root = _voc(tmp_path)
    run_dir = tmp_path / "run"
    monkeypatch.setattr(
        sys,
        "argv",
        ["samclip-eval", "eval=semseg_voc", f"checkpoint={final_checkpoint}", f"run_dir={run_dir}",
         f"eval.root={root}", f"eval.mode={mode}", "eval.num_visualize=2", "device=cpu"],
    )  # fmt: skip
    main()
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert f"checkpoint={final_checkpoint}" in overrides
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "semseg_voc" and results["mode"] == mode and results["num_images"] == 3
    assert set(results["per_class"]) == set(VOC_CLASSES)
    assert 0.0 <= results["mIoU"] <= 100.0
    source = results["provenance"]  # what produced these numbers
    assert source["checkpoint"] == {"path": str(final_checkpoint.absolute()), "stage": "multitask", "step": 7}
    assert source["eval_config"]["eval"]["mode"] == mode and source["eval_config"]["checkpoint"] == str(
        final_checkpoint
    )
    assert source["samclip_version"] == samclip.__version__
    assert source["git_commit"] is None or len(source["git_commit"].split("-")[0]) == 40
    markdown = (run_dir / "results.md").read_text()
    assert "| mIoU |" in markdown and "## per_class" in markdown
    assert f"checkpoint `{final_checkpoint.absolute()}` (stage multitask, step 7)" in markdown
    assert len(list((run_dir / "qualitative").glob("*.png"))) == 2


def test_missing_dataset_root_is_reported(final_checkpoint, tmp_path):
    from samclip.cli.eval import evaluate

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "evaluate", overrides=["eval=semseg_voc", f"checkpoint={final_checkpoint}", f"run_dir={tmp_path}"]
        )
    with pytest.raises(Exception, match="root"):
        evaluate(cfg)
