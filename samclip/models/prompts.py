"""Geometric prompts for the SAM head, shared by the data pipeline, the student and the SAM teacher."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class SamPrompts:
    """Prompts for N masks of one image, in the model's input frame (pixels of the resized, padded image).

    Every prompt of a group has the same kind (box, or the same number of points), because SAM's
    prompt encoder embeds a group into one token sequence. An image may have several groups.
    """

    image_index: int
    boxes: torch.Tensor | None = None  # [N, 4] xyxy
    point_coords: torch.Tensor | None = None  # [N, P, 2] xy
    point_labels: torch.Tensor | None = None  # [N, P]; 1 foreground, 0 background
    mask_inputs: torch.Tensor | None = None  # [N, 1, 256, 256] low-resolution mask logits

    def __post_init__(self) -> None:
        if (self.point_coords is None) != (self.point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if self.boxes is None and self.point_coords is None and self.mask_inputs is None:
            raise ValueError("a prompt group needs boxes, points or mask inputs")
        counts = {t.shape[0] for t in (self.boxes, self.point_coords, self.mask_inputs) if t is not None}
        if len(counts) != 1:
            raise ValueError(f"prompt tensors disagree on the number of prompts: {sorted(counts)}")

    @property
    def num_prompts(self) -> int:
        for tensor in (self.boxes, self.point_coords, self.mask_inputs):
            if tensor is not None:
                return tensor.shape[0]
        raise AssertionError("unreachable: validated in __post_init__")

    def to(self, device: torch.device | str) -> SamPrompts:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return replace(
            self,
            boxes=move(self.boxes),
            point_coords=move(self.point_coords),
            point_labels=move(self.point_labels),
            mask_inputs=move(self.mask_inputs),
        )
