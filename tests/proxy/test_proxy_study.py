"""The proxy study end to end (``--size test``): the project's first tests of *learning*.

Margins come from measured runs of this size (the report in docs/proxy/ has the full study's numbers);
each assertion says which claim of the paper it checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samclip.proxy.study import SAM_WEIGHTS, run_study

METRIC_KEYS = {"zeroshot_top1", "box_miou", "point_miou", "semseg_miou_clip", "semseg_miou_composed"}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("proxy_study")
    run_study(out, "test", seed=0)
    return json.loads((out / "results.json").read_text()) | {"_out": str(out)}


@pytest.mark.study
def test_results_have_the_issue_keys_and_files(results: dict) -> None:
    out = Path(results.pop("_out"))
    assert set(results) == {"chance_top1", "teachers", "merged", "stages", "lambda_ablation"}
    assert set(results["teachers"]["clip"]) == {"zeroshot_top1"}
    assert set(results["teachers"]["sam"]) == {"box_miou", "point_miou"}
    assert set(results["merged"]) == METRIC_KEYS
    assert set(results["stages"]) == {"head_probe", "multitask", "res_adapt"}
    assert all(set(m) == METRIC_KEYS for m in results["stages"].values())
    assert [r["sam_weight"] for r in results["lambda_ablation"]] == list(SAM_WEIGHTS)
    assert results["merged"] == results["stages"]["res_adapt"]
    for name in ("results.md", "stages.png", "lambda.png"):
        assert (out / name).is_file()


@pytest.mark.study
def test_head_probe_keeps_the_sam_teacher_exactly(results: dict) -> None:
    """Stage 1 trains the CLIP head only: its masks are the SAM teacher's, to the last pixel."""
    assert results["stages"]["head_probe"]["box_miou"] == results["teachers"]["sam"]["box_miou"]
    assert results["stages"]["head_probe"]["point_miou"] == results["teachers"]["sam"]["point_miou"]


@pytest.mark.study
def test_sam_teacher_learns_and_lambda_zero_keeps_its_masks(results: dict) -> None:
    """Measured at this size (seed 0): SAM teacher box mIoU 33.3 (an untrained SAM: ~1.5); λ = 0 after
    multitask 34.4. The CLIP-side claims are not asserted: at this size (and in the full study, 26.8 vs
    chance 25) the CLIP teacher stays at chance, so there is nothing for the student to inherit."""
    teacher = results["teachers"]["sam"]["box_miou"]
    assert teacher >= 25.0
    by_weight = {row["sam_weight"]: row for row in results["lambda_ablation"]}
    assert by_weight[0.0]["box_miou"] >= teacher - 5.0
