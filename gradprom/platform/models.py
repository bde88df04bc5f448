"""Enhancers and recognizers by name, built from MONAI networks.

Enhancer E: a MONAI U-Net ("unet", residual units) or BasicUNet ("basicunet") predicting a residual, so
output = input + residual; for super-resolution the body runs at the low resolution and a sub-pixel head
upsamples its features onto a bilinear upsampling of the input. The last layer starts near zero, so E
starts close to the identity (or bilinear upsampling) and training departs from the degraded input.
Recognizer R: a small MONAI ResNet or DenseNet classifier, or a U-Net segmenter.
Inputs of any size work: the U-Nets pad to a multiple of their down-sampling factor and crop back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks.upsample import SubpixelUpsample
from monai.networks.nets.basic_unet import BasicUNet
from monai.networks.nets.densenet import DenseNet
from monai.networks.nets.resnet import ResNet
from monai.networks.nets.unet import UNet
from torch import Tensor, nn

ENHANCERS = ("unet", "basicunet")
RECOGNIZERS = ("resnet", "densenet", "unet")


class PadToMultiple(nn.Module):
    """Run `net` on an input padded (replicate) to a multiple of `multiple`, then crop the output back."""

    def __init__(self, net: nn.Module, multiple: int, out_scale: int = 1):
        super().__init__()
        self.net, self.multiple, self.out_scale = net, multiple, out_scale

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y = self.net(x)
        return y[..., : h * self.out_scale, : w * self.out_scale]


class ResidualEnhancer(nn.Module):
    """x -> up(x) + head(body(x)). The body (a U-Net) returns features; the head maps them to image channels
    (a 1x1 convolution, or a sub-pixel convolution that also upsamples for super-resolution). up is the
    identity, or bilinear upsampling when scale > 1."""

    def __init__(self, body: nn.Module, channels: int, features: int, scale: int = 1):
        super().__init__()
        self.body, self.scale = body, scale
        if scale > 1:
            self.head = SubpixelUpsample(2, features, channels, scale_factor=scale)
        else:
            self.head = nn.Conv2d(features, channels, kernel_size=1)
        _init_last_small(self.head)

    def forward(self, x: Tensor) -> Tensor:
        r = self.head(self.body(x))
        if self.scale == 1:
            return x + r
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return base + r[..., : base.shape[-2], : base.shape[-1]]


def _init_last_small(module: nn.Module, gain: float = 0.1) -> None:
    """Scale the last convolution down and zero its bias, so the residual starts small."""
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if convs:
        with torch.no_grad():
            convs[-1].weight.mul_(gain)
            if convs[-1].bias is not None:
                convs[-1].bias.zero_()


def _unet(in_ch: int, out_ch: int, channels: list[int], norm: str | tuple = "instance") -> nn.Module:
    depth = len(channels) - 1
    net = UNet(spatial_dims=2, in_channels=in_ch, out_channels=out_ch, channels=tuple(channels),
               strides=(2,) * depth, num_res_units=1, norm=norm)
    return PadToMultiple(net, 2 ** depth)


def _basicunet(in_ch: int, out_ch: int, channels: list[int]) -> nn.Module:
    feats = list(channels[:5]) + [channels[-1] * 2 ** i for i in range(1, 6 - len(channels[:5]))]
    net = BasicUNet(spatial_dims=2, in_channels=in_ch, out_channels=out_ch, features=tuple(feats[:5]) + (channels[0],))
    return PadToMultiple(net, 16)


def build_enhancer(name: str, channels: int, scale: int = 1, features: list[int] | None = None) -> nn.Module:
    """The enhancer `name` ("unet" | "basicunet") for `channels`-channel images, upsampling by `scale`."""
    features = features or [16, 32, 64]
    if name == "unet":
        body = _unet(channels, features[0], features)
    elif name == "basicunet":
        body = _basicunet(channels, features[0], features)
    else:
        raise ValueError(f"unknown enhancer {name!r}; choose one of {ENHANCERS}")
    return ResidualEnhancer(body, channels, features[0], scale=scale)


def build_recognizer(name: str, task: str, channels: int, num_outputs: int, features: list[int] | None = None,
                     norm: str = "batch") -> nn.Module:
    """The recognizer `name` for `task`: logits (B, K) for classification, (B, K, H, W) for segmentation."""
    features = features or [16, 32, 64]
    norm = ("instance", {"affine": True}) if norm == "instance" else norm  # MONAI's ResNet inits norm weights
    if task == "segmentation":
        if name != "unet":
            raise ValueError(f"recognizer {name!r} cannot segment; use 'unet'")
        return _unet(channels, num_outputs, features, norm=norm)
    if name == "resnet":
        planes = (list(features) + [features[-1]] * 4)[:4]  # MONAI's ResNet has exactly four stages
        return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=planes, spatial_dims=2,
                      n_input_channels=channels, conv1_t_size=3, conv1_t_stride=1, no_max_pool=True,
                      num_classes=num_outputs, norm=norm)
    if name == "densenet":
        return DenseNet(spatial_dims=2, in_channels=channels, out_channels=num_outputs, init_features=features[0],
                        growth_rate=max(8, features[0] // 2), block_config=(2,) * len(features), bn_size=2,
                        norm=norm)
    raise ValueError(f"unknown recognizer {name!r}; choose one of {RECOGNIZERS}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
