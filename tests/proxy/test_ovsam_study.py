"""experiment=proxy_ovsam composes onto the proxy teachers and plans both stages; the OV-SAM study runs end
to end at its tiny size and writes Table 1's columns for every row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from samclip.data.instances import load_instances
from samclip.models import get_model_config
from samclip.models.sam_checkpoint import build_official_sam
from samclip.models.teachers import ClipTeacher, create_open_clip
from samclip.proxy.instances import PROXY_BASE_CLASSES, write_instance_split
from samclip.proxy.ovsam_study import (
    OVSAM_STUDY_SIZES,
    PROMPT_KINDS,
    TABLE_COLUMNS,
    aggregate_rows,
    compose_ovsam,
    crop_square,
    run_ovsam_study,
)
from samclip.proxy.world import ProxyWorld
from samclip.train import builder
from samclip.train.distributed import DistEnv

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TINY = OVSAM_STUDY_SIZES["tiny"]


def test_config_targets_the_proxy_teachers_and_plans_both_stages(tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    cfg = compose_ovsam(tmp_path, instances, tmp_path / "run", OVSAM_STUDY_SIZES["test"])
    assert cfg.model.clip_pretrained == f"{tmp_path}/teachers/clip_proxy.pt"
    # The decoder starts from the proxy SAM teacher, which is also SAM2CLIP's target.
    assert cfg.model.sam_checkpoint == cfg.teacher.sam.checkpoint == f"{tmp_path}/teachers/sam_proxy.pth"
    assert cfg.data.instances.annotations == f"{instances}/annotations/instances_train.json"
    assert list(cfg.data.instances.novel_classes) == ["cross"]
    assert cfg.stage.clip2sam.schedule_steps == OVSAM_STUDY_SIZES["test"].clip2sam_steps
    model = instantiate(cfg.model, sam_checkpoint=None, clip_pretrained=None)
    # CLIP2SAM's label embedding must land in the proxy CLIP's text space.
    assert model.clip.embed_dim == ClipTeacher(cfg.model.clip_model_name, None).embed_dim == 64
    stages = builder.plan_run(cfg, ENV, tmp_path / "run")
    assert [s.name for s in stages] == ["sam2clip", "clip2sam"]
    assert stages[1].previous == "sam2clip"
    assert stages[0].schedule_steps == OVSAM_STUDY_SIZES["test"].sam2clip_steps


def test_crop_square_is_centred_on_the_box_and_clipped() -> None:
    image = np.arange(100 * 80 * 3, dtype=np.uint8).reshape(100, 80, 3)
    crop = crop_square(image, [30, 40, 50, 50])  # 20 x 10 box: a 30 px square around (40, 45)
    assert crop.size == (30, 30)
    assert np.array_equal(np.asarray(crop), image[30:60, 25:55])
    assert crop_square(image, [0, 0, 80, 100]).size == (80, 100)  # clipped to the image


def test_aggregate_rows_is_mean_and_se_over_seeds_and_skips_absent_rows() -> None:
    per_seed = {"0": {"ovsam": {"box/iou_base": 40.0, "box/iou_novel": None}},
                "1": {"ovsam": {"box/iou_base": 44.0, "box/iou_novel": None}}}  # fmt: skip
    rows = aggregate_rows(per_seed)
    assert set(rows) == {"ovsam"} and set(rows["ovsam"]) == {"box/iou_base"}
    assert rows["ovsam"]["box/iou_base"]["mean"] == pytest.approx(42.0)
    assert rows["ovsam"]["box/iou_base"]["se"] == pytest.approx(2.0)  # sd 2 sqrt(2), over sqrt(2)


def _random_teachers(teachers: Path) -> None:
    teachers.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(create_open_clip("samclip-proxy-clip", None).state_dict(), teachers / "clip_proxy.pt")
    torch.save(build_official_sam(get_model_config("samclip_tiny")).state_dict(), teachers / "sam_proxy.pth")


def _box_fill_iou(instances: Path, novel: bool) -> float:
    """Hand computation of the box-as-mask IoU straight from the annotations."""
    dataset = load_instances(str(instances / "annotations" / "instances_val.json"))
    ious = []
    for annotation in dataset.dataset["annotations"]:
        if (annotation["category_id"] == 4) != novel:
            continue
        target = dataset.annToMask(annotation).astype(bool)
        x, y, w, h = annotation["bbox"]
        box = np.zeros_like(target)
        box[round(y) : round(y + h), round(x) : round(x + w)] = True
        ious.append((box & target).sum() / (box | target).sum())
    return 100.0 * float(np.mean(ious))


@pytest.mark.slow
def test_tiny_study_writes_table_one_for_every_row(tmp_path: Path, world: ProxyWorld) -> None:
    out = tmp_path / "study"
    (out / "world").mkdir(parents=True)
    for part in ("sam", "sam_val"):
        (out / "world" / part).symlink_to(world.root / part)
    (out / "world" / "DONE").write_text("size=tiny seed=0\n")
    _random_teachers(out / "teachers")
    results = run_ovsam_study(out, "tiny")
    assert results["seeds"] == [0]
    assert (out / "ovsam" / "seed_0" / "clip2sam" / "final.pt").is_file()
    rows = results["rows"]
    assert set(rows) == {"ovsam", "ovsam_learned", "ovsam_frozen_clip", "teachers", "box_fill"}
    assert results["missing"] == [f"samclip seed 0: {out}/seed_0/recipe/res_adapt/final.pt does not exist"]
    for row in ("ovsam", "ovsam_learned", "ovsam_frozen_clip", "teachers"):
        for kind in PROMPT_KINDS:
            for column in TABLE_COLUMNS:
                cell = rows[row][f"{kind}/{column}"]
                assert 0.0 <= cell["mean"] <= 100.0 and cell["se"] == 0.0 and len(cell["values"]) == 1
    # The three OV-SAM rows share the masks; only the class scores differ.
    for column in ("iou_base", "iou_novel"):
        values = {rows[r][f"box/{column}"]["mean"] for r in ("ovsam", "ovsam_learned", "ovsam_frozen_clip")}
        assert len(values) == 1
    instances = out / "ovsam" / "instances"
    dataset = load_instances(str(instances / "annotations" / "instances_val.json"))
    assert results["num_instances"] == len(dataset.dataset["annotations"])
    assert rows["box_fill"]["box/iou_base"]["mean"] == pytest.approx(_box_fill_iou(instances, False))
    assert rows["box_fill"]["box/iou_novel"]["mean"] == pytest.approx(_box_fill_iou(instances, True))
    # Deterministic from the world's seed: the study's instances are the split writer's.
    reference = write_instance_split(tmp_path / "ref", "val", TINY.num_val, seed=0)
    assert (instances / "annotations" / "instances_val.json").read_text() == reference.read_text()
    with Image.open(instances / "train" / "000000000001.jpg") as image:
        assert image.size[0] >= 128
    markdown = (out / "ovsam" / "results.md").read_text()
    assert "| ovsam |" in markdown and "box iou_novel" in markdown
    assert json.loads((out / "ovsam" / "results.json").read_text())["rows"].keys() == rows.keys()
    assert set(results["base_classes"]) == set(PROXY_BASE_CLASSES)
