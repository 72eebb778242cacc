"""IGCV1 peers: CIFAR `plain_igc` and `resnet_igc`, ImageNet `resnet_igc_imgnet_d18`
(network/plain.py, network/resnet.py)."""
from torch import nn

from .common import Classifier, Shuffle, batchnorm, conv

BN_EPS = 2e-5


class IGCUnit(nn.Sequential):
    """conv1 (k x k, L groups) -> shuffle(L) -> conv2 (1x1, M groups) -> shuffle(M) -> BN
    [-> ReLU]; no BN/ReLU between the two group convs."""

    def __init__(self, kin, kout, stride, primary, secondary, relu, bn_momentum):
        layers = [conv(kin, kout, 3, stride, primary), Shuffle(primary),
                  conv(kout, kout, 1, 1, secondary), Shuffle(secondary),
                  batchnorm(kout, bn_momentum, BN_EPS)]
        super().__init__(*layers, *([nn.ReLU(inplace=True)] if relu else []))


def stem(width, bn_momentum):
    return nn.Sequential(conv(3, width, 3), batchnorm(width, bn_momentum, BN_EPS),
                         nn.ReLU(inplace=True))


class PlainIGC(nn.Module):
    """Stem, then (depth - 2) / 3 IGC units per stage (BN momentum 0.99)."""
    BN_MOMENTUM = 0.99

    def __init__(self, plan, num_classes):
        super().__init__()
        stem_row, *stages = plan
        kin = stem_row.width
        layers = [stem(kin, self.BN_MOMENTUM)]
        for row in stages:
            for b in range(row.blocks):
                layers.append(IGCUnit(kin, row.width, row.stride if b == 0 else 1,
                                      row.L, row.M, True, self.BN_MOMENTUM))
                kin = row.width
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(kin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class IGCBlock(nn.Module):
    """Two IGC units + shortcut (1x1 conv with L groups + BN where the shape changes), add, ReLU.
    CIFAR: the first unit's secondary partition is kin / L, the second's kout / L (the authors'
    quirk); ImageNet: both are the stage's M (`secondaries`)."""
    BN_MOMENTUM = 0.9

    def __init__(self, kin, kout, stride, primary, secondaries=None):
        super().__init__()
        # Registered before the body: the MXNet graph lists the projection's arguments first.
        self.shortcut = None
        if kin != kout or stride != 1:
            self.shortcut = nn.Sequential(conv(kin, kout, 1, stride, primary),
                                          batchnorm(kout, self.BN_MOMENTUM, BN_EPS))
        first, second = secondaries or (kin // primary, kout // primary)
        self.body = nn.Sequential(
            IGCUnit(kin, kout, stride, primary, first, True, self.BN_MOMENTUM),
            IGCUnit(kout, kout, 1, primary, second, False, self.BN_MOMENTUM))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + shortcut)


class ResNetIGC(nn.Module):
    def __init__(self, plan, num_classes):
        super().__init__()
        stem_row, *stages = plan
        kin = stem_row.width
        primary = stages[0].L
        layers = [stem(kin, IGCBlock.BN_MOMENTUM)]
        for row in stages:
            for b in range(row.blocks):
                layers.append(IGCBlock(kin, row.width, row.stride if b == 0 else 1,
                                       primary))
                kin = row.width
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(kin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class ResNetIGCImageNet(nn.Module):
    """7x7/2 stem + BN + ReLU + 3x3/2 max pool, then two IGC blocks per stage with the stage's
    own (L, M) (the released IGC-L4M32 / L16M16 / L100M2 layouts)."""

    def __init__(self, plan, num_classes):
        super().__init__()
        stem_row, *stages = plan
        kin = stem_row.width
        layers = [nn.Sequential(conv(3, kin, 7, 2),
                                batchnorm(kin, IGCBlock.BN_MOMENTUM, BN_EPS),
                                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))]
        for row in stages:
            for b in range(row.blocks):
                layers.append(IGCBlock(kin, row.width, row.stride if b == 0 else 1, row.L,
                                       (row.M, row.M)))
                kin = row.width
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(kin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
