"""The OV-SAM tasks through the generic step: the hand-written loss, and any micro-batch split gives its gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from samclip.data.instances import InstanceStream
from samclip.data.synth_instances import SYNTH_NOVEL_CLASSES, make_synthetic_instances
from samclip.losses import EmbeddingDistillationLoss, dice_loss_per_mask
from samclip.models.ovsam import create_ovsam_model
from samclip.models.teachers import SamTeacher
from samclip.train import builder
from samclip.train.distributed import DistEnv
from samclip.train.optim import set_trainable
from samclip.train.runner import CONFIG_DIR
from samclip.train.step import forward_backward
from samclip.train.tasks import Clip2SamTask, Sam2ClipTask

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def instance_batch(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ovsam_task")
    make_synthetic_instances(str(root), seed=2, num_train=4, num_val=1)
    stream = InstanceStream(
        str(root / "annotations" / "instances_train.json"),
        str(root / "train"),
        global_batch_size=3,
        max_instances=3,
        image_size=256,
        novel_classes=list(SYNTH_NOVEL_CLASSES),
    )
    return next(iter(stream))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _clip2sam_task(seed: int) -> Clip2SamTask:
    torch.manual_seed(seed)
    model = create_ovsam_model("ovsam_tiny")
    set_trainable(model, ["clip2sam.*", "mask_decoder.*"])
    model.mask_decoder.iou_prediction_head.requires_grad_(False)  # as stage clip2sam
    return Clip2SamTask(model)


def test_clip2sam_step_is_the_hand_written_loss_and_micro_batches_do_not_change_it(instance_batch) -> None:
    ours = _clip2sam_task(0)
    full = forward_backward(
        ours, ours.student, {"instances": instance_batch}, micro_batch_sizes={"instances": 3}, env=ENV
    )
    # By hand: CE over the training classes + mask BCE + dice per instance, 2 : 5 : 5, mean over instances.
    reference = _clip2sam_task(0)
    text = reference.student.text_embeddings(instance_batch.class_names, ("a photo of a {}.",))
    out = reference.student(instance_batch.images, instance_batch.prompts, text_embeddings=text).masks
    masks = torch.cat([t.masks for t in instance_batch.targets])
    labels = torch.cat([t.labels for t in instance_batch.targets])
    logits = out.low_res_logits[:, 0]
    per_instance = (
        2.0 * F.cross_entropy(out.class_logits, labels, reduction="none")
        + 5.0 * F.binary_cross_entropy_with_logits(logits, masks, reduction="none").mean((1, 2))
        + 5.0 * dice_loss_per_mask(logits, masks)
    )
    per_instance.mean().backward()
    assert full.total == pytest.approx(per_instance.mean().item(), rel=1e-5)
    assert full.units["instances"] == labels.numel() == sum(p.num_prompts for p in instance_batch.prompts)
    expected = _grads(reference.student)
    assert expected.keys() == _grads(ours.student).keys() and any(
        k.startswith("clip2sam.label_token") for k in expected
    )
    for name, grad in _grads(ours.student).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    split = _clip2sam_task(0)
    micro = forward_backward(
        split, split.student, {"instances": instance_batch}, micro_batch_sizes={"instances": 1}, env=ENV
    )
    assert micro.total == pytest.approx(full.total, rel=1e-5)
    for name, grad in _grads(split.student).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not any(n.startswith(("clip.", "sam2clip.", "prompt_encoder.")) for n in expected)


def test_sam2clip_step_is_the_masked_mse_to_the_sam_teacher(instance_batch) -> None:
    torch.manual_seed(1)
    model = create_ovsam_model("ovsam_tiny")
    set_trainable(model, ["sam2clip.*"])
    teacher = SamTeacher(None, model_name="samclip_tiny")
    task = Sam2ClipTask(model, teacher, EmbeddingDistillationLoss(masked=True))
    losses = forward_backward(task, model, {"sam": instance_batch}, micro_batch_sizes={"sam": 2}, env=ENV)
    with torch.no_grad():
        target = teacher.sam.image_encoder(
            (instance_batch.images - torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1) / 255)
            / (torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1) / 255)
        )
        student = model.sam2clip(model.clip.features(instance_batch.images))
    per_image = []
    for b, (h, w) in enumerate(instance_batch.input_sizes.tolist()):
        rows, cols = -(-h // 16), -(-w // 16)
        per_image.append(((student[b, :, :rows, :cols] - target[b, :, :rows, :cols]) ** 2).mean())
    assert losses.total == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-5)
    assert losses.images == {"sam": 3} and all(
        p.grad is None for n, p in model.named_parameters() if not n.startswith("sam2clip.")
    )


def test_ovsam_configs_compose_plan_and_build(tmp_path: Path) -> None:
    """ovsam_smoke plans and builds both stages' tasks and streams; ovsam_r50x16 holds the paper's defaults."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        smoke = compose("train", overrides=["experiment=ovsam_smoke", f"run_dir={tmp_path / 'run'}"])
        paper = compose("train", overrides=["experiment=ovsam_r50x16", f"run_dir={tmp_path / 'paper'}"])
    builder.prepare(smoke)
    stages = builder.plan_run(smoke, ENV, Path(smoke.run_dir))
    assert [s.name for s in stages] == ["sam2clip", "clip2sam"]
    for stage, task_type in zip(stages, (Sam2ClipTask, Clip2SamTask), strict=True):
        model = builder.build_model(smoke, from_sam_checkpoint=stage.previous is None)
        task = builder.build_task(smoke, stage, model)
        assert isinstance(task, task_type)
        assert set(builder.build_streams(smoke, stage, ENV)) == set(stage.streams) == set(task.weights)
    s1, s2 = (builder.build_stage(paper, n) for n in ("sam2clip", "clip2sam"))
    assert paper.optim.weight_decay == 1e-4 and (s1.schedule_epochs, s2.schedule_epochs) == (12, 12)
    assert s1.sam.batch_size == s2.instances.batch_size == 16  # 2 images per GPU on 8 GPUs
    assert s1.trainable == ["sam2clip.*"] and s2.trainable[0] == "clip2sam.*"
    model = builder.build_model(smoke, from_sam_checkpoint=False)
    trained = set(set_trainable(model, s2.trainable))
    decoder = {n for n, _ in model.named_parameters() if n.startswith("mask_decoder.")}
    frozen = (
        "mask_decoder.iou_prediction_head.",
        *(f"mask_decoder.output_hypernetworks_mlps.{i}." for i in (1, 2, 3)),
    )
    assert decoder - trained == {n for n in decoder if n.startswith(frozen)}
    assert paper.model.clip_model_name == "RN50x16" and paper.teacher.sam.model_name == "samclip_vit_h"
    assert paper.data.instances.split == "coco_48_17"
