"""Checkpoints in the official formats, written by the tests from randomly initialised reference models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.modeling import Sam

from samclip.models import get_model_config
from samclip.models.sam_checkpoint import build_official_sam


def _randomize_zero_init(sam: Sam, seed: int) -> Sam:
    """segment_anything zero-initialises pos_embed and rel-pos tables; give them values so tests see them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sam.image_encoder.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return sam.eval()


@pytest.fixture(scope="session")
def tiny_sam() -> Sam:
    torch.manual_seed(0)
    return _randomize_zero_init(build_official_sam(get_model_config("samclip_tiny")), seed=1)


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_sam: Sam) -> Path:
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(tiny_sam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def vit_b_sam_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised official SAM ViT-B in ``sam_vit_b_01ec64.pth`` layout (~375 MB)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = _randomize_zero_init(sam_model_registry["vit_b"](), seed=2)
    path = tmp_path_factory.mktemp("sam_vit_b") / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture
def image_with_shapes() -> np.ndarray:
    """An HxWx3 uint8 image (not square, so resize and padding matter) with a few bright shapes."""
    rng = np.random.default_rng(0)
    image = (rng.random((180, 240, 3)) * 60).astype(np.uint8)
    image[30:110, 40:150] = (220, 40, 40)
    yy, xx = np.mgrid[:180, :240]
    image[(yy - 120) ** 2 / 900 + (xx - 180) ** 2 / 1600 < 1] = (30, 200, 90)
    return image
