"""Validation during training: metric values on constructed cases, rank reduction, keep-best, resume, held-out keys."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image
from torch import nn
from train_fakes import held_out_evaluators, single_process_env, tiny_task, train_tiny

from samclip.data.batches import ClipBatch, SamBatch
from samclip.eval.zeroshot_cls import evaluate_zeroshot_cls
from samclip.models import SamPrompts, create_model
from samclip.models.final_checkpoint import load_final_checkpoint
from samclip.models.teachers import ClipTeacher, SamTeacher
from samclip.train import runner
from samclip.train.checkpoint import load_training_checkpoint
from samclip.train.runner import CONFIG_DIR
from samclip.train.tracking import is_timing_key, read_metrics
from samclip.train.validation import (
    BestCheckpoint,
    ClipCosine,
    SamIouToTeacher,
    Validator,
    ZeroshotTop1,
    mask_iou,
)

HERE = Path(__file__).parent


class FixedClip(nn.Module):
    """A 'model' whose CLIP embeddings are given rows, whatever the images."""

    def __init__(self, embeds: torch.Tensor) -> None:
        super().__init__()
        self.embeds = embeds

    def forward(self, images: torch.Tensor, prompts: object = None, *, clip: bool = True) -> SimpleNamespace:
        return SimpleNamespace(clip=SimpleNamespace(image_embeds=self.embeds[: images.shape[0]]))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.embeds[: images.shape[0]]


class FixedMasks(nn.Module):
    """A 'model' whose low-res mask logits are given (+1 inside the mask, -1 outside)."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.logits = masks.float() * 2 - 1

    def forward(self, images: torch.Tensor, prompts: object, *, clip: bool = False, multimask: bool = False):
        return SimpleNamespace(sam=SimpleNamespace(low_res_logits=self.logits), low_res_logits=self.logits)


def _clip_batches(num: int = 2) -> list[ClipBatch]:
    return [ClipBatch(torch.zeros(2, 3, 16, 16), 16) for _ in range(num)]


def test_clip_cosine_is_one_for_the_teacher_itself_and_the_hand_value_otherwise() -> None:
    env = single_process_env()
    student = FixedClip(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    same = SimpleNamespace(student=student, teachers={"clip": student})
    validator = Validator({"clip_cosine": ClipCosine(_clip_batches(), 2)}, every_steps=1)
    assert validator.run(same, env).metrics["val/clip_cosine"] == pytest.approx(1.0, abs=1e-12)
    other = SimpleNamespace(student=student, teachers={"clip": FixedClip(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))})
    # cos = 1 and 1/sqrt(2) for the two images of each batch.
    expected = (1 + 1 / math.sqrt(2)) / 2
    assert validator.run(other, env).metrics["val/clip_cosine"] == pytest.approx(expected, abs=1e-12)
    # A metric is named by its config entry, so one evaluator can run twice (e.g. at two resolutions).
    twice = Validator({"cos_a": ClipCosine(_clip_batches(), 2), "cos_b": ClipCosine(_clip_batches(1), 1)}, 1)
    assert twice.run(other, env).metrics == {
        "val/cos_a": pytest.approx(expected, abs=1e-12),
        "val/cos_b": pytest.approx(expected, abs=1e-12),
    }


def _sam_batch() -> SamBatch:
    # A 64 px frame whose image is 64 x 32 (h, w): only the left half of the 16 x 16 low-res grid counts.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])
    return SamBatch(
        images=torch.zeros(1, 3, 64, 64),
        input_sizes=torch.tensor([[64, 32]]),
        original_sizes=torch.tensor([[64, 32]]),
        prompts=[SamPrompts(0, boxes=boxes)],
    )


def test_sam_iou_to_teacher_is_hand_computed_inside_the_image_and_one_for_the_teacher_itself() -> None:
    env = single_process_env()
    student_masks = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    teacher_masks = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    student_masks[0, 0, :8, :] = True  # rows 0-7; its columns 8-15 lie in the padding and must not count
    teacher_masks[0, 0, :, :8] = True  # columns 0-7: 128 px, 64 of them shared -> IoU 1/2
    # Mask 1: both empty inside the image (the student's pixels are in the padding) -> IoU 1.
    student_masks[1, 0, :, 8:] = True
    student, teacher = FixedMasks(student_masks), FixedMasks(teacher_masks)
    validator = Validator({"sam_iou_to_teacher": SamIouToTeacher([_sam_batch()], 1)}, every_steps=1)
    task = SimpleNamespace(student=student, teachers={"sam": teacher})
    assert validator.run(task, env).metrics["val/sam_iou_to_teacher"] == pytest.approx(0.75, abs=1e-12)
    task = SimpleNamespace(student=teacher, teachers={"sam": teacher})
    assert validator.run(task, env).metrics["val/sam_iou_to_teacher"] == 1.0
    assert mask_iou(torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)).item() == 0.0


def test_a_student_built_from_the_sam_teacher_checkpoint_reproduces_its_masks(tmp_path: Path) -> None:
    """Real models: the student loaded from the teacher's file scores ~1, a random student clearly less."""
    from samclip.models.sam_checkpoint import build_official_sam

    torch.manual_seed(1)
    sam = build_official_sam(create_model("samclip_tiny").config)
    with torch.no_grad():
        for name, param in sam.image_encoder.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                param.normal_(std=0.02)
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    teacher = SamTeacher(tmp_path / "sam.pth", model_name="samclip_tiny")
    evaluators = held_out_evaluators(single_process_env())
    validator = Validator({"sam_iou_to_teacher": evaluators["sam_iou_to_teacher"]}, every_steps=1)
    same = create_model("samclip_tiny", sam_checkpoint=tmp_path / "sam.pth")
    torch.manual_seed(2)
    random_student = create_model("samclip_tiny")
    env = single_process_env()
    iou_same = validator.run(SimpleNamespace(student=same, teachers={"sam": teacher}), env).metrics
    iou_random = validator.run(SimpleNamespace(student=random_student, teachers={"sam": teacher}), env).metrics
    print(f"IoU to teacher: same weights {iou_same}, random {iou_random}")
    assert iou_same["val/sam_iou_to_teacher"] > 0.999
    assert iou_random["val/sam_iou_to_teacher"] < 0.9


class _RandomDraws:
    """An evaluator that draws from every global RNG and flips the model to train mode, as careless code would."""

    teachers = ()

    def local_sums(self, task: object, device: torch.device) -> tuple[float, float]:
        assert not task.student.training, "evaluators run the student in eval mode"
        random.random(), np.random.rand(), torch.rand(3)
        return 1.0, 1.0


def test_validation_restores_the_rng_streams_and_train_mode() -> None:
    task = SimpleNamespace(student=nn.Linear(2, 2))
    task.student.train()
    validator = Validator({"draws": _RandomDraws()}, every_steps=1)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    expected = (random.random(), float(np.random.rand()), torch.rand(2).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    assert validator.run(task, single_process_env()).metrics == {"val/draws": 1.0}
    assert (random.random(), float(np.random.rand()), torch.rand(2).tolist()) == expected
    assert task.student.training


def test_keep_best_picks_the_best_step_by_mode_and_ignores_ties_and_nan(tmp_path: Path) -> None:
    env = single_process_env()
    for mode, values, best_step, saved in (
        ("max", [0.5, 0.7, 0.6, 0.7, math.nan], 2, [1, 2]),
        ("min", [0.5, 0.7, 0.3, 0.4], 3, [1, 3]),
    ):
        directory = tmp_path / mode
        writes: list[int] = []

        def save(path: Path, step: int, writes: list[int] = writes) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(step))
            writes.append(step)

        keeper = BestCheckpoint(directory, "val/x", mode, save)
        best = None
        for step, value in enumerate(values, 1):
            best = keeper.update(step, {"val/x": value}, best, env)
        assert writes == saved
        assert best == {"metric": "val/x", "mode": mode, "step": best_step, "value": values[best_step - 1]}
        assert json.loads((directory / "best.json").read_text()) == best
        assert (directory / "best.pt").read_text() == str(best_step)
    with pytest.raises(ValueError, match="keep_best_mode must be one of"):
        BestCheckpoint(tmp_path, "val/x", "highest", save)


def _without_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if not is_timing_key(k)} for line in lines]


def test_resume_with_validation_is_exact_and_validation_does_not_change_training(tmp_path: Path) -> None:
    env = single_process_env()
    kwargs = dict(num_steps=4, every_steps=2, validate_every=2)
    train_tiny(env, tmp_path / "straight", **kwargs)
    train_tiny(env, tmp_path / "resumed", stop_after=2, **kwargs)  # stopped after step 2's validation
    train_tiny(env, tmp_path / "resumed", **kwargs)
    train_tiny(env, tmp_path / "unvalidated", num_steps=4, every_steps=2)

    straight = _without_timing(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    resumed = _without_timing(read_metrics(tmp_path / "resumed" / "metrics.jsonl"))
    assert resumed == straight
    val_steps = [m["step"] for m in straight if "val/sam_iou_to_teacher" in m]
    assert val_steps == [2, 4]

    a = load_training_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000004.pt")
    b = load_training_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_00000004.pt")
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])
    best_lines = [m for m in straight if "val/sam_iou_to_teacher" in m]
    best = max(best_lines, key=lambda m: m["val/sam_iou_to_teacher"])
    for run in ("straight", "resumed"):
        record = json.loads((tmp_path / run / "best.json").read_text())
        assert (record["step"], record["value"]) == (best["step"], best["val/sam_iou_to_teacher"]), run
        assert load_final_checkpoint(tmp_path / run / "best.pt").step == best["step"]
    assert a["best"] == b["best"] == json.loads((tmp_path / "straight" / "best.json").read_text())
    # The best record so far travels in the training checkpoint (the resumed run compared against it).
    step_2 = load_training_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_00000002.pt")
    assert step_2["best"]["step"] == 2

    unvalidated = _without_timing(read_metrics(tmp_path / "unvalidated" / "metrics.jsonl"))
    assert [m for m in straight if "loss" in m] == unvalidated
    c = load_training_checkpoint(tmp_path / "unvalidated" / "checkpoints" / "step_00000004.pt")
    assert all(torch.equal(a["student"][k], c["student"][k]) for k in a["student"])
    assert torch.equal(a["rng"][0]["torch"], c["rng"][0]["torch"])


@pytest.mark.slow
def test_two_ranks_reduce_to_the_one_rank_metrics(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(HERE / "validation_worker.py"),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    task = tiny_task(seed=0)
    single = Validator(held_out_evaluators(single_process_env()), every_steps=1).run(
        task, single_process_env()
    )
    assert ranks[0]["global"] == ranks[1]["global"]
    for name, value in single.metrics.items():
        assert ranks[0]["global"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    # Each rank alone sees other samples: without the reduction rank 0 would report something else.
    assert ranks[0]["local"]["val/clip_cosine"] != pytest.approx(single.metrics["val/clip_cosine"], abs=1e-4)


def _blake_fraction(key: str, seed: int) -> float:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big") / 2**64


@pytest.mark.slow
def test_smoke_multitask_validates_on_held_out_samples_training_never_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """experiment=smoke as is (validation on by default), instrumented: which keys each side decodes."""
    import samclip.data.clip_stream as clip_stream
    import samclip.data.sam_stream as sam_stream
    from samclip.train import validation

    decoded: dict[str, dict[str, set[str]]] = {
        side: {"clip": set(), "sam": set()} for side in ("train", "val")
    }
    side = {"now": "train"}

    def recording(stream: str, function):
        def wrapper(raw: dict, *args: object):
            decoded[side["now"]][stream].add(raw["__key__"])
            return function(raw, *args)

        return wrapper

    original_run = validation.Validator.run

    def run_as_val(self: Validator, *args: object, **kwargs: object):
        side["now"] = "val"
        try:
            return original_run(self, *args, **kwargs)
        finally:
            side["now"] = "train"

    monkeypatch.setattr(clip_stream, "decode_clip_sample", recording("clip", clip_stream.decode_clip_sample))
    monkeypatch.setattr(
        clip_stream, "decode_clip_sample_reduced", recording("clip", clip_stream.decode_clip_sample_reduced)
    )
    monkeypatch.setattr(sam_stream, "prepare_sa1b_sample", recording("sam", sam_stream.prepare_sa1b_sample))
    monkeypatch.setattr(validation.Validator, "run", run_as_val)
    run_dir = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=smoke",
                f"run_dir={run_dir}",
                "stages=[head_probe,multitask]",
                "stage.head_probe.schedule_steps=2",
                "stage.head_probe.warmup_steps=1",
                "stage.multitask.schedule_steps=4",
                "stage.multitask.stop_step=4",
                "validation.every_steps=2",
            ],
        )
    runner.run(cfg)

    # The held-out sets, from the files and the rule, not from the streams.
    keys = [f"{shard:05d}{index:04d}" for shard in range(4) for index in range(12)]
    clip_held_out = {k for k in keys if _blake_fraction(k, 0) < 0.25}
    sam_held_out = {f"sa_{i}" for i in (run_dir / "data" / "sam" / "val.txt").read_text().split()}
    assert 0 < len(clip_held_out) < len(keys) and len(sam_held_out) == 3
    assert decoded["train"]["clip"] and decoded["train"]["sam"]
    assert not decoded["train"]["clip"] & clip_held_out
    assert not decoded["train"]["sam"] & sam_held_out
    assert decoded["val"]["clip"] and decoded["val"]["clip"] <= clip_held_out
    assert decoded["val"]["sam"] and decoded["val"]["sam"] <= sam_held_out

    for stage, names in (
        ("head_probe", ["clip_cosine"]),
        ("multitask", ["clip_cosine", "sam_iou_to_teacher"]),
    ):
        lines = [m for m in read_metrics(run_dir / stage / "metrics.jsonl") if "loss" not in m]
        assert [m["step"] for m in lines] == ([2] if stage == "head_probe" else [2, 4])
        for line in lines:
            assert sorted(k for k in line if k.startswith("val/")) == [f"val/{n}" for n in names]
            assert all(-1.0 <= line[f"val/{n}"] <= 1.0 for n in names)
    multitask = [m for m in read_metrics(run_dir / "multitask" / "metrics.jsonl") if "loss" not in m]
    best = max(multitask, key=lambda m: m["val/sam_iou_to_teacher"])  # smoke keeps best by this metric
    record = json.loads((run_dir / "multitask" / "best.json").read_text())
    assert (record["step"], record["value"]) == (best["step"], best["val/sam_iou_to_teacher"])
    assert load_final_checkpoint(run_dir / "multitask" / "best.pt").step == best["step"]
    assert not (run_dir / "head_probe" / "best.pt").exists()  # head_probe does not produce the metric


class TeacherAsStudent(nn.Module):
    """A student whose CLIP head is the teacher's image tower (the CLIP side of student == teacher)."""

    def __init__(self, teacher: ClipTeacher) -> None:
        super().__init__()
        self.teacher = teacher

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.teacher.encode_image(images, normalize=normalize)


def test_zeroshot_top1_of_a_student_equal_to_the_teacher_is_the_eval_tasks_teacher_top1(
    tmp_path: Path,
) -> None:
    """Against samclip-eval's own zero-shot task on the teacher: same images, templates, classifier."""
    rng = np.random.default_rng(0)
    for name, colour in (
        ("red_square", (220, 30, 30)),
        ("green_square", (30, 200, 30)),
        ("blue_sky", (40, 60, 230)),
    ):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for index in range(4):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (48, 56, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "folder" / name / f"{index}.png")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("samclip-tiny-clip").state_dict(), tmp_path / "clip.pt")
    teacher = ClipTeacher("samclip-tiny-clip", str(tmp_path / "clip.pt"))
    reference = evaluate_zeroshot_cls(
        None,
        tmp_path,
        layout="imagefolder",
        root=str(tmp_path / "folder"),
        encoder="teacher",
        teacher_model="samclip-tiny-clip",
        teacher_pretrained=str(tmp_path / "clip.pt"),
        num_workers=0,
    )
    task = SimpleNamespace(student=TeacherAsStudent(teacher), teachers={"clip": teacher})
    env = single_process_env()
    single = ZeroshotTop1(str(tmp_path / "folder"), resolution=teacher.image_size, batch_size=5)
    top1 = Validator({"zeroshot_top1": single}, every_steps=1).run(task, env).metrics["val/zeroshot_top1"]
    assert top1 == pytest.approx(reference[f"top1@{teacher.image_size}"], abs=1e-9)
    # Rank shares: images r, r + 2, ... of the 12, together all of them once.
    shares = [ZeroshotTop1(str(tmp_path / "folder"), resolution=64, rank=r, world_size=2) for r in (0, 1)]
    assert sorted(shares[0].indices + shares[1].indices) == list(range(12))
    sums = [share.local_sums(task, torch.device("cpu")) for share in shares]
    assert sum(s[0] for s in sums) / sum(s[1] for s in sums) == pytest.approx(top1, abs=1e-9)


class ColourWords(nn.Module):
    """Text 'model' + tokenizer: a prompt's embedding is the one-hot of the colour word it names."""

    words = ("blue", "green", "red")

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([next(i for i, w in enumerate(self.words) if w in t) for t in texts])

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return F.one_hot(tokens, 3).float()


class DominantChannel(nn.Module):
    """An image 'student': the one-hot of its strongest mean channel, in (blue, green, red) order."""

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return F.one_hot(images.mean(dim=(2, 3)).flip(1).argmax(1), 3).float()


def test_zeroshot_top1_is_the_hand_counted_accuracy(tmp_path: Path) -> None:
    colours = {"blue": (0, 0, 200), "green": (0, 200, 0), "red": (200, 0, 0)}
    for folder, drawn in (
        ("blue", "blue"),
        ("blue", "blue"),
        ("green", "green"),
        ("red", "red"),
        ("red", "green"),
    ):
        (tmp_path / folder).mkdir(exist_ok=True)
        index = len(list((tmp_path / folder).iterdir()))
        Image.new("RGB", (40, 30), colours[drawn]).save(tmp_path / folder / f"{index}.png")
    text = ColourWords()
    teacher = SimpleNamespace(model=text, tokenizer=text.tokenize)
    task = SimpleNamespace(student=DominantChannel(), teachers={"clip": teacher})
    evaluator = ZeroshotTop1(str(tmp_path), resolution=16, templates=["a photo of {}.", "{} things"])
    top1 = Validator({"zeroshot_top1": evaluator}, every_steps=1).run(task, single_process_env()).metrics
    assert top1 == {"val/zeroshot_top1": pytest.approx(100.0 * 4 / 5)}  # the green image filed as red misses


class Counting(nn.Module):
    """Counts the calls into a teacher's image side."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher, self.calls = teacher, 0

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.teacher.encode_image(images)

    def forward(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.teacher(*args, **kwargs)


def test_teacher_outputs_are_computed_once_per_held_out_batch_and_recomputed_for_other_samples() -> None:
    task = tiny_task(seed=0)
    env = single_process_env()
    clip, sam = (
        _keyed(held_out_evaluators(env)["clip_cosine"].data),
        _keyed(held_out_evaluators(env)["sam_iou_to_teacher"].data),
    )
    counts = {name: Counting(teacher) for name, teacher in task.teachers.items()}
    counted = SimpleNamespace(student=task.student, teachers=counts)
    validator = Validator(
        {"clip_cosine": ClipCosine(clip, 2), "sam_iou_to_teacher": SamIouToTeacher(sam, 2)}, 1
    )
    first = validator.run(counted, env).metrics
    assert (counts["clip"].calls, counts["sam"].calls) == (2, 2)
    assert validator.run(counted, env).metrics == first
    assert (counts["clip"].calls, counts["sam"].calls) == (2, 2)  # from the cache
    uncached = Validator(held_out_evaluators(env), 1).run(task, env).metrics
    assert uncached == pytest.approx(first, abs=1e-12)
    clip[0].keys = ["another", "sample"]
    validator.run(counted, env)
    assert counts["clip"].calls == 3


def _keyed(batches: list) -> list:
    for step, batch in enumerate(batches):
        batch.keys = [f"{step}:{i}" for i in range(batch.images.shape[0])]
    return batches
