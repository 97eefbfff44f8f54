"""Segmentation heads for head probing (Table 3): linear, DeepLabv3 (torchvision's) and PSPNet's pyramid pooling.

Each maps frozen backbone features [B, C, h, w] to class logits [B, num_classes, h, w]; the caller upsamples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

HEADS = ("linear", "deeplabv3", "pspnet")

# DeepLabv3's rates for output stride 16 (the ViT's patch grid); torchvision's default (12, 24, 36) is for
# stride 8 and would dilate past a 32x32 feature map.
DEEPLAB_RATES_STRIDE_16 = (6, 12, 18)


class LinearHead(nn.Sequential):
    """BatchNorm then a 1x1 convolution (DINOv2's linear segmentation probe).

    The BatchNorm is an affine map at inference, so the head stays linear; it puts token features of any
    scale (raw ViT tokens, the LayerNorm'd neck, another backbone) on one footing for a single learning rate.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, num_classes, 1))


class PyramidPoolingHead(nn.Module):
    """PSPNet's head (Zhao et al. 2017): pyramid pooling at ``bins``, concatenation, 3x3 fusion, classifier.

    Written here because torchvision has no PSPNet; the layout follows mmsegmentation's ``PSPHead``
    (pool scales 1, 2, 3, 6; conv-BN-ReLU branches; a 3x3 bottleneck), with 256 channels like DeepLabHead.
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, bins: Sequence[int] = (1, 2, 3, 6)
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(bin_size), _conv_bn_relu(in_channels, channels, 1))
            for bin_size in bins
        )
        self.bottleneck = _conv_bn_relu(in_channels + len(bins) * channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        size = features.shape[-2:]
        pooled = [
            F.interpolate(branch(features), size=size, mode="bilinear", align_corners=False)
            for branch in self.branches
        ]
        return self.classifier(self.bottleneck(torch.cat([features, *pooled], dim=1)))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def build_head(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """One of ``HEADS`` on ``in_channels`` features."""
    if name == "linear":
        return LinearHead(in_channels, num_classes)
    if name == "deeplabv3":
        return DeepLabHead(in_channels, num_classes, atrous_rates=DEEPLAB_RATES_STRIDE_16)
    if name == "pspnet":
        return PyramidPoolingHead(in_channels, num_classes)
    raise ValueError(f"unknown segmentation head {name!r}; use one of {HEADS}")
