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
def test_both_teachers_learn(results: dict) -> None:
    """Measured at this size (seed 0, 2026-12-02): CLIP teacher zero-shot 87.5 (chance 25); SAM teacher box
    mIoU 38.9 against the ground truth (an untrained SAM: ~1.5)."""
    assert results["teachers"]["clip"]["zeroshot_top1"] >= results["chance_top1"] + 40.0
    assert results["teachers"]["sam"]["box_miou"] >= 25.0


@pytest.mark.study
def test_the_merged_model_gains_zero_shot_and_keeps_the_sam_teachers_masks(results: dict) -> None:
    """The paper's Table 1 claims, as far as they reproduce here (seed 0): merged zero-shot 39.0 against
    chance 25 and the head probe's 31.0 (the multitask stage adds what the frozen SAM backbone lacks);
    box mIoU 37.9 = 0.97 x the SAM teacher's 38.9.

    Not reproduced, so not asserted: "close to the CLIP teacher" (39.0 vs 87.5; the issue's suggested
    margins, >= chance + 30 and >= 0.7 x teacher, fail at this size and in the full study, docs/proxy/)."""
    merged, stages = results["merged"], results["stages"]
    assert merged["zeroshot_top1"] >= results["chance_top1"] + 7.0
    assert merged["zeroshot_top1"] >= stages["head_probe"]["zeroshot_top1"] + 3.0
    assert merged["box_miou"] >= 0.9 * results["teachers"]["sam"]["box_miou"]


@pytest.mark.study
def test_lambda_zero_does_not_forget_at_this_length(results: dict) -> None:
    """The paper's forgetting at λ = 0 does not reproduce in the proxy (seed 0): λ = 0 keeps box mIoU 38.9,
    the teacher's, while λ = 10 gives 37.9. The backbone does move (max relative weight change 2 %; 21 %
    with its lr multiplier raised from 0.1 to 1, still 38.9): this guards that finding, see docs/proxy/."""
    teacher = results["teachers"]["sam"]["box_miou"]
    by_weight = {row["sam_weight"]: row for row in results["lambda_ablation"]}
    assert by_weight[0.0]["box_miou"] >= teacher - 3.0
