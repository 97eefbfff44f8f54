"""A teacher the package does not know: added to a run by config alone (test_three_teachers.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from samclip.models.teachers import FrozenTeacher


class MeanColourTeacher(FrozenTeacher):
    """Embeds an image as its mean colour and the mean colour of each quadrant (15 numbers, known answers)."""

    model_name = "mean-colour"
    embed_dim = 15

    def __init__(self) -> None:
        super().__init__()
        self.freeze()

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        quadrants = F.adaptive_avg_pool2d(images, 2).flatten(1)
        return torch.cat([images.mean(dim=(2, 3)), quadrants], dim=1)
