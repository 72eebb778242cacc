"""IGCV3 (interleaved low-rank group convolutions) and the MobileNetV2 baseline.

Both are the inverted-residual layout of MobileNetV2: stem 3x3/2 conv 32 + BN + ReLU6, stages of
(t, c, n, s) rows, head 1x1 conv 1280 + BN + ReLU6, global average pool, FC `fc`. A block is
1x1 expansion conv to in_c * t (g groups) + BN -> [permutation, g branches] -> 3x3 depthwise
(stride s in block 0) + BN + ReLU6 -> 1x1 linear conv to c (g groups) + BN -> identity add in
blocks 1..n-1. IGCV3: g = 2 with the permutation and MobileNetV2's block counts doubled except in
the first and last stage; MobileNetV2: g = 1, no permutation. Both keep the t=1 expansion conv as
the authors' code and released graph do; `mobilenetv2(t1_expansion=False)` is the standard one.

Width multiplier: every width (stem, each stage's c, the 1280 head) is scaled once and rounded
half-up to an even number, so the 2-group convs always divide; expansion widths are in_c * t of
the already-scaled in_c (the authors' code scales some widths twice).

CIFAR (32x32): the stem and the second stage use stride 1. `depth_multiplier` picks one of the
IGCV3-D block-count rows below (the README's 0.7x / 0.5x mean fewer blocks, not narrower).
"""
import mxnet as mx

from .layers import check_multiplier, classifier, round_width
from .options import DepthMultiplier, T1Expansion, WidthMultiplier
from .plan import InvertedStage, Stage, run_stages
from .registry import register_network

BN_EPS = 1e-5
# (t, c, n, s) rows.
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1))
IGCV3_STAGES = tuple((t, c, n if i in (0, 6) else 2 * n, s)
                     for i, (t, c, n, s) in enumerate(MOBILENETV2_STAGES))
# IGCV3-D on CIFAR: blocks per stage for each depth multiplier (chosen to hit the README's sizes).
IGCV3_CIFAR_BLOCKS = {
    1.0: tuple(n for _, _, n, _ in IGCV3_STAGES),
    0.7: (1, 3, 4, 6, 4, 4, 1),
    0.5: (1, 2, 3, 4, 3, 2, 1),
}
STEM_WIDTH, HEAD_WIDTH = 32, 1280
CIFAR_STRIDE_ONE_STAGE = 1


def inverted_residual_plan(stages, groups, width_multiplier, cifar):
    """Validated rows: stem, one per (t, c, n, s) stage with scaled widths, head."""
    m = check_multiplier("width_multiplier", width_multiplier)
    rows = [Stage(stage="stem", prefix="first-3x3-conv", blocks=1,
                  width=round_width(STEM_WIDTH, m), stride=1 if cifar else 2)]
    for i, (t, c, n, s) in enumerate(stages):
        if cifar and i == CIFAR_STRIDE_ONE_STAGE:
            s = 1
        rows.append(InvertedStage(stage=f"seq-{i}", prefix=f"seq-{i}-", blocks=n,
                                  width=round_width(c, m), stride=s, t=t, groups=groups))
    rows.append(Stage(stage="head", prefix="last-1x1-conv", blocks=1,
                      width=round_width(HEAD_WIDTH, m), stride=1))
    return rows


def igcv3_plan(width_multiplier):
    return inverted_residual_plan(IGCV3_STAGES, 2, width_multiplier, cifar=False)


def igcv3_cifar_blocks(depth_multiplier):
    check_multiplier("depth_multiplier", depth_multiplier)
    if float(depth_multiplier) not in IGCV3_CIFAR_BLOCKS:
        raise ValueError(f"igcv3_cifar depth_multiplier must be one of "
                         f"{sorted(IGCV3_CIFAR_BLOCKS)}, got {depth_multiplier!r}")
    return IGCV3_CIFAR_BLOCKS[float(depth_multiplier)]


def igcv3_cifar_plan(depth_multiplier, width_multiplier):
    blocks = igcv3_cifar_blocks(depth_multiplier)
    stages = tuple((t, c, n, s) for (t, c, _, s), n in zip(IGCV3_STAGES, blocks))
    return inverted_residual_plan(stages, 2, width_multiplier, cifar=True)


def mobilenetv2_plan(width_multiplier, t1_expansion):
    _check_t1(t1_expansion)
    return inverted_residual_plan(MOBILENETV2_STAGES, 1, width_multiplier, cifar=False)


def mobilenetv2_cifar_plan(width_multiplier, t1_expansion):
    _check_t1(t1_expansion)
    return inverted_residual_plan(MOBILENETV2_STAGES, 1, width_multiplier, cifar=True)


def _check_t1(t1_expansion):
    if not isinstance(t1_expansion, bool):
        raise ValueError(f"t1_expansion must be True or False, got {t1_expansion!r}")


def _block(ops, data, name, kin, kout, t, stride, groups, t1_expansion):
    hidden = kin * t
    out, permuted = data, 1
    if t != 1 or t1_expansion:
        out = ops.group_conv(out, f"{name}-exp-conv2d", hidden, 1, 1, groups)
        out = ops.batchnorm(out, f"{name}-exp-batchnorm", eps=BN_EPS)
        permuted = groups
    out = ops.conv_bn_act(out, f"{name}-depthwise-conv2d", f"{name}-depthwise-batchnorm",
                          f"{name}-depthwise-relu6", hidden, 3, stride, num_group=hidden,
                          act="relu6", eps=BN_EPS, permuted=permuted,
                          perm_name=f"{name}-permute")
    out = ops.group_conv(out, f"{name}-linear-conv2d", kout, 1, 1, groups)
    out = ops.batchnorm(out, f"{name}-linear-batchnorm", eps=BN_EPS)
    if stride == 1 and kin == kout:
        out = mx.sym.elemwise_add(data, out, name=f"{name}-shortcut")
    return out


def build_inverted_residual(num_classes, ops, plan, t1_expansion):
    """The graph for `plan`; the permutation follows a BatchNorm, so it cannot fuse into the
    convolution before it: with the native ops the depthwise conv after it reads its input
    planes in permuted order instead (`Ops.group_conv`)."""
    stem, *stages, head = plan
    data = ops.conv_bn_act(mx.sym.var("data"), "first-3x3-conv-conv2d",
                           "first-3x3-conv-batchnorm", "first-3x3-conv-relu6", stem.width, 3,
                           stem.stride, act="relu6", eps=BN_EPS)
    data, kin = run_stages(data, stages, stem.width, lambda data, row, b, kin, stride: _block(
        ops, data, f"{row.stage}-block{b}", kin, row.width, row.t, stride, row.groups,
        t1_expansion))
    data = ops.conv_bn_act(data, "last-1x1-conv-conv2d", "last-1x1-conv-batchnorm",
                           "last-1x1-conv-relu6", head.width, 1, act="relu6", eps=BN_EPS)
    return classifier(data, num_classes, fc_name="fc")


@register_network("igcv3", plan=igcv3_plan, dataset_kind="imagenet", family="igcv3",
                  description="IGCV3-D ImageNet (released graph at width 1.0)")
def igcv3(num_classes, ops, width_multiplier: WidthMultiplier = 1.0):
    return build_inverted_residual(num_classes, ops, igcv3_plan(width_multiplier), True)


@register_network("igcv3_cifar", plan=igcv3_cifar_plan, dataset_kind="cifar", family="igcv3",
                  description="IGCV3-D CIFAR; depth_multiplier 1.0/0.7/0.5 = fewer blocks")
def igcv3_cifar(num_classes, ops, depth_multiplier: DepthMultiplier = 1.0,
                width_multiplier: WidthMultiplier = 1.0):
    return build_inverted_residual(num_classes, ops,
                                   igcv3_cifar_plan(depth_multiplier, width_multiplier), True)


@register_network("mobilenetv2", plan=mobilenetv2_plan, dataset_kind="imagenet",
                  family="mobilenetv2",
                  description="MobileNetV2 ImageNet (authors' baseline; t1_expansion=False: "
                              "standard)")
def mobilenetv2(num_classes, ops, width_multiplier: WidthMultiplier = 1.0,
                t1_expansion: T1Expansion = True):
    return build_inverted_residual(num_classes, ops,
                                   mobilenetv2_plan(width_multiplier, t1_expansion), t1_expansion)


@register_network("mobilenetv2_cifar", plan=mobilenetv2_cifar_plan, dataset_kind="cifar",
                  family="mobilenetv2",
                  description="MobileNetV2 CIFAR (authors' baseline; t1_expansion=False: "
                              "standard)")
def mobilenetv2_cifar(num_classes, ops, width_multiplier: WidthMultiplier = 1.0,
                      t1_expansion: T1Expansion = True):
    return build_inverted_residual(num_classes, ops,
                                   mobilenetv2_cifar_plan(width_multiplier, t1_expansion),
                                   t1_expansion)
