"""IGCV2 (interleaved structured sparse convolutions): our design, documented here and in the
README, because the paper's exact layer configurations were not found.

Block (unit `g{s}_b{b}`, C_in -> C_out): the dense 3x3 conv is replaced by the product of three
structured sparse kernels W3 P2 W2 W1 (L = 3 group convolutions):
  conv1: 3x3 channel-wise conv on C_in (stride s)                  -- W1, C_in groups
  conv2: 1x1 group conv C_in -> C_out with G groups, then Reorder(G) -- W2, P2
  conv3: 1x1 group conv C_out -> C_out with C_out / G groups        -- W3
  -> BN -> ReLU (no BN/ReLU inside, as in the IGCV1 unit: the block is one dense conv)
Each conv3 group takes one channel of every conv2 group, so every output channel reaches every
input channel through exactly one path (the complementary condition); a permutation after the
channel-wise conv1 would only relabel single-channel branches, so there is none. G is the
divisor of gcd(C_in, C_out) closest to sqrt(C_in) (the balance condition: conv2 branches of
C_in / G channels, conv3 branches of G channels).

Layout: MobileNetV1's (stem 3x3/2 conv, stages of width c x n blocks, stride s in the first),
widened so that IGCV2-1.0 costs about the paper's 564M multiply-adds on ImageNet (MobileNetV1
widths x 3.5); `width_multiplier` 0.5 / 0.25 give the paper's smaller models' widths. CIFAR:
MobileNetV1 widths x 4 (about the 2.4M parameters reported for IGCV2 on CIFAR), stem and the
second stage at stride 1 so three down-samplings leave 4x4 maps.
"""
import math
from fractions import Fraction

import mxnet as mx

from .layers import check_multiplier, classifier, conv, round_width
from .options import WidthMultiplier
from .plan import IGCV2Stage, Stage, run_stages
from .registry import register_network

# Stem width, then (c, n, s) per stage.
IGCV2_IMAGENET = (112, ((224, 1, 1), (448, 2, 2), (896, 2, 2), (1792, 6, 2), (3584, 2, 2)))
IGCV2_CIFAR = (128, ((256, 1, 1), (512, 2, 1), (1024, 2, 2), (2048, 6, 2), (4096, 2, 2)))


def balanced_groups(kin, kout):
    """Groups G of conv2: the divisor of gcd(kin, kout) closest to sqrt(kin) (smaller on ties)."""
    common = math.gcd(kin, kout)
    divisors = [d for d in range(1, common + 1) if common % d == 0]
    # Distance to sqrt(kin) as the exact ratio between d*d and kin, so ties (d * d' = kin) are
    # exact and go to the smaller divisor.
    return min(divisors, key=lambda d: (Fraction(max(d * d, kin), min(d * d, kin)), d))


def _plan(table, width_multiplier, stem_stride):
    m = check_multiplier("width_multiplier", width_multiplier)
    stem, stages = table
    kin = round_width(stem, m)
    rows = [Stage(stage="g0", prefix="g0_", blocks=1, width=kin, stride=stem_stride)]
    for s, (c, n, stride) in enumerate(stages, start=1):
        kout = round_width(c, m)
        rows.append(IGCV2Stage(stage=f"g{s}", prefix=f"g{s}_", blocks=n, width=kout,
                               stride=stride, G=balanced_groups(kin, kout),
                               G_rest=balanced_groups(kout, kout)))
        kin = kout
    return rows


def igcv2_plan(width_multiplier):
    return _plan(IGCV2_IMAGENET, width_multiplier, 2)


def igcv2_cifar_plan(width_multiplier):
    return _plan(IGCV2_CIFAR, width_multiplier, 1)


def igcv2_unit(ops, data, name, kin, kout, stride, groups):
    data = conv(data, f"{name}_conv1", kin, 3, stride, num_group=kin)
    data = ops.conv_permute(data, f"{name}_conv2", f"{name}_reorder2", kout, 1, 1, groups)
    data = conv(data, f"{name}_conv3", kout, 1, num_group=kout // groups)
    return ops.unit_batchnorm(data, name)


def _build(num_classes, ops, plan):
    stem, *stages = plan
    data = ops.conv_bn_act(mx.sym.var("data"), "g0_conv", "g0_bn", "g0_relu", stem.width, 3,
                           stem.stride)
    data, _ = run_stages(data, stages, stem.width, lambda data, row, b, kin, stride: igcv2_unit(
        ops, data, f"{row.stage}_b{b + 1}", kin, row.width, stride, row.G_rest if b else row.G))
    return classifier(data, num_classes, fc_name="fc")


@register_network("igcv2", plan=igcv2_plan, dataset_kind="imagenet", family="igcv2",
                  description="IGCV2 ImageNet (our design; width_multiplier 1.0/0.5/0.25)")
def igcv2(num_classes, ops, width_multiplier: WidthMultiplier = 1.0):
    return _build(num_classes, ops, igcv2_plan(width_multiplier))


@register_network("igcv2_cifar", plan=igcv2_cifar_plan, dataset_kind="cifar", family="igcv2",
                  description="IGCV2 CIFAR (our design)")
def igcv2_cifar(num_classes, ops, width_multiplier: WidthMultiplier = 1.0):
    return _build(num_classes, ops, igcv2_cifar_plan(width_multiplier))
