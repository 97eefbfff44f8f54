"""A final.pt needs its CLIP teacher only for text: masks work with the teacher file gone, the file is found
again after the run dir moves, and a user-supplied teacher is rebuilt as configured for labels."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from constructed import CLIP_NAME, random_student
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from samclip.cli.predict import main as predict_main
from samclip.models.final_checkpoint import load_final_checkpoint, save_final_checkpoint
from samclip.models.teachers import ClipTeacher
from samclip.serve.merged import MergedSamClip, TextEncoder, load
from samclip.train.builder import clip_teacher_spec

IMAGE = (np.random.default_rng(3).random((48, 80, 3)) * 255).astype(np.uint8)
BOXES = np.array([[4.0, 6.0, 40.0, 30.0]])
TEXTS = ["a dog", "two cats"]


class PrefixedClipTeacher(ClipTeacher):
    """A user-supplied teacher: an open_clip model whose tokenizer prefixes every text (changes embeddings)."""

    def __init__(self, model_name: str, pretrained: str | None, prefix: str) -> None:
        super().__init__(model_name, pretrained)
        tokenize = self.tokenizer
        self.tokenizer = lambda texts: tokenize([f"{prefix} {text}" for text in _as_list(texts)])


def _as_list(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def train_like_run(run_dir: Path, teacher_node: dict, seed: int = 1) -> Path:
    """A run dir laid out as the trainer writes it: the teacher file inside, final.pt from the config."""
    teachers = run_dir / "teachers"
    teachers.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(CLIP_NAME).state_dict(), teachers / "clip_tiny.pt")
    cfg = OmegaConf.create({"run_dir": str(run_dir), "teacher": {"clip": teacher_node}})
    final = run_dir / "multitask" / "final.pt"
    save_final_checkpoint(final, random_student(0), clip_teacher_spec(cfg, run_dir), "multitask", 8)
    return final


TINY_TEACHER = {
    "_target_": "samclip.models.teachers.ClipTeacher",
    "model_name": CLIP_NAME,
    "pretrained": "${run_dir}/teachers/clip_tiny.pt",
}


def test_masks_need_no_teacher_file_and_labels_name_the_export(tmp_path: Path) -> None:
    final = train_like_run(tmp_path / "run", TINY_TEACHER)
    expected = load_final_checkpoint(final).build_model().segment(IMAGE, boxes=BOXES).masks
    (tmp_path / "run" / "teachers" / "clip_tiny.pt").unlink()
    merged = load(final)
    assert torch.equal(merged.segment(IMAGE, boxes=BOXES).masks, expected)
    assert merged.encode_image(torch.rand(1, 3, 64, 64)).shape == (1, merged.config.clip_embed_dim)
    assert not merged.has_text
    with pytest.raises(FileNotFoundError, match=r"clip_tiny\.pt.*samclip-export CHECKPOINT --format samclip"):
        merged.text_classifier(["dog", "cat"])


def test_predict_cli_masks_without_the_teacher_and_one_line_for_labels(tmp_path: Path, capsys) -> None:
    final = train_like_run(tmp_path / "run", TINY_TEACHER)
    shutil.rmtree(tmp_path / "run" / "teachers")
    image = tmp_path / "photo.png"
    Image.fromarray(IMAGE).save(image)
    predict_main(
        [str(image), "--checkpoint", str(final), "--boxes", "4,6,40,30", "--out", str(tmp_path / "m.png")]
    )
    assert Image.open(tmp_path / "m.png").size == (80, 48)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict_main(
            [str(image), "--checkpoint", str(final), "--labels", "dog,cat", "--out", str(tmp_path / "l.png")]
        )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("samclip-predict: error:") and "--format samclip" in lines[0]


def test_the_teacher_file_is_found_after_the_run_dir_moves(tmp_path: Path) -> None:
    train_like_run(tmp_path / "run", TINY_TEACHER)
    record = load_final_checkpoint(tmp_path / "run" / "multitask" / "final.pt").clip_teacher
    assert record.pretrained == str(tmp_path / "run" / "teachers" / "clip_tiny.pt")
    assert record.pretrained_in_run_dir == "teachers/clip_tiny.pt" and len(record.pretrained_sha256) == 64
    reference = TextEncoder.from_open_clip(CLIP_NAME, record.pretrained).encode_text(TEXTS)
    (tmp_path / "run").rename(tmp_path / "moved")
    merged = load(tmp_path / "moved" / "multitask" / "final.pt")
    assert torch.equal(merged.encode_text(TEXTS), reference)


def test_a_different_file_at_the_recorded_path_is_refused(tmp_path: Path) -> None:
    train_like_run(tmp_path / "run", TINY_TEACHER)
    (tmp_path / "run").rename(tmp_path / "moved")
    (tmp_path / "moved" / "teachers" / "clip_tiny.pt").unlink()
    # Another run's teacher now sits at the absolute path final.pt recorded: same name, other weights.
    train_like_run(
        tmp_path / "run", {**TINY_TEACHER, "pretrained": str(tmp_path / "run/teachers/clip_tiny.pt")}, 2
    )
    merged = load(tmp_path / "moved" / "multitask" / "final.pt")
    with pytest.raises(FileNotFoundError, match="sha256 differs"):
        merged.encode_text(TEXTS)


def test_a_user_supplied_teacher_gives_its_own_text_tower(tmp_path: Path) -> None:
    node = {
        "_target_": f"{__name__}.PrefixedClipTeacher",
        "model_name": CLIP_NAME,
        "pretrained": "${run_dir}/teachers/clip_tiny.pt",
        "prefix": "a photo of",
    }
    final = train_like_run(tmp_path / "run", node)
    record = load_final_checkpoint(final).clip_teacher
    assert (record.target, record.args) == (node["_target_"], {"prefix": "a photo of"})
    cfg = OmegaConf.create({"run_dir": str(tmp_path / "run"), "teacher": {"clip": node}})
    teacher = instantiate(cfg.teacher.clip)  # the teacher training used
    merged = load(final)
    assert torch.equal(merged.encode_text(TEXTS), teacher.encode_text(TEXTS))
    plain = TextEncoder.from_open_clip(CLIP_NAME, record.pretrained).encode_text(TEXTS)
    assert not torch.allclose(plain, teacher.encode_text(TEXTS))  # the default name would be another tower
    # An export records the same teacher.
    assert load(merged.save_pretrained(tmp_path / "export")).clip_teacher == record


def test_an_image_only_teacher_is_recorded_and_labels_say_it_has_no_text(tmp_path: Path) -> None:
    node = {
        "_target_": "samclip.models.timm_teacher.TimmImageTeacher",
        "model_name": "vit_tiny_patch16_224",
        "pretrained": None,
        "image_size": 64,
        "model_kwargs": {"depth": 1},
    }
    final = train_like_run(tmp_path / "run", node)
    record = load_final_checkpoint(final).clip_teacher
    assert (record.target, record.model_name) == (node["_target_"], "vit_tiny_patch16_224")
    assert record.args == {"image_size": 64, "model_kwargs": {"depth": 1}}
    merged = load(final)
    assert merged.segment(IMAGE, boxes=BOXES).masks.shape[-2:] == IMAGE.shape[:2]
    with pytest.raises(ValueError, match="TimmImageTeacher has no text tower"):
        merged.encode_text(TEXTS)


def test_a_recorded_target_must_be_a_teacher_class(tmp_path: Path) -> None:
    final = train_like_run(tmp_path / "run", {**TINY_TEACHER, "_target_": "os.system"})
    merged: MergedSamClip = load(final)
    with pytest.raises(ValueError, match="not a samclip FrozenTeacher"):
        merged.encode_text(TEXTS)
