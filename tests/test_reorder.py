"""The native `Reorder` op against an index-by-index numpy reference (the IGCV1 paper's
permutation)."""
import glob
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import reference
from conftest import ROOT
from network import layers

DTYPES = ["float32", "float64", "float16"]

# (shape, g): ranks 2-5, g = 1 and g = C, the networks' shapes, rows of every kernel path:
# short rows of 2..36 bytes (tiled transpose, fixed and generic sizes), long rows that are not
# a multiple of 16 bytes (7x7), groups short enough to be walked in input order (8x8, g=24) and
# long enough to be gathered in output order (7x7, g=16).
CASES = [
    ((3, 12), 4),
    ((5, 6), 1),
    ((5, 6), 6),
    ((2, 20, 3), 5),
    ((2, 48, 3, 3), 24),
    ((4, 48, 32, 32), 24),
    ((4, 96, 16, 16), 2),
    ((4, 192, 8, 8), 24),
    ((2, 256, 14, 14), 16),
    ((2, 2048, 7, 7), 16),
    ((2, 1600, 7, 7), 800),
    ((3, 40, 1, 1), 8),
    ((2, 36, 2, 3, 2), 6),
    ((2, 12, 3, 2, 2), 3),
    ((3, 12, 4), 12),
    ((1, 8, 3, 5), 2),
]
# Above 3/4 of a 32 MB last-level cache in float32 (streaming stores): 25 MB gathered in output
# order, 31 MB of short groups walked in input order.
LARGE_CASES = [((8, 192, 64, 64), 24), ((640, 192, 8, 8), 24)]


def random_array(shape, dtype, seed=0):
    return np.random.RandomState(seed).uniform(-10, 10, size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,g", CASES)
def test_reorder_forward_matches_numpy_reference(ops, shape, g, dtype):
    x = random_array(shape, dtype)
    y = mx.nd.Reorder(mx.nd.array(x, dtype=dtype), branch_factor=g)
    assert y.dtype == np.dtype(dtype)
    assert y.shape == x.shape
    np.testing.assert_array_equal(y.asnumpy(), reference.reorder(x, g))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape,g", LARGE_CASES)
def test_reorder_forward_with_streaming_stores_matches_reference(ops, shape, g, dtype):
    x = random_array(shape, dtype)
    y = mx.nd.Reorder(mx.nd.array(x, dtype=dtype), branch_factor=g).asnumpy()
    np.testing.assert_array_equal(y, reference.reorder(x, g))


@pytest.mark.parametrize("shape,g", CASES + LARGE_CASES)
def test_reorder_inverse_restores_input(ops, shape, g):
    x = mx.nd.array(random_array(shape, "float32"))
    back = mx.nd.Reorder(mx.nd.Reorder(x, branch_factor=g), branch_factor=shape[1] // g)
    np.testing.assert_array_equal(back.asnumpy(), x.asnumpy())


def test_reorder_writes_into_preallocated_output(ops):
    x = random_array((4, 48, 5, 5), "float32")
    out = mx.nd.full(x.shape, np.nan)
    mx.nd.Reorder(mx.nd.array(x), branch_factor=24, out=out)
    np.testing.assert_array_equal(out.asnumpy(), reference.reorder(x, 24))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,g", [((2, 48, 3, 3), 24), ((3, 12), 4), ((2, 2048, 7, 7), 16)])
def test_reorder_backward_is_inverse_permutation_of_output_gradient(ops, shape, g, dtype):
    x = mx.nd.array(random_array(shape, dtype, seed=1), dtype=dtype)
    dy = random_array(shape, dtype, seed=2)
    x.attach_grad()
    with mx.autograd.record():
        y = mx.nd.Reorder(x, branch_factor=g)
    y.backward(mx.nd.array(dy, dtype=dtype))
    expected = reference.reorder(dy, shape[1] // g)
    np.testing.assert_array_equal(x.grad.asnumpy(), expected)
    # the gradient really is the inverse: permuting it forward gives dy back
    np.testing.assert_array_equal(reference.reorder(x.grad.asnumpy(), g), dy)


def test_reorder_passes_numeric_gradient_check(ops):
    data = mx.sym.var("data")
    # a non-linear head so the check sees distinct gradients per channel
    sym = mx.sym.sum(mx.sym.square(mx.sym.Reorder(data, branch_factor=3)) *
                     mx.sym.var("w"))
    loc = {"data": np.random.RandomState(3).randn(2, 6, 2, 2),
           "w": np.arange(48, dtype=np.float64).reshape(2, 6, 2, 2)}
    mx.test_utils.check_numeric_gradient(sym, loc, grad_nodes=["data"], numeric_eps=1e-4,
                                         rtol=1e-2, atol=1e-3, dtype=np.float64)


@pytest.mark.parametrize("shape,g", [((4, 48, 6, 6), 24), ((2, 96, 4, 4), 2), ((5, 12), 3)])
def test_reorder_executor_matches_imperative_and_reshape_path(ops, shape, g):
    x = random_array(shape, "float32", seed=4)
    dy = random_array(shape, "float32", seed=5)

    results = {}
    for method in ("reorder", "reshape"):
        data = mx.sym.var("data")
        if method == "reorder":
            sym = mx.sym.Reorder(data, branch_factor=g, workspace=1024)
        else:
            sym = layers.permute(data, g, "perm", "reshape")
        exe = sym.simple_bind(mx.cpu(), data=shape, grad_req="write")
        exe.forward(is_train=True, data=mx.nd.array(x))
        exe.backward(out_grads=[mx.nd.array(dy)])
        results[method] = (exe.outputs[0].asnumpy(), exe.grad_dict["data"].asnumpy())

    xi = mx.nd.array(x)
    xi.attach_grad()
    with mx.autograd.record():
        yi = mx.nd.Reorder(xi, branch_factor=g)
    yi.backward(mx.nd.array(dy))

    np.testing.assert_array_equal(results["reorder"][0], reference.reorder(x, g))
    for out, grad in (results["reshape"], (yi.asnumpy(), xi.grad.asnumpy())):
        np.testing.assert_array_equal(results["reorder"][0], out)
        np.testing.assert_array_equal(results["reorder"][1], grad)


@pytest.mark.parametrize("kwargs,shape,dtype,expected", [
    ({}, (2, 6), "float32", "required attribute 'branch_factor' is missing"),
    ({"branch_factor": 0}, (2, 6), "float32", "'branch_factor' must be an integer >= 1, got '0'"),
    ({"branch_factor": -2}, (2, 6), "float32", "got '-2'"),
    ({"branch_factor": "2.5"}, (2, 6), "float32", "got '2.5'"),
    ({"branch_factor": "two"}, (2, 6), "float32", "got 'two'"),
    ({"branch_factor": 2 ** 31}, (2, 6), "float32", "must be an integer >= 1, got '2147483648'"),
    ({"branch_factor": 4}, (2, 6, 3), "float32",
     "'branch_factor'=4 does not divide the channel count 6 of input shape (2, 6, 3)"),
    ({"branch_factor": 2}, (6,), "float32", "rank >= 2 with channels on axis 1, got shape (6,)"),
    ({"branch_factor": 2}, (2, 6), "int32", "unsupported dtype int32"),
    ({"branch_factor": 2}, (2, 6), "uint8", "unsupported dtype uint8"),
    ({"branch_factor": 2, "branch_facter": 3}, (2, 6), "float32",
     "unknown attribute 'branch_facter'; valid attributes: branch_factor, workspace"),
])
def test_reorder_invalid_use_raises_clear_error_and_process_survives(ops, kwargs, shape, dtype,
                                                                     expected):
    x = mx.nd.ones(shape, dtype=dtype)
    with pytest.raises(mx.base.MXNetError) as err:
        mx.nd.Reorder(x, **kwargs).wait_to_read()
    message = str(err.value)
    assert "Reorder" in message
    assert expected in message
    # only this call's error is reported, not earlier ones
    assert message.count("Reorder: ") == 1
    y = mx.nd.Reorder(mx.nd.array(np.arange(12.0).reshape(2, 6)), branch_factor=2)
    np.testing.assert_array_equal(y.asnumpy(), reference.reorder(np.arange(12.0).reshape(2, 6), 2))


def test_reorder_invalid_branch_factor_fails_at_symbolic_shape_inference(ops):
    sym = mx.sym.Reorder(mx.sym.var("data"), branch_factor=5)
    with pytest.raises(mx.base.MXNetError, match="does not divide the channel count 48"):
        sym.infer_shape(data=(1, 48, 4, 4))


def test_reorder_type_inference_leaves_unknown_types_open(ops):
    sym = mx.sym.Reorder(mx.sym.var("data"), branch_factor=2)
    assert sym.infer_type(data="float16")[1] == [np.float16]
    # nothing known yet: not an error, MXNet just reports the type as undecided
    with pytest.warns(UserWarning, match="Cannot decide type"):
        assert sym.infer_type() == (None, None, None)


def released_graphs():
    from conftest import RELEASED_SYMBOLS_DIR
    return sorted(glob.glob(os.path.join(RELEASED_SYMBOLS_DIR, "*-symbol.json")))


@pytest.mark.parametrize("path", released_graphs() or [pytest.param(
    None, marks=pytest.mark.skip(reason="authors' released graphs not available"))],
    ids=lambda p: os.path.basename(p) if p else "none")
def test_released_graph_loads_and_runs_forward_backward(ops, path):
    sym = mx.sym.load(path)
    arg_shapes, out_shapes, aux_shapes = sym.infer_shape(data=(1, 3, 224, 224))
    assert out_shapes == [(1, 1000)]
    exe = sym.simple_bind(mx.cpu(), data=(1, 3, 224, 224), grad_req="write")
    rng = np.random.RandomState(0)
    for name, arr in exe.arg_dict.items():
        if name == "data":
            arr[:] = rng.uniform(-1, 1, arr.shape)
        elif name.endswith("label"):
            arr[:] = 3
        else:
            arr[:] = rng.normal(0, 0.05, arr.shape)
    for name, arr in exe.aux_dict.items():
        arr[:] = 1.0 if name.endswith("var") else 0.0
    exe.forward(is_train=True)
    exe.backward()
    probs = exe.outputs[0].asnumpy()
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-4)
    assert np.isfinite(exe.grad_dict["data"].asnumpy()).all()
    with open(path) as f:
        assert any(node["op"] == "Reorder" for node in json.load(f)["nodes"]) == ("gcwf" in path)
    assert np.abs(exe.grad_dict["data"].asnumpy()).sum() > 0


CHILD = r"""
import sys, numpy as np, mxnet as mx
sys.path.insert(0, sys.argv[1])
import utility
utility.load_ops()
x = np.random.RandomState(0).randn(16, 192, 32, 32).astype(np.float32)
y = mx.nd.Reorder(mx.nd.array(x), branch_factor=24).asnumpy()
ref = x.reshape(16, 24, 8, 32, 32).swapaxes(1, 2).reshape(x.shape)
print("OK" if np.array_equal(y, ref) else "MISMATCH")
"""


@pytest.mark.parametrize("threads", ["1", "2"])
def test_reorder_is_correct_with_omp_num_threads(ops, threads):
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    run = subprocess.run([sys.executable, "-c", CHILD, ROOT], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("OK")


LOAD_MISSING = r"""
import sys
sys.path.insert(0, sys.argv[1])
import utility
try:
    utility.load_ops(sys.argv[2] or None)
except utility.OpsLibraryError as e:
    print(e)
else:
    print("LOADED")
"""


@pytest.mark.parametrize("via_env", [False, True])
def test_load_ops_reports_missing_library_with_the_fix(tmp_path, via_env):
    missing = tmp_path / "nowhere" / "libigc_ops.so"
    env = {k: v for k, v in os.environ.items() if k != "IGC_OPS_LIB"}
    if via_env:
        env["IGC_OPS_LIB"] = str(missing)
    target = "" if via_env else str(missing)
    run = subprocess.run([sys.executable, "-c", LOAD_MISSING, ROOT, target],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"IGC operator library not found at {missing}" in run.stdout
    assert ("$IGC_OPS_LIB points to it" if via_env else "run `make ops`") in run.stdout


def test_load_ops_is_idempotent_and_refuses_a_second_library(ops, tmp_path):
    import utility
    assert utility.load_ops() == ops
    assert utility.load_ops(ops) == ops
    other = tmp_path / "libother.so"
    other.write_bytes(b"")
    with pytest.raises(utility.OpsLibraryError, match="already loaded"):
        utility.load_ops(str(other))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,g", [((4, 48, 5, 5), 24), ((3, 12), 4), ((2, 96, 16, 16), 2)])
def test_reorder_cpu_entry_point_matches_reference(shape, g, dtype):
    import utility
    kernel = utility.reorder_entry_point("cpu")
    x = random_array(shape, dtype)
    out = np.empty_like(x)
    inner = int(np.prod(shape[2:]))
    rc = kernel(x.ctypes.data, out.ctypes.data, shape[0], shape[1], inner, g,
                utility.MX_DTYPE_CODES[dtype])
    assert rc == 0
    np.testing.assert_array_equal(out, reference.reorder(x, g))
    assert kernel(x.ctypes.data, out.ctypes.data, shape[0], shape[1], inner, 5, 0) == -1
    assert kernel(x.ctypes.data, out.ctypes.data, shape[0], shape[1], inner, g, 4) == -1


def test_reorder_zero_size_batch_is_a_clear_error_and_the_process_stays_healthy(ops):
    # MXNet's default shape mode reads an axis of size 0 as "unknown".
    empty = mx.nd.array(np.zeros((0, 4, 3, 3), np.float32))
    for _ in range(2):
        with pytest.raises(mx.base.MXNetError) as err:
            mx.nd.Reorder(empty, branch_factor=2).wait_to_read()
        message = str(err.value)
        assert "Reorder: input 'data' has shape (?, 4, 3, 3) with an axis of unknown size" \
            in message and "size 0" in message, message
    x = np.arange(24.0).reshape(2, 12)
    np.testing.assert_array_equal(mx.nd.Reorder(mx.nd.array(x), branch_factor=3).asnumpy(),
                                  reference.reorder(x, 3))


def test_reorder_zero_size_batch_under_numpy_shapes_is_empty_both_ways(ops):
    with mx.util.np_shape(True):
        empty = mx.nd.array(np.zeros((0, 4, 3, 3), np.float32))
        empty.attach_grad()
        with mx.autograd.record():
            y = mx.nd.Reorder(empty, branch_factor=2)
        y.backward(mx.nd.array(np.zeros((0, 4, 3, 3), np.float32)))
        assert y.asnumpy().shape == (0, 4, 3, 3) and empty.grad.asnumpy().shape == (0, 4, 3, 3)
