"""Conventional baselines the foundation model is compared with at a matched training budget.

* :func:`dynunet_2d`: MONAI's DynUNet configured nnU-Net-style for 2D slices (the segmentation
  and heatmap baseline).
* :class:`SmallCNN`: a compact residual CNN image encoder (the classification baseline), returning
  an embedding per image.
"""

from __future__ import annotations

import torch
from torch import nn

#: DynUNet filters per resolution level (nnU-Net 2D defaults, capped for CPU budgets).
DYNUNET_FILTERS = (32, 64, 128, 256, 320)


def dynunet_2d(out_channels: int, image_size: int, in_channels: int = 1) -> nn.Module:
    """A 2D DynUNet with as many stride-2 levels as ``image_size`` allows (down to 8 px), like nnU-Net."""
    levels = 1
    while image_size // 2**levels >= 8 and levels < len(DYNUNET_FILTERS) - 1:
        levels += 1
    from monai.networks.nets import DynUNet

    strides = [1] + [2] * (levels - 1)
    return DynUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[3] * levels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(DYNUNET_FILTERS[:levels]),
        norm_name=("INSTANCE", {"affine": True}),
        res_block=True,
    )


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.skip(x))


class SmallCNN(nn.Module):
    """A ResNet-10-like encoder: ``(B, C, H, W)`` -> ``(B, width * 8)`` embedding.

    Args:
        in_channels: Image channels.
        width: Channels of the first stage (doubled at each of four stages).
    """

    def __init__(self, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, 2, 2, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages = []
        c = width
        for i in range(4):
            out = width * 2**i
            stages.append(_ResBlock(c, out, 1 if i == 0 else 2))
            c = out
        self.stages = nn.Sequential(*stages)
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features ``(B, out_dim)``."""
        return self.stages(self.stem(x)).mean(dim=(-2, -1))
