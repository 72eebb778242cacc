"""Building blocks shared by every family; the one place where layer names are turned into ops.

Names are a public API (released checkpoints load by name): callers pass the exact names from
SPEC.md's templates and these helpers never invent argument names of their own.
"""
import json

import mxnet as mx

PERMUTATIONS = ("reorder", "reshape")
CONV_IMPLS = ("auto", "mxnet", "igc")
# conv_impl='auto' fuses a group conv + permutation into IGCConv where IGCConv was measured
# faster than MXNet's oneDNN Convolution + Reorder (fwd+bwd, 1 thread, batch 8-64): 3x3 about 3x
# at 2 channels per group, even at 16, slower at 32; 1x1 (followed by BN) 1.06-1.30x at 4-24,
# slower at 100. Wider groups stay on Convolution. IGCV3's 1x1 group convs (no permutation
# after them, layers.group_conv) run on IGCConv at any width: its plain-NCHW output feeds the
# plugin's BatchNorm without a layout conversion. igcv3_cifar training step, batch 64, AMD EPYC
# Zen 4, width limit 24 vs none, 1 / 2 threads: AVX-512 2.13 / 1.32 s vs 1.85 / 1.17 s in one
# run and 1.96 / 1.30 s vs 2.04 / 1.20 s in another; AVX2 2.40 / 1.44 s vs 1.95 / 1.25 s.
# BatchNorm: under conv_impl='auto' (with the native permutation) and 'igc' every BatchNorm is the
# plugin's (layers.batchnorm(native=True)). oneDNN's BatchNorm runs its reference kernel whenever
# the layout its producer picked has no fast kernel (aBcd4b from 12-channel groups on AVX-512,
# 8b data with a 16b gradient, acdB16b from pooling), which no graph can rule out; on plain NCHW
# its fast path is missing too (ncsp_bnorm). Measured (docs/performance.md, AMD EPYC Zen 4, 1
# thread, 64x144x32x32 + ReLU6): plugin 11 ms forward / 20 ms backward, oneDNN on plain NCHW
# 78 / 82 ms; igcv3_cifar training step batch 64: 2.37 s (AVX-512) / 2.25 s (AVX2) vs 11.9 s /
# 3.37 s with MXNet's ops, PyTorch 2.13 3.14 s.
IGC_CONV_MAX_GROUP_WIDTH = {3: 8, 1: 24}
DEVICES = ("cpu", "gpu")
PLUGIN_OPS = ("Reorder", "IGCConv", "BatchNormMoments", "BatchNormApply", "IGCBlock")


def check_choice(key, value, choices):
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def check_positive_int(key, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def check_divides(what, divisor, total):
    if total % divisor:
        raise ValueError(f"{what}: {divisor} does not divide {total}")


def round_width(width, multiplier):
    """width * multiplier rounded half-up to an even number (at least 2)."""
    return max(2, 2 * int(width * multiplier / 2 + 0.5))


def check_multiplier(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def _native_op(op_name):
    """mx.sym.<op_name> from the IGC plugin, loading the plugin on first use."""
    if not hasattr(mx.sym, op_name):
        import utility
        try:
            utility.load_ops()
        except utility.OpsLibraryError as err:
            raise RuntimeError(f"{op_name} needs the IGC operator plugin ({err}); "
                               "permutation='reshape' builds a graph without it") from err
    if not hasattr(mx.sym, op_name):
        raise RuntimeError(f"the loaded IGC operator plugin has no {op_name} op")
    return getattr(mx.sym, op_name)


def runs_on(op_name, device):
    """Whether `op_name` has kernels (forward and backward) for `device`: the one place that
    decides which ops a graph built for a device may hold. Every stock MXNet op runs on both
    (mxnet-cu112 has GPU kernels for all that the builders use); a plugin op runs where the
    plugin registers it, read from the library: IGCConv on the CPU only, Reorder on the GPU too
    when the plugin was built with nvcc; a forward-only op (BatchNormMoments, the inference op
    IGCBlock) where its forward is registered."""
    check_choice("device", device, DEVICES)
    if op_name not in PLUGIN_OPS:
        return True
    import utility
    try:
        return device in utility.plugin_op_devices().get(op_name, ())
    except utility.OpsLibraryError:
        return False


def conv_impl_for(conv_impl, device):
    """The conv_impl a graph for `device` is built with. IGCConv is the one op that conv_impl
    can choose and a device can lack: there 'auto' takes Convolution + Reorder (the same weight
    names and shapes, so checkpoints interchange) and 'igc' is an error."""
    check_choice("conv_impl", conv_impl, CONV_IMPLS)
    if conv_impl == "mxnet" or device == "cpu" or runs_on("IGCConv", device):
        return conv_impl  # the plugin has CPU kernels for every op
    if conv_impl == "igc":
        raise ValueError(f"conv_impl 'igc': IGCConv has no {device} kernel (CPU only); "
                         "'auto' or 'mxnet' build the same weights with Convolution + Reorder")
    return "mxnet"


def check_runs_on(symbol, device):
    """ValueError naming the ops of `symbol` that have no kernel for `device`."""
    ops = {node["op"] for node in json.loads(symbol.tojson())["nodes"]}
    missing = sorted(op for op in ops if op != "null" and not runs_on(op, device))
    if missing:
        raise ValueError(f"the graph needs {', '.join(missing)} on the {device}, and the loaded "
                         f"IGC plugin has no {device} kernel for it (rebuild it with `make ops "
                         "IGC_CUDA=ON` where nvcc is on PATH, or use permutation 'reshape')")


def permute(data, groups, name, permutation):
    """Channel permutation with `groups` branches: out[:, j*g + i] = in[:, i*(C/g) + j].

    'reorder' is the native op (one node named `name`); 'reshape' is the same permutation as
    reshape (N, g, C/g, ...) -> swap axes 1, 2 -> reshape (N, C, ...), which needs no plugin.
    """
    if permutation == "reorder":
        return _native_op("Reorder")(data, branch_factor=groups, name=name)
    check_choice("permutation", permutation, PERMUTATIONS)
    data = mx.sym.reshape(data, shape=(0, -4, groups, -1, -2), name=f"{name}_split")
    data = mx.sym.swapaxes(data, dim1=1, dim2=2, name=f"{name}_swap")
    return mx.sym.reshape(data, shape=(0, -3, -2), name=f"{name}_merge")


def conv(data, name, num_filter, kernel, stride=1, num_group=1, pad=None):
    """Bias-free square convolution with 'same' padding unless `pad` is given."""
    pad = kernel // 2 if pad is None else pad
    return mx.sym.Convolution(data, num_filter=num_filter, kernel=(kernel, kernel),
                              stride=(stride, stride), pad=(pad, pad), num_group=num_group,
                              no_bias=True, name=name)


def group_conv_permute(data, name, perm_name, num_filter, kernel, stride, groups, permutation,
                       conv_impl):
    """A group convolution followed by the permutation with `groups` branches (IGC's conv1 +
    Reorder(L) and conv2 + Reorder(M)).

    conv_impl='mxnet': Convolution `name` then permute(`perm_name`). conv_impl='igc': one fused
    IGCConv node named `name` whose weight `{name}_weight` has the Convolution's name and shape,
    so checkpoints interchange between the two. conv_impl='auto': 'igc' when the native
    permutation is used anyway and the groups are narrow (see IGC_CONV_MAX_GROUP_WIDTH).
    """
    check_choice("conv_impl", conv_impl, CONV_IMPLS)
    if conv_impl == "auto":
        narrow = num_filter // groups <= IGC_CONV_MAX_GROUP_WIDTH.get(kernel, 0)
        conv_impl = "igc" if permutation == "reorder" and narrow else "mxnet"
    if conv_impl == "mxnet":
        data = conv(data, name, num_filter, kernel, stride, num_group=groups)
        return permute(data, groups, perm_name, permutation)
    weight = mx.sym.var(f"{name}_weight")
    pad = kernel // 2
    return _native_op("IGCConv")(data, weight, num_filter=num_filter, kernel=(kernel, kernel),
                                 stride=(stride, stride), pad=(pad, pad), num_group=groups,
                                 no_bias=True, interleave=True, name=name)


def use_native_ops(conv_impl, permutation):
    """Whether the plugin's BatchNorm kernels replace MXNet's: 'igc' always, 'auto' when the
    graph needs the plugin anyway (the native permutation); 'mxnet' never."""
    check_choice("conv_impl", conv_impl, CONV_IMPLS)
    return conv_impl == "igc" or (conv_impl == "auto" and permutation == "reorder")


def group_conv(data, name, num_filter, kernel, stride, groups, conv_impl, permutation):
    """A group convolution `name` with no permutation after it: IGCConv (interleave=False, same
    weight name and shape) where use_native_ops says so and the kernel is 1x1 or the groups are
    narrow enough (IGC_CONV_MAX_GROUP_WIDTH), else MXNet's Convolution."""
    narrow = kernel == 1 or num_filter // groups <= IGC_CONV_MAX_GROUP_WIDTH.get(kernel, 0)
    if groups == 1 or not (use_native_ops(conv_impl, permutation) and narrow):
        return conv(data, name, num_filter, kernel, stride, num_group=groups)
    pad = kernel // 2
    return _native_op("IGCConv")(data, mx.sym.var(f"{name}_weight"), num_filter=num_filter,
                                 kernel=(kernel, kernel), stride=(stride, stride), pad=(pad, pad),
                                 num_group=groups, no_bias=True, interleave=False, name=name)


def batchnorm(data, name, momentum=0.9, eps=2e-5, act=None, act_name=None, native=False):
    """BatchNorm `name` (fix_gamma=False) [-> activation `act_name`].

    native=False: MXNet's BatchNorm (oneDNN on the CPU) then `activation`. native=True: the
    plugin's plain-NCHW kernels with the activation fused, around a BatchNorm node `name` that
    MXNet runs on a (2, C, 1, 1) summary of the batch, so that the running statistics, their
    names (`name`_gamma, _beta, _moving_mean, _moving_var) and the train/inference switch stay
    MXNet's: BatchNormMoments(data) -> [mean - std, mean + std] -> BatchNorm(output_mean_var)
    -> (mean, 1/sqrt(var + eps)) -> BatchNormApply(data, gamma, beta, mean, invstd, act).
    The same function, without oneDNN's BatchNorm, whose reference kernel runs whenever its
    input arrives in a blocked layout it has no fast kernel for (see NATIVE_BATCHNORM).
    """
    if not native:
        data = mx.sym.BatchNorm(data, fix_gamma=False, momentum=momentum, eps=eps, name=name)
        return data if act is None else activation(data, act_name, act)
    if act not in (None, "relu", "relu6"):
        raise ValueError(f"unknown activation {act!r}")
    gamma, beta = mx.sym.var(f"{name}_gamma"), mx.sym.var(f"{name}_beta")
    moments = _native_op("BatchNormMoments")(data, name=f"{name}_moments")
    # The statistics carry no gradient: BatchNormApply's backward is the full BatchNorm one.
    moments = mx.sym.BlockGrad(moments, name=f"{name}_moments_stop")
    stats = mx.sym.BatchNorm(moments, gamma=gamma, beta=beta,
                             moving_mean=mx.sym.var(f"{name}_moving_mean"),
                             moving_var=mx.sym.var(f"{name}_moving_var"), fix_gamma=False,
                             momentum=momentum, eps=eps, output_mean_var=True, name=name)
    return _native_op("BatchNormApply")(data, gamma, beta, stats[1], stats[2], act=act or "none",
                                        name=act_name or f"{name}_apply")


def activation(data, name, act):
    if act == "relu":
        return mx.sym.Activation(data, act_type="relu", name=name)
    if act == "relu6":
        return mx.sym.clip(data, a_min=0, a_max=6, name=name)
    raise ValueError(f"unknown activation {act!r}")


def conv_bn_act(data, conv_name, bn_name, act_name, num_filter, kernel, stride=1, num_group=1,
                act="relu", momentum=0.9, eps=2e-5, native_bn=False):
    """Conv -> BN [-> activation]; act_name=None leaves the activation out."""
    data = conv(data, conv_name, num_filter, kernel, stride, num_group)
    return batchnorm(data, bn_name, momentum, eps, None if act_name is None else act, act_name,
                     native_bn)


def igc_unit(data, name, num_filter, kernel, stride, primary, secondary, relu, permutation,
             conv_impl, momentum=0.9, eps=2e-5):
    """IGCV1 unit: conv1 (k x k, L groups) -> Reorder(L) -> conv2 (1x1, M groups) -> Reorder(M)
    -> BN [-> ReLU]. No BN/ReLU between the two group convs: together they are one dense conv
    with a structured-sparse kernel."""
    data = group_conv_permute(data, f"{name}_conv1", f"{name}_reorder1", num_filter, kernel,
                              stride, primary, permutation, conv_impl)
    data = group_conv_permute(data, f"{name}_conv2", f"{name}_reorder2", num_filter, 1, 1,
                              secondary, permutation, conv_impl)
    return igc_batchnorm_relu(data, name, relu, momentum, eps,
                              use_native_ops(conv_impl, permutation))


def igc_batchnorm_relu(data, name, relu=True, momentum=0.9, eps=2e-5, native_bn=False):
    """The single BN [+ ReLU] closing an IGC unit: `{name}_bn`, `{name}_relu`."""
    return batchnorm(data, f"{name}_bn", momentum, eps, "relu" if relu else None,
                     f"{name}_relu" if relu else None, native_bn)


def classifier(data, num_classes, fc_name="fc_score"):
    """Global average pool -> flatten -> FC -> SoftmaxOutput('softmax').

    A global pool equals the authors' fixed 8x8 / 7x7 pool at the nominal input size and keeps
    the nets usable at other sizes.
    """
    data = mx.sym.Pooling(data, kernel=(1, 1), pool_type="avg", global_pool=True,
                          name="global_pool")
    data = mx.sym.Flatten(data, name="flatten")
    data = mx.sym.FullyConnected(data, num_hidden=num_classes, name=fc_name)
    return mx.sym.SoftmaxOutput(data, name="softmax")
