"""Layers shared by the peers."""
import torch
from torch import nn


def channel_shuffle(x, groups):
    """out[:, j*g + i] = x[:, i*(C/g) + j]: the project's `Reorder(g)` / `permute(g)`."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Shuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)


def conv(kin, kout, kernel, stride=1, groups=1):
    """Bias-free square convolution with 'same' padding, as network.layers.conv."""
    return nn.Conv2d(kin, kout, kernel, stride, kernel // 2, groups=groups, bias=False)


def batchnorm(channels, mxnet_momentum, eps):
    """MXNet's running mean keeps `momentum` of the old value; PyTorch's keeps 1 - momentum."""
    return nn.BatchNorm2d(channels, eps=eps, momentum=1.0 - mxnet_momentum)


class Classifier(nn.Module):
    """Global average pool -> flatten -> FC (logits; the loss applies the softmax)."""

    def __init__(self, channels, num_classes):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
