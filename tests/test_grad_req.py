"""grad_req='add' where a plugin op would have to accumulate a gradient is refused when binding
(Symbol.simple_bind, Symbol.bind, Module.bind): lib_api gives the ops no write request, so they
would overwrite. Where no plugin op reads the variable, 'add' still accumulates: checked against
twice the gradient of a 'write' bind."""
import mxnet as mx
import numpy as np
import pytest

import network
import utility


@pytest.fixture(autouse=True)
def guarded_binds(ops):
    """The guard is an explicit call of the entry points (utility.setup_process)."""
    utility.guard_grad_req()


# (plugin op output * s, shapes, the plugin op's inputs): `s` is read by a stock op only.
def reorder_graph():
    out = mx.sym.Reorder(mx.sym.var("x"), branch_factor=2, name="r") * mx.sym.var("s")
    return out, {"x": (2, 4, 3), "s": (2, 4, 3)}, ["x"]


def igc_conv_graph():
    out = mx.sym.IGCConv(mx.sym.var("x"), mx.sym.var("w"), num_filter=4, kernel=(3, 3),
                         pad=(1, 1), num_group=2, no_bias=True, interleave=True, name="c")
    return out * mx.sym.var("s"), {"x": (1, 4, 5, 5), "w": (4, 2, 3, 3), "s": (1, 4, 5, 5)}, \
        ["x", "w"]


GRAPHS = {"Reorder": reorder_graph, "IGCConv": igc_conv_graph}


def bind_with_add(how, symbol, shapes, variable):
    """Bind `symbol` asking for grad_req 'add' on `variable`, the way `how` names."""
    names = symbol.list_arguments()
    if how == "simple_bind":
        return symbol.simple_bind(mx.cpu(), grad_req="add", **shapes)
    if how == "simple_bind_dict":
        return symbol.simple_bind(mx.cpu(), grad_req={variable: "add"}, **shapes)
    if how == "simple_bind_list":
        return symbol.simple_bind(mx.cpu(), grad_req=["add" if n == variable else "write"
                                                      for n in names], **shapes)
    if how == "bind":
        arrays = {n: mx.nd.ones(shapes[n]) for n in names}
        grads = {n: mx.nd.zeros(shapes[n]) for n in names}
        return symbol.bind(mx.cpu(), arrays, args_grad=grads, grad_req="add")
    if how == "module":
        loss = mx.sym.MakeLoss(mx.sym.sum(symbol))
        data_names = [n for n in names if n != "w"]  # w is a parameter
        module = mx.mod.Module(loss, data_names=data_names, label_names=None, context=mx.cpu())
        return module.bind(data_shapes=[(n, shapes[n]) for n in data_names],
                           inputs_need_grad=True, grad_req="add")
    raise AssertionError(how)


BINDS = ["simple_bind", "simple_bind_dict", "simple_bind_list", "bind", "module"]


@pytest.mark.parametrize("how", BINDS)
@pytest.mark.parametrize("op", sorted(GRAPHS))
def test_grad_req_add_on_an_input_of_a_plugin_op_is_refused(ops, op, how):
    symbol, shapes, inputs = GRAPHS[op]()
    for variable in inputs:
        with pytest.raises(ValueError, match=f"grad_req 'add' cannot be honoured for .*"
                                             f"'{variable}' \\(read by {op} "):
            bind_with_add(how, symbol, shapes, variable)


@pytest.mark.parametrize("op", sorted(GRAPHS))
def test_binds_that_accumulate_nothing_into_a_plugin_op_input_still_work(ops, op):
    symbol, shapes, inputs = GRAPHS[op]()
    arrays = {n: mx.nd.ones(shape) for n, shape in shapes.items()}
    symbol.simple_bind(mx.cpu(), grad_req="write", **shapes)
    symbol.simple_bind(mx.cpu(), grad_req={"s": "add"}, **shapes)
    symbol.bind(mx.cpu(), arrays, args_grad=None, grad_req="add")  # no gradient arrays at all
    symbol.bind(mx.cpu(), arrays, args_grad={"s": mx.nd.zeros(shapes["s"])}, grad_req="add")


def small_net(conv_impl):
    return network.get_symbol("plain_igc", 10, depth=8, primary_partition=4,
                              secondary_partition=2, conv_impl=conv_impl)


def test_a_fused_network_refuses_add_and_an_unfused_one_accumulates(ops):
    data_shapes, label_shapes = [("data", (4, 3, 32, 32))], [("softmax_label", (4,))]
    with pytest.raises(ValueError, match="read by IGCConv"):
        mx.mod.Module(small_net("igc")).bind(data_shapes, label_shapes, grad_req="add")

    symbol = small_net("mxnet")  # Reorder reads convolution outputs only
    assert "Reorder" in symbol.tojson()
    rng = np.random.RandomState(0)
    batch = mx.io.DataBatch([mx.nd.array(rng.uniform(-1, 1, (4, 3, 32, 32)))],
                            [mx.nd.array([1, 3, 5, 7])])
    grads = {}
    for req in ("write", "add"):
        module = mx.mod.Module(symbol, context=mx.cpu())
        module.bind(data_shapes, label_shapes, grad_req=req)
        mx.random.seed(1)
        module.init_params(mx.init.Xavier(magnitude=2))
        for _ in range(1 if req == "write" else 2):
            module.forward_backward(batch)
        grads[req] = {n: g[0].asnumpy() for n, g in
                      zip(module._exec_group.param_names, module._exec_group.grad_arrays)}
    conv_weights = [n for n in grads["write"] if n.endswith("_conv1_weight")]
    assert conv_weights
    for name, once in grads["write"].items():
        np.testing.assert_allclose(grads["add"][name], 2 * once, rtol=1e-5,
                                   atol=1e-6 * max(float(np.abs(once).max()), 1e-6),
                                   err_msg=name)
