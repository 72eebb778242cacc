"""PyTorch peers of the project's networks, for the benchmarks only (never a runtime dependency).

`build(name, num_classes, **config)` returns an `nn.Module` with the same layers as
`network.get_symbol(name, num_classes, **config)`: it reads the same validated stage table
(`network.get_plan`), uses the same channel permutation (reshape (N, g, C/g, H, W) -> swap axes
1, 2 -> reshape: the IGCV1 paper's Reorder, ShuffleNet's channel shuffle), the same
BatchNorm/ReLU6 placement and BN momentum/eps, and registers its parameters in the order of the
MXNet graph's arguments, so that weights can be copied across by position. `check_param_count`
asserts the counts match before any timing. `permutation` and `conv_impl` choose how MXNet runs
the graph; a peer accepts and ignores them.
"""
from . import igcv1, inverted_residual

PEERS = {
    "plain_igc": igcv1.PlainIGC,
    "resnet_igc": igcv1.ResNetIGC,
    "igcv3_cifar": inverted_residual.InvertedResidualNet,
    "mobilenetv2_cifar": inverted_residual.InvertedResidualNet,
    "igcv3": inverted_residual.InvertedResidualNet,
    "mobilenetv2": inverted_residual.InvertedResidualNet,
    "resnet_igc_imgnet_d18": igcv1.ResNetIGCImageNet,
}
IGNORED_KEYS = ("permutation", "conv_impl")


def build(name, num_classes, **config):
    import network
    if name not in PEERS:
        raise ValueError(f"no PyTorch peer for {name!r}; peers: {', '.join(sorted(PEERS))}")
    plan = network.get_plan(name, **config)
    full = {**network.network_defaults(name), **config}
    options = {key: value for key, value in full.items() if key not in IGNORED_KEYS}
    return PEERS[name](plan, num_classes, **_peer_keywords(name, options))


def _peer_keywords(name, options):
    if name.startswith("mobilenetv2"):
        return {"t1_expansion": options["t1_expansion"]}
    if name.startswith("igcv3"):
        return {"t1_expansion": True}
    return {}


def param_count(module):
    return sum(p.numel() for p in module.parameters())


def mxnet_param_count(name, num_classes, **config):
    """utility.count_params of the MXNet graph (total learnable arguments)."""
    import network
    import utility
    size = network.network_info(name)["input_size"]
    symbol = network.get_symbol(name, num_classes, **config)
    return utility.count_params(symbol, (1, 3, size, size))["total"]


def check_param_count(name, module, num_classes, **config):
    """Raises AssertionError unless the peer has exactly the MXNet graph's parameter count."""
    ours, peer = mxnet_param_count(name, num_classes, **config), param_count(module)
    assert ours == peer, f"{name} {config}: MXNet graph has {ours:,} parameters, peer {peer:,}"
    return ours
