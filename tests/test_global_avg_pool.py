"""The plugin's GlobalAvgPool, which the training rewrite (network.fuse_input_batchnorms) puts
in place of MXNet's global average Pooling of a plugin op's output: the same means and
gradients bit for bit (float32 and float64, 1 and 3 threads, oneDNN's AVX-512 and AVX2
kernels), bad input as one-line errors, and where the rewrite applies."""
import json

import mxnet as mx
import numpy as np
import pytest

import network

# (64, 1280, 4, 4): a mobilenetv2_cifar head, enough values for the threads; 7 x 7: a plane size
# whose reciprocal is inexact; odd shapes; one value per plane.
SHAPES = [(64, 1280, 4, 4), (16, 96, 7, 7), (5, 9, 3, 5), (2, 3, 1, 1), (3, 17, 8, 8)]


def pooled(symbol, x, out_grad):
    exe = symbol.simple_bind(mx.cpu(), grad_req="write", data=x.shape,
                             type_dict={"data": x.dtype})
    exe.arg_dict["data"][:] = x
    out = exe.forward(is_train=True)[0].asnumpy()
    exe.backward([mx.nd.array(out_grad, dtype=x.dtype)])
    return out, exe.grad_dict["data"].asnumpy()


def check_op():
    """GlobalAvgPool against Pooling(global_pool=True, pool_type='avg') on the same input."""
    data = mx.sym.var("data")
    stock = mx.sym.Pooling(data, kernel=(1, 1), pool_type="avg", global_pool=True)
    ours = mx.sym.GlobalAvgPool(data)
    for shape in SHAPES:
        for dtype in ("float32", "float64"):
            rng = np.random.RandomState(sum(shape))
            x = (rng.standard_normal(shape) * 3).astype(dtype)
            x.flat[7 % x.size] = np.nan  # one plane's mean and nothing else is NaN
            out_grad = rng.standard_normal(shape[:2] + (1, 1)).astype(dtype)
            want_out, want_grad = pooled(stock, x, out_grad)
            got_out, got_grad = pooled(ours, x, out_grad)
            assert got_out.shape == shape[:2] + (1, 1) and got_out.dtype == dtype
            assert np.isnan(got_out).sum() == 1
            np.testing.assert_array_equal(got_out, want_out, err_msg=f"{shape} {dtype}")
            np.testing.assert_array_equal(got_grad, want_grad, err_msg=f"{shape} {dtype}")


def test_op_equals_mxnets_global_average_pooling_bit_for_bit(ops):
    check_op()


@pytest.mark.parametrize("threads", [1, 3])
def test_op_does_not_depend_on_the_thread_count(run_on_threads, threads):
    run_on_threads("test_global_avg_pool", "t.check_op()", threads)


def test_op_equals_onednns_avx2_pooling_too(run_on_threads, monkeypatch):
    """Under the cap oneDNN pools plain NCHW with another kernel (simple_nchw): the same sums."""
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    run_on_threads("test_global_avg_pool", "t.check_op()", 2)


def test_bad_input_is_a_one_line_error(ops):
    with pytest.raises(mx.MXNetError, match=r"GlobalAvgPool: data must be NCHW \(rank 4\), got "
                                            r"shape \(2, 3, 4\)"):
        mx.sym.GlobalAvgPool(mx.sym.var("data")).infer_shape(data=(2, 3, 4))
    with pytest.raises(mx.MXNetError, match="GlobalAvgPool: unknown attribute 'kernel'"):
        mx.sym.GlobalAvgPool(mx.sym.var("data"), kernel=(2, 2)).infer_shape(data=(2, 3, 4, 4))
    with pytest.raises(mx.MXNetError, match="GlobalAvgPool: unsupported dtype float16"):
        mx.sym.GlobalAvgPool(mx.sym.var("data")).infer_type(data="float16")


def ops_of(symbol):
    return [n["op"] for n in json.loads(symbol.tojson())["nodes"]]


def test_training_rewrite_replaces_only_a_global_average_pool_in_a_cpu_graph(ops, monkeypatch):
    symbol = network.get_symbol("mobilenetv2_cifar", 10)
    assert ops_of(symbol).count("Pooling") == 1
    fused = network.fuse_input_batchnorms(symbol)
    assert "Pooling" not in ops_of(fused) and ops_of(fused).count("GlobalAvgPool") == 1
    assert fused.list_outputs() == symbol.list_outputs()
    assert "GlobalAvgPool" not in ops_of(network.fuse_input_batchnorms(symbol, pool=False))
    monkeypatch.setenv("IGC_FUSE_POOL", "0")
    assert "GlobalAvgPool" not in ops_of(network.fuse_input_batchnorms(symbol))
    monkeypatch.delenv("IGC_FUSE_POOL")
    # In a graph without a CPU-only plugin op (one MXNet may run on a GPU), a max or padded
    # pooling, or one with an attribute GlobalAvgPool does not follow: left as they are.
    data = mx.sym.var("data")
    applied = mx.sym.BatchNormApply(data, mx.sym.var("g"), mx.sym.var("b"), mx.sym.var("m"),
                                    mx.sym.var("v"), act="relu")
    for source, kwargs in [(mx.sym.relu(data), {}), (applied, dict(pool_type="max")),
                           (applied, dict(pad=(1, 1))), (applied, dict(layout="NCHW"))]:
        attrs = dict(kernel=(1, 1), pool_type="avg", global_pool=True)
        attrs.update(kwargs)
        graph = mx.sym.Pooling(source, **attrs)
        assert ops_of(network.fuse_input_batchnorms(graph)).count("Pooling") == 1, kwargs
    graph = mx.sym.Pooling(applied, kernel=(1, 1), pool_type="avg", global_pool=True)
    assert ops_of(network.fuse_input_batchnorms(graph)).count("GlobalAvgPool") == 1
    # A stock op's output in such a graph (resnet_igc's pooling reads MXNet's ReLU of a sum)
    graph = mx.sym.Pooling(mx.sym.relu(applied), kernel=(1, 1), pool_type="avg", global_pool=True)
    assert ops_of(network.fuse_input_batchnorms(graph)).count("GlobalAvgPool") == 1
    plain = network.get_symbol("resnet_igc", 10, depth=8, primary_partition=4,
                               secondary_partition=2, conv_impl="mxnet")
    assert ops_of(network.fuse_input_batchnorms(plain)).count("Pooling") == 1
