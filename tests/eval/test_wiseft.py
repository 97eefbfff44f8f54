"""Wise-FT: α=0 and α=1 reproduce the two endpoints; points in between are the weight average."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from constructed import CLASSNAMES, COLORS, write_image_folder

from samclip.eval.wiseft import endpoint_state_dict, evaluate_wiseft, interpolate_state_dicts
from samclip.eval.zeroshot_cls import evaluate_zeroshot_cls
from samclip.models.final_checkpoint import load_final_checkpoint
from samclip.serve.export import export_sam
from samclip.serve.merged import load


def test_alpha_0_and_1_reproduce_the_endpoints(classifying_checkpoints, tmp_path):
    root = write_image_folder(tmp_path / "data", CLASSNAMES, COLORS)
    task = partial(
        evaluate_zeroshot_cls,
        layout="imagefolder",
        root=str(root),
        classnames=None,
        resolutions=[224],
        num_workers=0,
    )
    right, shifted = classifying_checkpoints["right"], classifying_checkpoints["shifted"]
    alone = {
        name: task(model=load(path), run_dir=tmp_path / name)
        for name, path in classifying_checkpoints.items()
    }
    assert alone["right"]["top1@224"] == 100.0 and alone["shifted"]["top1@224"] == 0.0  # the endpoints differ

    results = evaluate_wiseft(
        load(shifted), tmp_path / "run", checkpoint_a=str(right), alphas=[0.0, 0.5, 1.0], tasks={"cls": task}
    )
    by_alpha = {row["alpha"]: row for row in results["points"]}
    for alpha, name in ((0.0, "right"), (1.0, "shifted")):
        for metric in ("top1@224", "top5@224"):
            assert by_alpha[alpha][f"cls/{metric}"] == alone[name][metric]
    assert (tmp_path / "run" / "alpha_0.50" / "cls" / "results.json").is_file()
    assert (tmp_path / "run" / "wiseft.png").stat().st_size > 0  # the α-sweep figure


def test_interpolation_is_exact_at_the_ends_and_linear_between():
    zero = {"w": torch.randn(3, 4), "steps": torch.tensor(5)}
    one = {"w": torch.randn(3, 4), "steps": torch.tensor(5)}
    assert torch.equal(interpolate_state_dicts(zero, one, 0.0)["w"], zero["w"])
    assert torch.equal(interpolate_state_dicts(zero, one, 1.0)["w"], one["w"])
    torch.testing.assert_close(
        interpolate_state_dicts(zero, one, 0.25)["w"], 0.75 * zero["w"] + 0.25 * one["w"]
    )
    with pytest.raises(ValueError, match="steps"):
        interpolate_state_dicts(zero, {**one, "steps": torch.tensor(6)}, 0.5)


def test_an_official_sam_endpoint_borrows_the_clip_head(classifying_checkpoints, tmp_path):
    sam_model = load_final_checkpoint(classifying_checkpoints["right"]).build_model()
    other = load_final_checkpoint(classifying_checkpoints["shifted"]).build_model()
    path = export_sam(sam_model, tmp_path / "sam.pth")
    state = endpoint_state_dict(path, other)
    expected = sam_model.state_dict()
    assert all(
        torch.equal(state[key], expected[key])
        for key in expected
        if key.startswith(("backbone.", "sam_head."))
    )
    clip_head = other.state_dict()
    assert all(torch.equal(state[key], clip_head[key]) for key in clip_head if key.startswith("clip_head."))
