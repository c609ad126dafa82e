"""Res16UNet34C sparse-convolution backbone of Mask3D, on MinkowskiEngine.

Structure and module names follow the official Mask3D code (models/res16unet.py,
models/resnet.py, models/modules/resnet_block.py, models/modules/common.py of
JonasSchult/Mask3D), because the checkpoint's state_dict keys are those names. All kernels
are plain hyper-cubes: the official ``conv()`` passes ``axis_types=None`` and every conv type
used here maps to ``RegionType.HYPER_CUBE``, which is MinkowskiEngine's default kernel.
"""
from __future__ import annotations

from torch import nn

from .compat import import_minkowski

ME = import_minkowski()

# Res16UNet34C (official class hierarchy Res16UNetBase -> Res16UNet34 -> Res16UNet34C).
PLANES = (32, 64, 128, 256, 256, 128, 96, 96)
LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
INIT_DIM = 32


def _conv(c_in: int, c_out: int, kernel_size: int, stride: int = 1, bias: bool = False):
    return ME.MinkowskiConvolution(c_in, c_out, kernel_size=kernel_size, stride=stride,
                                   dilation=1, bias=bias, dimension=3)


def _conv_tr(c_in: int, c_out: int):
    return ME.MinkowskiConvolutionTranspose(c_in, c_out, kernel_size=2, stride=2, dilation=1,
                                            bias=False, dimension=3)


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with batch norm and a residual (optionally projected)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None,
                 bn_momentum: float = 0.1):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3)
        self.norm1 = ME.MinkowskiBatchNorm(planes, momentum=bn_momentum)
        self.conv2 = _conv(planes, planes, 3)
        self.norm2 = ME.MinkowskiBatchNorm(planes, momentum=bn_momentum)
        self.relu = ME.MinkowskiReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out += residual
        return self.relu(out)


class Res16UNet34C(nn.Module):
    """U-Net with 4 strided stages and 4 transposed stages; returns (features, feature maps).

    ``feature_maps`` are the decoder outputs at tensor strides 16, 8, 4, 2, 1 (coarse to fine),
    which Mask3D's transformer decoder attends to (official ``out_fpn=True``).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 200,
                 conv1_kernel_size: int = 5, bn_momentum: float = 0.02):
        super().__init__()
        self.PLANES = PLANES
        self.inplanes = INIT_DIM

        def bn(c):
            return ME.MinkowskiBatchNorm(c, momentum=bn_momentum)

        self.conv0p1s1 = _conv(in_channels, INIT_DIM, conv1_kernel_size)
        self.bn0 = bn(INIT_DIM)
        self.conv1p1s2 = _conv(INIT_DIM, INIT_DIM, 2, stride=2)
        self.bn1 = bn(INIT_DIM)
        self.block1 = self._make_layer(PLANES[0], LAYERS[0], bn_momentum)
        self.conv2p2s2 = _conv(self.inplanes, self.inplanes, 2, stride=2)
        self.bn2 = bn(self.inplanes)
        self.block2 = self._make_layer(PLANES[1], LAYERS[1], bn_momentum)
        self.conv3p4s2 = _conv(self.inplanes, self.inplanes, 2, stride=2)
        self.bn3 = bn(self.inplanes)
        self.block3 = self._make_layer(PLANES[2], LAYERS[2], bn_momentum)
        self.conv4p8s2 = _conv(self.inplanes, self.inplanes, 2, stride=2)
        self.bn4 = bn(self.inplanes)
        self.block4 = self._make_layer(PLANES[3], LAYERS[3], bn_momentum)

        self.convtr4p16s2 = _conv_tr(self.inplanes, PLANES[4])
        self.bntr4 = bn(PLANES[4])
        self.inplanes = PLANES[4] + PLANES[2]
        self.block5 = self._make_layer(PLANES[4], LAYERS[4], bn_momentum)
        self.convtr5p8s2 = _conv_tr(self.inplanes, PLANES[5])
        self.bntr5 = bn(PLANES[5])
        self.inplanes = PLANES[5] + PLANES[1]
        self.block6 = self._make_layer(PLANES[5], LAYERS[5], bn_momentum)
        self.convtr6p4s2 = _conv_tr(self.inplanes, PLANES[6])
        self.bntr6 = bn(PLANES[6])
        self.inplanes = PLANES[6] + PLANES[0]
        self.block7 = self._make_layer(PLANES[6], LAYERS[6], bn_momentum)
        self.convtr7p2s2 = _conv_tr(self.inplanes, PLANES[7])
        self.bntr7 = bn(PLANES[7])
        self.inplanes = PLANES[7] + INIT_DIM
        self.block8 = self._make_layer(PLANES[7], LAYERS[7], bn_momentum)

        # Semantic head of the backbone: unused by Mask3D's forward but part of the checkpoint.
        self.final = _conv(PLANES[7], out_channels, 1, bias=True)
        self.relu = ME.MinkowskiReLU(inplace=True)

    def _make_layer(self, planes: int, blocks: int, bn_momentum: float) -> nn.Sequential:
        downsample = None
        if self.inplanes != planes * BasicBlock.expansion:
            # 1x1x1 projection; the official _make_layer passes bn_momentum only here
            downsample = nn.Sequential(
                _conv(self.inplanes, planes, 1),
                ME.MinkowskiBatchNorm(planes, momentum=bn_momentum))
        layers = [BasicBlock(self.inplanes, planes, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        relu = self.relu
        out_p1 = relu(self.bn0(self.conv0p1s1(x)))
        out_b1p2 = self.block1(relu(self.bn1(self.conv1p1s2(out_p1))))
        out_b2p4 = self.block2(relu(self.bn2(self.conv2p2s2(out_b1p2))))
        out_b3p8 = self.block3(relu(self.bn3(self.conv3p4s2(out_b2p4))))
        out = self.block4(relu(self.bn4(self.conv4p8s2(out_b3p8))))
        feature_maps = [out]
        out = relu(self.bntr4(self.convtr4p16s2(out)))
        out = self.block5(ME.cat(out, out_b3p8))
        feature_maps.append(out)
        out = relu(self.bntr5(self.convtr5p8s2(out)))
        out = self.block6(ME.cat(out, out_b2p4))
        feature_maps.append(out)
        out = relu(self.bntr6(self.convtr6p4s2(out)))
        out = self.block7(ME.cat(out, out_b1p2))
        feature_maps.append(out)
        out = relu(self.bntr7(self.convtr7p2s2(out)))
        out = self.block8(ME.cat(out, out_p1))
        feature_maps.append(out)
        return out, feature_maps
