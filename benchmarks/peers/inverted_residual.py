"""Inverted-residual peers: `igcv3`, `igcv3_cifar`, `mobilenetv2`, `mobilenetv2_cifar`
(network/igcv3.py). The plan rows carry the widths, strides, block counts and groups."""
from torch import nn

from .common import Classifier, Shuffle, batchnorm, conv

BN_EPS = 1e-5
BN_MOMENTUM = 0.9


def conv_bn(kin, kout, kernel, stride=1, groups=1, relu6=False):
    layers = [conv(kin, kout, kernel, stride, groups), batchnorm(kout, BN_MOMENTUM, BN_EPS)]
    return layers + ([nn.ReLU6(inplace=True)] if relu6 else [])


class Block(nn.Module):
    """1x1 expansion conv (g groups) + BN -> [shuffle(g)] -> 3x3 depthwise + BN + ReLU6 -> 1x1
    linear conv (g groups) + BN -> identity add when the shape is kept."""

    def __init__(self, kin, kout, t, stride, groups, t1_expansion):
        super().__init__()
        hidden = kin * t
        layers = []
        if t != 1 or t1_expansion:
            layers += conv_bn(kin, hidden, 1, groups=groups)
            if groups > 1:
                layers.append(Shuffle(groups))
        layers += conv_bn(hidden, hidden, 3, stride, hidden, relu6=True)
        layers += conv_bn(hidden, kout, 1, groups=groups)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and kin == kout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class InvertedResidualNet(nn.Module):
    def __init__(self, plan, num_classes, t1_expansion):
        super().__init__()
        stem, *stages, head = plan
        kin = stem.width
        layers = conv_bn(3, kin, 3, stem.stride, relu6=True)
        for row in stages:
            for j in range(row.blocks):
                layers.append(Block(kin, row.width, row.t, row.stride if j == 0 else 1,
                                    row.groups, t1_expansion))
                kin = row.width
        layers += conv_bn(kin, head.width, 1, relu6=True)
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(head.width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
