"""Backbones for other tasks: any registered network's graph up to its global pool, with the
output at the end of each stage, named by the stage (`network.get_plan` rows: 'g0' .. 'g3' for
the IGCV1 / ResNet families, 'stem', 'seq-0' .. 'seq-6', 'head' for IGCV3 / MobileNetV2).

    features = network.get_features("igcv3")          # {'stem': sym, ..., 'pool': sym}
    block = mx.gluon.SymbolBlock(list(features.values()), mx.sym.var("data"))
    block.collect_params().load("runs/x/model-0100.params", ignore_extra=True)  # drops the FC

The parameter names are those of the classification network, so its checkpoints (and the
authors' released ones) load into the backbone by name; the classifier's arrays are the extra.
"""
from .registry import get_plan, get_symbol

POOL_NAME = "global_pool"


def _stage_end(outputs, prefix):
    ends = [name for name in outputs if name.startswith(prefix) and name.endswith("_output")]
    if not ends:
        raise ValueError(f"no layer named {prefix}* in the graph")
    return ends[-1]


def get_features(name, **config):
    """{stage name: symbol} for every stage of `name` under `config` (its last layer's output,
    in graph order) and 'pool': the global average pool flattened to (N, channels)."""
    import mxnet as mx
    internals = get_symbol(name, 1, **config).get_internals()
    outputs = internals.list_outputs()
    features = {row.stage: internals[_stage_end(outputs, row.prefix)]
                for row in get_plan(name, **config)}
    features["pool"] = mx.sym.Flatten(internals[POOL_NAME + "_output"], name="features_pool")
    return features
