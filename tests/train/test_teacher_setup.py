"""Teachers cast once to bf16 give what autocast gave them (the matmuls see the same bf16 weights)."""

from __future__ import annotations

import torch
from train_fakes import clip_images, sam_batch, tiny_task

from samclip.train.teacher_setup import prepare_teachers, task_teachers


def test_bf16_teachers_match_autocast_of_fp32_teachers() -> None:
    reference, cast = tiny_task(seed=5), tiny_task(seed=5)
    done = prepare_teachers(cast, torch.bfloat16)
    assert done == ["ClipTeacher in torch.bfloat16", "SamTeacher in torch.bfloat16"]
    assert {p.dtype for t in task_teachers(cast) for p in t.parameters()} == {torch.bfloat16}
    assert cast.clip_teacher.mean.dtype == torch.float32  # normalisation constants stay exact
    images = clip_images(seed=5, step=0, batch=2, resolution=64)
    sam_images, prompts = sam_batch(seed=5, step=0, batch=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_clip = reference.clip_teacher.encode_image(images).float()
        got_clip = cast.clip_teacher.encode_image(images).float()
        expected_sam = reference.sam_teacher(sam_images, prompts).low_res_logits.float()
        got_sam = cast.sam_teacher(sam_images, prompts).low_res_logits.float()
    # Not bitwise: ops autocast runs in fp32 (layer norms) now read bf16-rounded weights.
    cosine = torch.nn.functional.cosine_similarity(got_clip, expected_clip, dim=-1)
    assert cosine.min() > 0.999
    assert (got_sam - expected_sam).abs().max() < 0.05 * expected_sam.abs().max()
    assert prepare_teachers(tiny_task(seed=5), None) == []  # fp32 training: nothing cast
