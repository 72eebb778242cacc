"""Residual networks of the IGCV1 paper: CIFAR `resnet` / `resnet_igc` and ImageNet ResNet-18
style `resnet_imgnet_d18` / `resnet_igc_imgnet_d18`.

A block is two units (3x3 conv or IGC unit, BN, ReLU after the first only) plus a shortcut
(identity, or a 1x1 projection + BN where width or resolution changes), add, ReLU.

CIFAR (32x32): 3x3 stem, three stages at C, 2C, 4C. Blocks per stage follow the authors' rule
n_i = (depth - e) // (2 * (3 - i)), e = 2 + 2 * (blocks so far). `resnet_igc` keeps the authors'
quirk: the first unit of each stage's first block uses kin / L secondary partitions (so does its
second Reorder), every other unit kout / L; the down-sampling shortcut is a 1x1 conv with L groups.

ImageNet (224x224): 7x7/2 stem + 3x3/2 max pool, four stages of two blocks, 1x1 stride-2
projections. The IGC variants are the released checkpoints' configurations (a table, below); a
(primary_partition, secondary_partition) pair that is not a released one gets the layout that
IGC-L4M32 and IGC-L16M16 share: stem C = L*M, widths C/2C/4C/8C, L fixed, M doubling per stage.
"""
from dataclasses import asdict
from typing import Annotated

import mxnet as mx

from .layers import activation, check_divides, check_positive_int, classifier
from .options import Depth, Option, PrimaryPartition, SecondaryPartition, Width
from .plan import IGCStage, Stage, run_stages
from .registry import register_network

# Released IGCV1 ImageNet graphs: stem width, then per stage (width, L, M).
IGC_IMAGENET_VARIANTS = {
    "igc_l4m32": (128, ((128, 4, 32), (256, 4, 64), (512, 4, 128), (1024, 4, 256))),
    "igc_l16m16": (256, ((256, 16, 16), (512, 16, 32), (1024, 16, 64), (2048, 16, 128))),
    "igc_l100m2": (100, ((200, 100, 2), (400, 200, 2), (800, 400, 2), (1600, 800, 2))),
}
DEFAULT_IGC_IMAGENET_VARIANT = "igc_l100m2"
IMAGENET_BLOCKS = (2, 2, 2, 2)
Variant = Annotated[str, Option(
    f"released IGCV1 ImageNet variant (default {DEFAULT_IGC_IMAGENET_VARIANT}, or the one that "
    "--primary-partition / --secondary-partition select)", tuple(IGC_IMAGENET_VARIANTS), "")]


def resnet_blocks_per_stage(depth):
    """The authors' block counts for a 3-stage CIFAR ResNet (depth 20 -> 3,3,3; 38 -> 6,6,6)."""
    check_positive_int("depth", depth)
    blocks, used = [], 2
    for i in range(3):
        n = (depth - used) // (2 * (3 - i))
        used += 2 * n
        blocks.append(n)
    if blocks[0] < 1 or used != depth:
        raise ValueError(f"depth {depth} is invalid for resnet and resnet_igc: depth - 2 must be "
                         "even and >= 6 "
                         f"(blocks per stage {blocks} would give depth {used})")
    return blocks


def _cifar_rows(depth, width):
    blocks = resnet_blocks_per_stage(depth)
    return [Stage(stage="g0", prefix="g0_", blocks=1, width=width, stride=1)] + [
        Stage(stage=f"g{s}", prefix=f"g{s}_", blocks=n, width=width << (s - 1),
              stride=1 if s == 1 else 2) for s, n in zip((1, 2, 3), blocks)]


def resnet_plan(depth, width):
    return _cifar_rows(depth, check_positive_int("width", width))


def resnet_igc_plan(depth, primary_partition, secondary_partition):
    L = check_positive_int("primary_partition", primary_partition)
    M = check_positive_int("secondary_partition", secondary_partition)
    stem, *stages = _cifar_rows(depth, L * M)
    return [stem] + [IGCStage(**asdict(row), L=L, M=row.width // L) for row in stages]


def resnet_imgnet_plan(width):
    check_positive_int("width", width)
    return [Stage(stage="g0", prefix="g0", blocks=1, width=width, stride=4)] + [
        Stage(stage=f"g{s}", prefix=f"g{s}_", blocks=n, width=width << (s - 1),
              stride=1 if s == 1 else 2) for s, n in zip((1, 2, 3, 4), IMAGENET_BLOCKS)]


def resolve_igc_imagenet_variant(variant, primary_partition, secondary_partition):
    """(name, stem, stages) for the requested variant and/or partitions; see the module doc."""
    partitions = (primary_partition, secondary_partition)
    if variant is not None:
        if variant not in IGC_IMAGENET_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid: {sorted(IGC_IMAGENET_VARIANTS)}")
        stem, stages = IGC_IMAGENET_VARIANTS[variant]
        if partitions != (None, None) and partitions != stages[0][1:]:
            raise ValueError(f"variant {variant!r} has primary/secondary partitions "
                             f"{stages[0][1:]}, not {partitions}")
        return variant, stem, stages
    if partitions == (None, None):
        return resolve_igc_imagenet_variant(DEFAULT_IGC_IMAGENET_VARIANT, None, None)
    if None in partitions:
        # The authors' CLI often names only one partition; it identifies a released variant.
        matches = [name for name, (_, stages) in IGC_IMAGENET_VARIANTS.items()
                   if all(p in (None, q) for p, q in zip(partitions, stages[0][1:]))]
        if len(matches) == 1:
            return resolve_igc_imagenet_variant(matches[0], None, None)
        known = ", ".join(f"{n}={v[1][0][1:]}" for n, v in IGC_IMAGENET_VARIANTS.items())
        raise ValueError("give both primary_partition and secondary_partition (or a variant): "
                         f"{partitions} matches no released variant ({known})")
    L = check_positive_int("primary_partition", primary_partition)
    M = check_positive_int("secondary_partition", secondary_partition)
    for name, (stem, stages) in IGC_IMAGENET_VARIANTS.items():
        if stages[0][1:] == (L, M):
            return name, stem, stages
    return f"igc_l{L}m{M}", L * M, tuple((L * M << s, L, M << s) for s in range(4))


def resnet_igc_imgnet_plan(variant, primary_partition, secondary_partition):
    _, stem, stages = resolve_igc_imagenet_variant(variant, primary_partition,
                                                   secondary_partition)
    rows, kin = [Stage(stage="g0", prefix="g0_", blocks=1, width=stem, stride=4)], stem
    for s, ((width, L, M), n) in enumerate(zip(stages, IMAGENET_BLOCKS), start=1):
        if L * M != width:
            raise ValueError(f"stage g{s}: L*M = {L}*{M} != width {width}")
        check_divides(f"stage g{s} primary partition L={L} vs input width", L, kin)
        rows.append(IGCStage(stage=f"g{s}", prefix=f"g{s}_", blocks=n, width=width,
                             stride=1 if s == 1 else 2, L=L, M=M))
        kin = width
    return rows


def _add_relu(shortcut, body, name):
    return activation(mx.sym.elemwise_add(shortcut, body, name=f"{name}_add"), f"{name}_relu",
                      "relu")


def _plain_block(ops, data, name, kin, kout, stride):
    """Two 3x3 conv-BN units; ResNet-18 baseline names (`g1_b1_conv1`, `g1_b1_conv1_bn`)."""
    shortcut = data
    if kin != kout or stride != 1:
        shortcut = ops.conv_bn_act(data, f"{name}_proj", f"{name}_proj_bn", None, kout, 1,
                                   stride)
    body = ops.conv_bn_act(data, f"{name}_conv1", f"{name}_conv1_bn", f"{name}_conv1_relu", kout,
                           3, stride)
    body = ops.conv_bn_act(body, f"{name}_conv2", f"{name}_conv2_bn", None, kout, 3)
    return _add_relu(shortcut, body, name)


def _igc_block(ops, data, name, kin, kout, stride, L, M_first, M_second):
    """Two IGC units; shortcut projection is a 1x1 conv with L groups (released names)."""
    shortcut = data
    if kin != kout or stride != 1:
        for what, total in (("input width", kin), ("output width", kout)):
            check_divides(f"{name} projection groups (primary partition) vs {what}", L, total)
        shortcut = ops.conv_bn_act(data, f"{name}_proj_conv", f"{name}_proj_bn", None, kout, 1,
                                   stride, num_group=L)
    body = ops.igc_unit(data, f"{name}_conv1", kout, 3, stride, L, M_first, relu=True)
    body = ops.igc_unit(body, f"{name}_conv2", kout, 3, 1, L, M_second, relu=False)
    return _add_relu(shortcut, body, name)


def _cifar_stem(ops, conv_name, width):
    return ops.conv_bn_act(mx.sym.var("data"), conv_name, "g0_bn", "g0_relu", width, 3)


def _imagenet_stem(ops, conv_name, width):
    data = ops.conv_bn_act(mx.sym.var("data"), conv_name, "g0_bn", "g0_relu", width, 7, 2)
    return mx.sym.Pooling(data, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max",
                          name="g0_pool")


def _build(num_classes, plan, stem, block):
    """stem(width), then block(data, name, kin, row, stride) for every block of every stage."""
    data, _ = run_stages(stem(plan[0].width), plan[1:], plan[0].width,
                         lambda data, row, b, kin, stride:
                         block(data, f"{row.stage}_b{b + 1}", kin, row, stride))
    return classifier(data, num_classes)


@register_network("resnet", plan=resnet_plan, dataset_kind="cifar", family="resnet",
                  description="CIFAR ResNet of basic blocks, widths W/2W/4W")
def resnet(num_classes, ops, depth: Depth = 20, width: Width = 16):
    return _build(num_classes, resnet_plan(depth, width),
                  lambda width: _cifar_stem(ops, "g0", width),
                  lambda data, name, kin, row, stride:
                  _plain_block(ops, data, name, kin, row.width, stride))


@register_network("resnet_igc", plan=resnet_igc_plan, dataset_kind="cifar", family="igcv1",
                  description="CIFAR ResNet of IGC units, C = L*M, L fixed")
def resnet_igc(num_classes, ops, depth: Depth = 20, primary_partition: PrimaryPartition = 24,
               secondary_partition: SecondaryPartition = 2):
    L = primary_partition
    return _build(num_classes, resnet_igc_plan(depth, primary_partition, secondary_partition),
                  lambda width: _cifar_stem(ops, "g0_conv", width),
                  lambda data, name, kin, row, stride:
                  _igc_block(ops, data, name, kin, row.width, stride, L, kin // L, row.width // L))


@register_network("resnet_imgnet_d18", plan=resnet_imgnet_plan, dataset_kind="imagenet",
                  family="resnet",
                  description="ResNet-18 (released C=64 and C=69 baselines via width)")
def resnet_imgnet_d18(num_classes, ops, width: Width = 64):
    return _build(num_classes, resnet_imgnet_plan(width),
                  lambda width: _imagenet_stem(ops, "g0", width),
                  lambda data, name, kin, row, stride:
                  _plain_block(ops, data, name, kin, row.width, stride))


@register_network("resnet_igc_imgnet_d18", plan=resnet_igc_imgnet_plan, dataset_kind="imagenet",
                  family="igcv1",
                  description="IGCV1 ResNet-18: released IGC-L4M32 / L16M16 / L100M2 (+Ident.)")
def resnet_igc_imgnet_d18(num_classes, ops, variant: Variant = None,
                          primary_partition: PrimaryPartition = None,
                          secondary_partition: SecondaryPartition = None):
    """variant: 'igc_l4m32', 'igc_l16m16' or 'igc_l100m2' (default when nothing is given), or
    pick one by its stage-1 (primary_partition, secondary_partition) as the authors' CLI does."""
    return _build(num_classes,
                  resnet_igc_imgnet_plan(variant, primary_partition, secondary_partition),
                  lambda width: _imagenet_stem(ops, "g0_conv", width),
                  lambda data, name, kin, row, stride:
                  _igc_block(ops, data, name, kin, row.width, stride, row.L, row.M, row.M))
