"""Precise BatchNorm statistics (`--precise-bn N`): the running mean and variance of every
BatchNorm recomputed from N batches with the current weights, instead of the exponential moving
average that training keeps (whose memory, 10 batches at momentum 0.9, 100 at 0.99, spans weights
from many updates ago: at a high learning rate it lags them, and validation then reads stale
statistics). As in "Rethinking 'Batch' in BatchNorm" (Wu and Johnson, 2021, PreciseBN): each
BatchNorm's input is computed in training mode (the layers below normalise with their batch
statistics, as during training), its per-channel batch mean and biased batch variance (what
MXNet's running statistics average) are averaged over the batches.

Works on any training graph: the statistics are taken at the input of each `BatchNorm` node,
which for the plugin's BatchNorm is its (2, C, 1, 1) summary of the batch, whose mean and biased
variance are the batch's.
"""
import json

import mxnet as mx
import numpy as np


def batchnorm_nodes(symbol):
    """[(input output name, moving_mean name, moving_var name)] of every BatchNorm node."""
    nodes = json.loads(symbol.tojson())["nodes"]
    internals = set(symbol.get_internals().list_outputs())
    found = []
    for node in nodes:
        if node["op"] != "BatchNorm":
            continue
        source, index = node["inputs"][0][:2]
        name = nodes[source]["name"]
        if nodes[source]["op"] == "null":
            output = name  # a variable (the data itself)
        elif f"{name}_output" in internals:
            output = f"{name}_output"
        else:
            output = f"{name}_output{index}"
        aux = [nodes[i]["name"] for i, _, _ in node["inputs"][3:5]]
        found.append((output, aux[0], aux[1]))
    return found


def recompute(symbol, arg_params, aux_params, batches, context, max_batches):
    """New aux_params (a copy of `aux_params`) whose BatchNorm running statistics are the
    averages of the batch statistics of up to `max_batches` of `batches` (DataBatch objects, as
    the training reader yields them). Raises ValueError when `batches` yields nothing."""
    nodes = batchnorm_nodes(symbol)
    if not nodes:
        return dict(aux_params)
    internals = symbol.get_internals()
    moments = []
    for output, _, _ in nodes:
        mean, var = mx.sym.moments(internals[output], axes=(0, 2, 3))
        moments += [mean, var]
    group = mx.sym.Group(moments)
    executor = None
    sums = [0.0] * len(moments)
    count = 0
    for batch in batches:
        if count == max_batches:
            break
        data = batch.data[0]
        if executor is None:
            args = {name: arg_params[name].as_in_context(context)
                    for name in group.list_arguments() if name != "data"}
            args["data"] = mx.nd.zeros(data.shape, context, dtype=data.dtype)
            aux = {name: aux_params[name].copy().as_in_context(context)
                   for name in group.list_auxiliary_states()}
            executor = group.bind(context, args, aux_states=aux, grad_req="null")
        data.copyto(executor.arg_dict["data"])
        outputs = executor.forward(is_train=True)
        for i, value in enumerate(outputs):
            sums[i] = sums[i] + value.asnumpy().astype(np.float64)
        count += 1
    if not count:
        raise ValueError("precise BatchNorm statistics: the reader gave no batch")
    new = dict(aux_params)
    for k, (_, mean_name, var_name) in enumerate(nodes):
        for name, total in ((mean_name, sums[2 * k]), (var_name, sums[2 * k + 1])):
            old = aux_params[name]
            new[name] = mx.nd.array(total / count, ctx=old.context, dtype=old.dtype)
    return new
