"""Zero-shot classification against datasets whose answers are known by construction."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from constructed import CLASSNAMES, CLIP_NAME, COLORS, constant_images, dual_basis, write_image_folder
from PIL import Image

from samclip.eval.zeroshot_cls import evaluate_zeroshot_cls
from samclip.serve.merged import load


def _run(checkpoint: Path, tmp_path: Path, **kwargs: object) -> dict:
    return evaluate_zeroshot_cls(
        load(checkpoint), tmp_path / "run", resolutions=[224], batch_size=4, num_workers=0, **kwargs
    )


def test_imagefolder_accuracy_is_one_when_the_model_is_right(classifying_checkpoints, tmp_path):
    root = write_image_folder(tmp_path / "data", CLASSNAMES, COLORS)
    results = _run(
        classifying_checkpoints["right"], tmp_path, layout="imagefolder", root=str(root), classnames=None
    )
    assert results["top1@224"] == 100.0 and results["top5@224"] == 100.0
    assert results["num_images"] == len(CLASSNAMES)


def test_imagefolder_accuracy_drops_with_the_shifted_model_and_top5_counts_ranks(
    classifying_checkpoints, tmp_path
):
    root = write_image_folder(tmp_path / "data", CLASSNAMES, COLORS)
    results = _run(
        classifying_checkpoints["shifted"], tmp_path, layout="imagefolder", root=str(root), classnames=None
    )
    assert results["top1@224"] == 0.0
    # The shifted model scores the true class 0 and one wrong class 1: the true class ranks 2nd..8th.
    assert 0.0 < results["top5@224"] < 100.0


def test_class_name_file_and_folder_order(classifying_checkpoints, tmp_path):
    """Folders sort alphabetically (ImageFolder); a name file gives the names of label 0, 1, ... in that order."""
    folders = [f"n{index:02d}" for index in range(len(CLASSNAMES))]
    root = write_image_folder(tmp_path / "data", folders, COLORS)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSNAMES) + "\n")
    right = _run(
        classifying_checkpoints["right"],
        tmp_path,
        layout="imagefolder",
        root=str(root),
        classnames=str(names),
    )
    assert right["top1@224"] == 100.0
    names.write_text("\n".join(reversed(CLASSNAMES)) + "\n")
    wrong = _run(
        classifying_checkpoints["right"],
        tmp_path,
        layout="imagefolder",
        root=str(root),
        classnames=str(names),
    )
    assert wrong["top1@224"] == 0.0


def _write_cls_shard(path: Path, labels: list[int]) -> None:
    with tarfile.open(path, "w") as tar:
        for index, label in enumerate(labels):
            image = Image.fromarray(np.broadcast_to(COLORS[index % len(COLORS)], (30, 40, 3)).copy())
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            for suffix, payload in (("png", buffer.getvalue()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{index:05d}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_webdataset_layout(classifying_checkpoints, tmp_path):
    num = len(CLASSNAMES)
    _write_cls_shard(tmp_path / "cls-000.tar", list(range(num)))
    _write_cls_shard(tmp_path / "cls-001.tar", [(index + 1) % num for index in range(num)])
    results = _run(
        classifying_checkpoints["right"],
        tmp_path,
        layout="webdataset",
        shards=str(tmp_path / "cls-{000..001}.tar"),
        classnames=list(CLASSNAMES),
    )
    # The first shard is labelled correctly, the second one off by one.
    assert results["num_images"] == 2 * num
    assert results["top1@224"] == 50.0


def test_the_clip_teacher_itself(classifier, clip_tower_file, tmp_path):
    """Solve the teacher's projection so that colour c embeds at class c, then evaluate it with encoder=teacher."""
    teacher = open_clip.create_model(CLIP_NAME, pretrained=str(clip_tower_file)).eval()
    size = (
        teacher.visual.image_size[0]
        if isinstance(teacher.visual.image_size, tuple)
        else teacher.visual.image_size
    )
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    pixels = (constant_images(COLORS, size) - mean) / std
    projection = teacher.visual.proj
    with torch.no_grad():
        teacher.visual.proj = None
        pooled = teacher.visual(pixels)
        solved = torch.linalg.lstsq(pooled.double(), dual_basis(classifier).T.double()).solution.float()
        teacher.visual.proj = torch.nn.Parameter(solved, requires_grad=False)
    assert projection.shape == solved.shape
    teacher_file = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), teacher_file)
    root = write_image_folder(tmp_path / "data", CLASSNAMES, COLORS)

    def evaluate_teacher(pretrained: Path) -> dict:
        return evaluate_zeroshot_cls(
            None,
            tmp_path / "run",
            layout="imagefolder",
            root=str(root),
            classnames=None,
            encoder="teacher",
            teacher_model=CLIP_NAME,
            teacher_pretrained=str(pretrained),
            num_workers=0,
        )

    results = evaluate_teacher(teacher_file)
    assert results[f"top1@{size}"] == 100.0 and results["encoder"] == f"clip_teacher:{CLIP_NAME}"
    assert evaluate_teacher(clip_tower_file)[f"top1@{size}"] < 100.0


def test_merged_classify_uses_the_same_classifier(classifying_checkpoints):
    model = load(classifying_checkpoints["right"])
    image = np.broadcast_to(COLORS[2], (50, 70, 3)).copy()
    result = model.classify(image, list(CLASSNAMES))
    assert result.top == CLASSNAMES[2]
    assert torch.isclose(result.probs.sum(), torch.tensor(1.0))


def test_errors_name_the_missing_input(merged, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate_zeroshot_cls(merged, tmp_path, layout="imagefolder", root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="layout"):
        evaluate_zeroshot_cls(merged, tmp_path, layout="csv", root=str(tmp_path))


def test_class_count_must_match_the_folders(merged, tmp_path):
    root = write_image_folder(tmp_path / "data", CLASSNAMES[:3], COLORS[:3])
    with pytest.raises(ValueError, match=r"1000 class names but eval.root .* has 3 class folders"):
        evaluate_zeroshot_cls(merged, tmp_path / "run", layout="imagefolder", root=str(root), classnames="imagenet",
                              resolutions=[224], num_workers=0)  # fmt: skip


def test_the_config_default_names_classes_by_their_folders():
    from omegaconf import OmegaConf

    from samclip.cli.eval import CONFIG_DIR

    assert OmegaConf.load(CONFIG_DIR / "eval" / "zeroshot_cls.yaml").classnames is None
