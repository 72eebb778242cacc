"""Plain (no shortcut) CIFAR/SVHN networks of the IGCV1 paper: `plain` and `plain_igc`.

Stem 3x3 conv-BN-ReLU, three stages of (depth - 2) / 3 layers at widths C, 2C, 4C (stride 2 in
the first layer of stages 2 and 3), global average pool, FC. `plain` uses regular 3x3 convs of
width W; `plain_igc` uses IGC units with C = L*M, L fixed and secondary partitions M, 2M, 4M.
BN momentum 0.99 as in the authors' code.
"""
from dataclasses import asdict

import mxnet as mx

from .layers import check_positive_int, classifier
from .options import Depth, PrimaryPartition, SecondaryPartition, Width
from .plan import IGCStage, Stage, run_stages
from .registry import register_network

BN_MOMENTUM = 0.99


def plain_layers_per_stage(depth):
    check_positive_int("depth", depth)
    if depth < 5 or (depth - 2) % 3:
        raise ValueError(f"depth {depth} is invalid for plain and plain_igc: depth - 2 must be "
                         "a positive multiple of 3 (e.g. 8, 20, 38, 62)")
    return (depth - 2) // 3


def plain_plan(depth, width):
    check_positive_int("width", width)
    layers = plain_layers_per_stage(depth)
    return [Stage(stage="g0", prefix="g0_", blocks=1, width=width, stride=1)] + [
        Stage(stage=f"g{s}", prefix=f"g{s}_", blocks=layers, width=width << (s - 1),
              stride=1 if s == 1 else 2) for s in (1, 2, 3)]


def plain_igc_plan(depth, primary_partition, secondary_partition):
    L = check_positive_int("primary_partition", primary_partition)
    M = check_positive_int("secondary_partition", secondary_partition)
    stem, *stages = plain_plan(depth, L * M)
    return [stem] + [IGCStage(**asdict(row), L=L, M=M * row.width // (L * M)) for row in stages]


def _build(ops, plan, num_classes, unit):
    data = ops.conv_bn_act(mx.sym.var("data"), "g0_conv", "g0_bn", "g0_relu", plan[0].width, 3,
                           momentum=BN_MOMENTUM)
    data, _ = run_stages(data, plan[1:], plan[0].width,
                         lambda data, row, b, kin, stride: unit(data, f"{row.stage}_b{b + 1}",
                                                                row, stride))
    return classifier(data, num_classes)


@register_network("plain", plan=plain_plan, dataset_kind="cifar", family="plain",
                  description="plain CIFAR net of 3x3 conv-BN-ReLU layers, widths W/2W/4W")
def plain(num_classes, ops, depth: Depth = 20, width: Width = 16):
    return _build(ops, plain_plan(depth, width), num_classes, lambda data, name, row, stride:
                  ops.conv_bn_act(data, f"{name}_conv", f"{name}_bn", f"{name}_relu", row.width,
                                  3, stride, momentum=BN_MOMENTUM))


@register_network("plain_igc", plan=plain_igc_plan, dataset_kind="cifar", family="igcv1",
                  description="plain CIFAR net of IGC units, C = L*M, secondary M/2M/4M")
def plain_igc(num_classes, ops, depth: Depth = 20, primary_partition: PrimaryPartition = 24,
              secondary_partition: SecondaryPartition = 2):
    return _build(ops, plain_igc_plan(depth, primary_partition, secondary_partition),
                  num_classes, lambda data, name, row, stride:
                  ops.igc_unit(data, name, row.width, 3, stride, row.L, row.M, relu=True,
                               momentum=BN_MOMENTUM))
