"""Assets of the CPU smoke experiment: synthetic shards and tiny random teachers, written as files.

The smoke run then reads them exactly as a real run reads D_CLIP/SA-1B shards and the downloaded
OpenCLIP and SAM checkpoints: by path, through the same loaders.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from samclip.data import make_synthetic_data
from samclip.models import get_model_config
from samclip.models.final_checkpoint import atomic_torch_save
from samclip.models.sam_checkpoint import build_official_sam
from samclip.models.teachers import create_open_clip

log = logging.getLogger(__name__)


def prepare_smoke_assets(
    data_dir: str,
    clip_teacher: str,
    clip_model_name: str,
    sam_teacher: str,
    sam_model_name: str,
    seed: int = 0,
) -> None:
    """Write whatever of the data, the CLIP teacher and the SAM teacher is missing (same seed, same files)."""
    needed = (
        Path(data_dir) / "clip",
        Path(data_dir) / "sam" / "train.txt",
        Path(data_dir) / "sam" / "val.txt",
    )
    if not all(path.exists() for path in needed):
        log.info("smoke: writing synthetic D_CLIP and SA-1B shards to %s", data_dir)
        make_synthetic_data(data_dir, seed=seed)
    if not Path(clip_teacher).is_file():
        log.info("smoke: writing a random %s CLIP teacher to %s", clip_model_name, clip_teacher)
        torch.manual_seed(seed)
        model = create_open_clip(clip_model_name, None)
        atomic_torch_save(model.state_dict(), clip_teacher)
    if not Path(sam_teacher).is_file():
        log.info("smoke: writing a random %s SAM teacher to %s", sam_model_name, sam_teacher)
        torch.manual_seed(seed + 1)
        sam = build_official_sam(get_model_config(sam_model_name))
        # segment_anything zero-initialises the position embeddings; a teacher should not look that special.
        with torch.no_grad():
            for name, param in sam.image_encoder.named_parameters():
                if name == "pos_embed" or "rel_pos" in name:
                    param.normal_(std=0.02)
        atomic_torch_save(sam.state_dict(), sam_teacher)


def prepare_ovsam_smoke_assets(
    data_dir: str,
    clip_pretrained: str,
    clip_model_name: str,
    sam_teacher: str,
    sam_model_name: str,
    seed: int = 0,
) -> None:
    """The OV-SAM smoke run's files: SA-1B shards, COCO-layout instances, a random CLIP CNN and SAM teacher."""
    from samclip.data.synth_instances import make_synthetic_instances

    prepare_smoke_assets(data_dir, clip_pretrained, clip_model_name, sam_teacher, sam_model_name, seed)
    instances = Path(data_dir) / "instances"
    if not (instances / "annotations" / "instances_val.json").is_file():
        log.info("smoke: writing synthetic COCO-layout instances to %s", instances)
        make_synthetic_instances(str(instances), seed=seed)


def prepare_smoke_dino_assets(
    data_dir: str,
    clip_teacher: str,
    clip_model_name: str,
    sam_teacher: str,
    sam_model_name: str,
    dino_teacher: str,
    dino_model_name: str,
    seed: int = 0,
) -> None:
    """The smoke run's files plus a random tiny DINOv2 in the official dinov2 checkpoint format."""
    from samclip.models.dino_teacher import write_random_dino_checkpoint

    prepare_smoke_assets(data_dir, clip_teacher, clip_model_name, sam_teacher, sam_model_name, seed)
    if not Path(dino_teacher).is_file():
        log.info("smoke: writing a random %s DINOv2 teacher to %s", dino_model_name, dino_teacher)
        write_random_dino_checkpoint(dino_teacher, dino_model_name, seed=seed + 2, official_format=True)
