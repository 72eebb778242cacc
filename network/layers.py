"""Building blocks shared by every family; the one place where layer names are turned into ops.

Names are a public API (released checkpoints load by name): callers pass the exact names of the
authors' released graphs (hellozting/InterleavedGroupConvolutions, homles11/IGCV3) and these
helpers never invent argument names of their own. Which permutation, convolutions and BatchNorm
a graph uses is chosen once, by `resolve_ops`, and handed to the builders as an `Ops`.
"""
import json
from dataclasses import dataclass

import mxnet as mx

PERMUTATIONS = ("reorder", "reshape")
CONV_IMPLS = ("auto", "mxnet", "igc")
# conv_impl='auto' fuses a group conv + permutation into IGCConv where IGCConv beats oneDNN's
# Convolution + Reorder in training (docs/igc_conv.md): a 3x3 conv with groups this narrow, and
# every 1x1 conv (its passes are GEMMs).
IGC_CONV_MAX_GROUP_WIDTH = {3: 8}
DEVICES = ("cpu", "gpu")
PLUGIN_OPS = ("Reorder", "IGCConv", "BatchNormMoments", "BatchNormApply", "IGCBlock",
              "GlobalAvgPool", "IGCSGDMomUpdate")  # (the last is the optimizer's, never in a graph)


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
    data = mx.sym.reshape(data, shape=(0, -4, groups, -1, -2), name=f"{name}_split")
    data = mx.sym.swapaxes(data, dim1=1, dim2=2, name=f"{name}_swap")
    return mx.sym.reshape(data, shape=(0, -3, -2), name=f"{name}_merge")


def conv(data, name, num_filter, kernel, stride=1, num_group=1, pad=None):
    """Bias-free square convolution with 'same' padding unless `pad` is given."""
    pad = kernel // 2 if pad is None else pad
    return mx.sym.Convolution(data, num_filter=num_filter, kernel=(kernel, kernel),
                              stride=(stride, stride), pad=(pad, pad), num_group=num_group,
                              no_bias=True, name=name)


def batchnorm(data, name, momentum=0.9, eps=2e-5, act=None, act_name=None, native=False):
    """BatchNorm `name` (fix_gamma=False) [-> activation `act_name`].

    native=False: MXNet's BatchNorm (oneDNN on the CPU) then `activation`. native=True: the
    plugin's plain-NCHW kernels with the activation fused, around a BatchNorm node `name` that
    MXNet runs on a (2, C, 1, 1) summary of the batch, so that the running statistics, their
    names (`name`_gamma, _beta, _moving_mean, _moving_var) and the train/inference switch stay
    MXNet's: BatchNormMoments(data) -> [mean - std, mean + std] -> BatchNorm(output_mean_var)
    -> (mean, 1/sqrt(var + eps)) -> BatchNormApply(data, gamma, beta, mean, invstd, act).
    The same function, without oneDNN's BatchNorm, whose reference kernel runs whenever its
    input arrives in a blocked layout it has no fast kernel for (docs/performance.md).
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


def _igc_conv(data, name, num_filter, kernel, stride, groups, interleave, input_branches=1):
    """IGCConv `name` with the weight `{name}_weight` of the Convolution it replaces (same name
    and shape, so checkpoints interchange); input_branches > 1 reads the permutation with that
    many branches of `data`."""
    pad = kernel // 2
    extra = {"input_branches": input_branches} if input_branches > 1 else {}
    return _native_op("IGCConv")(data, mx.sym.var(f"{name}_weight"), num_filter=num_filter,
                                 kernel=(kernel, kernel), stride=(stride, stride), pad=(pad, pad),
                                 num_group=groups, no_bias=True, interleave=interleave, name=name,
                                 **extra)


def _narrow(num_filter, groups, kernel):
    return kernel == 1 or num_filter // groups <= IGC_CONV_MAX_GROUP_WIDTH.get(kernel, 0)


@dataclass(frozen=True)
class Ops:
    """Which ops a graph is built from, resolved once (`resolve_ops`) and handed to the builders.

    permutation: 'reorder' (the plugin's Reorder) or 'reshape' (the pure-symbol permutation).
    fuse_permuted: when a group conv followed by a permutation is one IGCConv: 'always',
    'narrow' (1x1, or groups no wider than IGC_CONV_MAX_GROUP_WIDTH) or 'never'.
    native: the plugin's BatchNorm kernels, and IGCConv for the convolutions without a
    permutation that are 1x1 (grouped, or dense with unit stride) or narrow group convs,
    instead of MXNet's."""
    permutation: str = "reorder"
    fuse_permuted: str = "never"
    native: bool = False

    def permute(self, data, groups, name):
        return permute(data, groups, name, self.permutation)

    def conv_permute(self, data, name, perm_name, num_filter, kernel, stride, groups):
        """A group convolution followed by the permutation with `groups` branches (IGC's conv1 +
        Reorder(L), conv2 + Reorder(M)): Convolution `name` then permutation `perm_name`, or
        one IGCConv `name` (interleave=True)."""
        if self.fuse_permuted == "always" or (self.fuse_permuted == "narrow"
                                              and _narrow(num_filter, groups, kernel)):
            return _igc_conv(data, name, num_filter, kernel, stride, groups, True)
        data = conv(data, name, num_filter, kernel, stride, num_group=groups)
        return self.permute(data, groups, perm_name)

    def group_conv(self, data, name, num_filter, kernel, stride, groups, permuted=1,
                   perm_name=None):
        """A (group) convolution `name` with no permutation after it: IGCConv (interleave=False)
        with the native ops where the kernel is 1x1 with groups or unit stride, or the groups
        are narrow (its plain-NCHW output and data gradient meet the plugin's BatchNorm without a
        oneDNN layout conversion), else Convolution. permuted=g > 1: the convolution reads the
        permutation with g branches of `data` (IGCV3's, between its expansion BatchNorm and
        its depthwise conv). A depthwise IGCConv (one filter and, as in IGCV3, one input
        channel per group) reads the permuted planes itself (input_branches=g: no permuted copy
        in memory, forward or backward); else the permutation is node `perm_name` before the
        convolution."""
        pointwise = kernel == 1 and (groups > 1 or stride == 1)
        igc = self.native and (pointwise or groups > 1 and _narrow(num_filter, groups, kernel))
        if permuted > 1 and not (igc and groups == num_filter):
            data, permuted = self.permute(data, permuted, perm_name), 1
        if igc:
            return _igc_conv(data, name, num_filter, kernel, stride, groups, False, permuted)
        return conv(data, name, num_filter, kernel, stride, num_group=groups)

    def batchnorm(self, data, name, momentum=0.9, eps=2e-5, act=None, act_name=None):
        return batchnorm(data, name, momentum, eps, act, act_name, self.native)

    def conv_bn_act(self, data, conv_name, bn_name, act_name, num_filter, kernel, stride=1,
                    num_group=1, act="relu", momentum=0.9, eps=2e-5, permuted=1,
                    perm_name=None):
        """[Permutation ->] conv -> BN [-> activation]; act_name=None leaves the activation out.
        A grouped conv (IGCV3's depthwise 3x3) is a `group_conv` (which also places the
        permutation): with the native ops its plain-NCHW output and data gradient meet the
        plugin's BatchNorm with no oneDNN layout conversion in between, which costs more than
        the convolution (docs/performance.md)."""
        data = self.group_conv(data, conv_name, num_filter, kernel, stride, num_group, permuted,
                               perm_name)
        return self.batchnorm(data, bn_name, momentum, eps, None if act_name is None else act,
                              act_name)

    def igc_unit(self, data, name, num_filter, kernel, stride, primary, secondary, relu,
                 momentum=0.9, eps=2e-5):
        """IGCV1 unit: conv1 (k x k, L groups) -> Reorder(L) -> conv2 (1x1, M groups) ->
        Reorder(M) -> BN [-> ReLU]. No BN/ReLU between the two group convs: together they are
        one dense conv with a structured-sparse kernel."""
        data = self.conv_permute(data, f"{name}_conv1", f"{name}_reorder1", num_filter, kernel,
                                 stride, primary)
        data = self.conv_permute(data, f"{name}_conv2", f"{name}_reorder2", num_filter, 1, 1,
                                 secondary)
        return self.unit_batchnorm(data, name, relu, momentum, eps)

    def unit_batchnorm(self, data, name, relu=True, momentum=0.9, eps=2e-5):
        """The single BN [+ ReLU] closing an IGC unit: `{name}_bn`, `{name}_relu`."""
        return self.batchnorm(data, f"{name}_bn", momentum, eps, "relu" if relu else None,
                              f"{name}_relu" if relu else None)


def resolve_ops(permutation, conv_impl, device):
    """The Ops of a graph for `device` (validated by the registry). conv_impl 'igc': IGCConv and
    the plugin's BatchNorm everywhere; 'auto': where the graph needs the plugin anyway (the
    native permutation), the plugin's BatchNorm and IGCConv for narrow groups (depthwise
    included) and 1x1 convs (`Ops.group_conv`); 'mxnet': MXNet's ops only. IGCConv is the one
    op a device can lack: there 'auto' builds as 'mxnet' (the same weight names and shapes) and
    'igc' is an error."""
    if conv_impl != "mxnet" and device != "cpu" and not runs_on("IGCConv", device):
        if conv_impl == "igc":
            raise ValueError(f"conv_impl 'igc': IGCConv has no {device} kernel (CPU only); "
                             "'auto' or 'mxnet' build the same weights with Convolution + "
                             "Reorder")
        conv_impl = "mxnet"
    if conv_impl == "igc":
        return Ops(permutation, "always", True)
    if conv_impl == "auto" and permutation == "reorder":
        return Ops(permutation, "narrow", True)
    return Ops(permutation)
