"""The plugin's BatchNorm (BatchNormMoments -> MXNet BatchNorm on the summary -> BatchNormApply,
built by network.layers.batchnorm(native=True)) against numpy and against MXNet's BatchNorm
(+ clip / ReLU): outputs in training and inference, every gradient, the moving statistics."""
import mxnet as mx
import numpy as np
import pytest

import reference
from network import layers

MOMENTUM, EPS = 0.9, 1e-5


def _bind(native, act, shape, dtype):
    data = mx.sym.var("data")
    out = layers.batchnorm(data, "bn", MOMENTUM, EPS, act, "act" if act else None, native)
    loss = mx.sym.MakeLoss(mx.sym.sum(out * mx.sym.var("head")))
    exe = loss.simple_bind(mx.cpu(), data=shape, head=shape, type_dict={"data": dtype})
    return exe, mx.sym.Group([out])


def _run(native, act, shape, dtype, x, head, gamma, beta, moving_mean, moving_var):
    exe, out = _bind(native, act, shape, dtype)
    exe.arg_dict["data"][:] = x
    exe.arg_dict["head"][:] = head
    exe.arg_dict["bn_gamma"][:] = gamma
    exe.arg_dict["bn_beta"][:] = beta
    exe.aux_dict["bn_moving_mean"][:] = moving_mean
    exe.aux_dict["bn_moving_var"][:] = moving_var
    exe.forward(is_train=True)
    exe.backward()
    infer = out.bind(mx.cpu(), {"data": mx.nd.array(x, dtype=dtype),
                                "bn_gamma": mx.nd.array(gamma, dtype=dtype),
                                "bn_beta": mx.nd.array(beta, dtype=dtype)},
                     aux_states={"bn_moving_mean": mx.nd.array(moving_mean, dtype=dtype),
                                 "bn_moving_var": mx.nd.array(moving_var, dtype=dtype)})
    return {"dx": exe.grad_dict["data"].asnumpy(), "dgamma": exe.grad_dict["bn_gamma"].asnumpy(),
            "dbeta": exe.grad_dict["bn_beta"].asnumpy(),
            "moving_mean": exe.aux_dict["bn_moving_mean"].asnumpy(),
            "moving_var": exe.aux_dict["bn_moving_var"].asnumpy(),
            "inference": infer.forward(is_train=False)[0].asnumpy()}


# float32 only: MXNet's float64 BatchNorm refuses to leave its normalised output unused (the
# float64 kernels are checked without it below).
# Also many images of small planes (40 of 4x4), odd plane sizes (9x9) and rows longer than the
# kernels' float chunk of 512 values (23x23: two chunks per row, summed in double).
CASES = [((4, 6, 5, 7), None, "float32"), ((3, 5, 4, 9), "relu", "float32"),
         ((8, 16, 8, 8), "relu6", "float32"), ((2, 3, 11), "relu6", "float32"),
         ((40, 3, 4, 4), "relu6", "float32"), ((5, 7, 9, 9), "relu", "float32"),
         ((2, 4, 23, 23), None, "float32")]


@pytest.mark.parametrize("shape,act,dtype", CASES)
def test_native_batchnorm_equals_mxnet_batchnorm_and_numpy(ops, shape, act, dtype):
    rng = np.random.default_rng(1)
    c = shape[1]
    # An offset mean and wide per-channel scales; relu6 then clips on both sides.
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 4, (1, c) + (1,) * (len(shape) - 2))
         + rng.uniform(-3, 3, (1, c) + (1,) * (len(shape) - 2)))
    head = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 3, c), rng.uniform(-1, 4, c)
    moving_mean, moving_var = rng.uniform(-1, 1, c), rng.uniform(0.5, 2, c)
    args = (x, head, gamma, beta, moving_mean, moving_var)
    ours = _run(True, act, shape, dtype, *args)
    theirs = _run(False, act, shape, dtype, *args)
    tol = 2e-5
    for key, value in theirs.items():
        scale = max(np.abs(value).max(), 1.0)
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=tol * scale, err_msg=key)
    # numpy: the batch statistics feed the moving averages, inference uses the moving ones.
    _, mean, var = reference.batchnorm_training(x, gamma, beta, EPS, act)
    np.testing.assert_allclose(ours["moving_mean"], MOMENTUM * moving_mean + (1 - MOMENTUM) * mean,
                               rtol=1e-5)
    np.testing.assert_allclose(ours["moving_var"], MOMENTUM * moving_var + (1 - MOMENTUM) * var,
                               rtol=1e-5)
    np.testing.assert_allclose(
        ours["inference"],
        reference.batchnorm_inference(x, gamma, beta, moving_mean, moving_var, EPS, act),
        rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (100, 5, 2, 3)])
@pytest.mark.parametrize("baseline", ["0", "1"])
@pytest.mark.parametrize("act", [None, "relu", "relu6"])
def test_float64_moments_and_apply_equal_numpy(ops, act, baseline, shape, monkeypatch):
    """The ops' float64 kernels, called directly (MXNet's float64 BatchNorm cannot sit between
    them): float64 accuracy, forward and every gradient, on the AVX2 and the portable path (also
    100 images of small planes)."""
    monkeypatch.setenv("IGC_CONV_BASELINE", baseline)
    rng = np.random.default_rng(3)
    axes = (0, 2, 3)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 4, (1, 5, 1, 1)) + 2.0
    head = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 3, 5), rng.uniform(-1, 4, 5)
    mean, std = x.mean(axis=axes), x.std(axis=axes)
    summary = mx.nd.BatchNormMoments(mx.nd.array(x, dtype="float64"))
    assert summary.dtype == np.float64 and summary.shape == (2, 5, 1, 1)
    np.testing.assert_allclose(summary.asnumpy()[:, :, 0, 0], [mean - std, mean + std],
                               rtol=1e-12, atol=1e-12)

    invstd = 1 / np.sqrt(std ** 2 + EPS)
    inputs = [mx.nd.array(a, dtype="float64") for a in (x, gamma, beta, mean, invstd)]
    for array in inputs:
        array.attach_grad()
    with mx.autograd.record():
        out = mx.nd.BatchNormApply(*inputs, act=act or "none")
    out.backward(mx.nd.array(head, dtype="float64"))
    want, _, _ = reference.batchnorm_training(x, gamma, beta, EPS, act)
    np.testing.assert_allclose(out.asnumpy(), want, rtol=1e-12, atol=1e-12)
    # The batch-statistics gradient: mean and invstd are functions of x.
    c = (1, -1, 1, 1)
    xhat = (x - mean.reshape(c)) * invstd.reshape(c)
    pre = xhat * gamma.reshape(c) + beta.reshape(c)
    dy = head * {None: 1.0, "relu": pre > 0, "relu6": (pre > 0) & (pre < 6)}[act]
    dx = gamma.reshape(c) * invstd.reshape(c) * (
        dy - dy.mean(axis=axes, keepdims=True)
        - xhat * (dy * xhat).mean(axis=axes, keepdims=True))
    grads = [a.grad.asnumpy() for a in inputs]
    for got, expected in zip(grads, [dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes),
                                     np.zeros(5), np.zeros(5)]):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_native_batchnorm_training_output_equals_numpy_with_a_large_mean(ops):
    # |mean| / std = 1e3: the moments are summed around a shift, not as E[x^2] - E[x]^2.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 6, 6)) * 0.5 + 500.0
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    out = layers.batchnorm(mx.sym.var("data"), "bn", MOMENTUM, EPS, native=True)
    exe = out.simple_bind(mx.cpu(), data=x.shape)
    exe.arg_dict["data"][:] = x
    exe.arg_dict["bn_gamma"][:] = gamma
    exe.arg_dict["bn_beta"][:] = beta
    got = exe.forward(is_train=True)[0].asnumpy()
    want, _, _ = reference.batchnorm_training(x, gamma, beta, EPS)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_native_batchnorm_rejects_bad_attributes_and_shapes(ops):
    data, gamma = mx.sym.var("data"), mx.sym.var("gamma")
    with pytest.raises(mx.base.MXNetError, match="BatchNormApply: attribute 'act'"):
        mx.sym.BatchNormApply(data, gamma, gamma, gamma, gamma, act="tanh")
    apply = mx.sym.BatchNormApply(data, mx.sym.var("g"), mx.sym.var("b"), mx.sym.var("m"),
                                  mx.sym.var("v"))
    with pytest.raises(mx.base.MXNetError, match="input 'gamma' has shape"):
        apply.infer_shape(data=(2, 3, 4, 4), g=(4,))
    with pytest.raises(mx.base.MXNetError, match="BatchNormMoments: data must have rank >= 2"):
        mx.sym.BatchNormMoments(data).infer_shape(data=(5,))


def kernel_results_digest():
    """sha256 of the float32 kernels' outputs (summary, output, every gradient) on small (4x4)
    and large (32x32) planes, with enough channels for several threads."""
    import hashlib
    digest = hashlib.sha256()
    rng = np.random.default_rng(4)
    for shape in [(48, 40, 4, 4), (6, 24, 32, 32)]:
        c = shape[1]
        x = rng.standard_normal(shape).astype("float32") * 2 + 1
        head = rng.standard_normal(shape).astype("float32")
        summary = mx.nd.BatchNormMoments(mx.nd.array(x)).asnumpy()
        mean, sd = (summary[1] + summary[0]) / 2, (summary[1] - summary[0]) / 2
        inputs = [mx.nd.array(a) for a in (x, rng.uniform(0.5, 3, c), rng.uniform(-1, 4, c),
                                           mean.reshape(c), 1 / np.sqrt(sd.reshape(c) ** 2 + EPS))]
        for array in inputs:
            array.attach_grad()
        with mx.autograd.record():
            out = mx.nd.BatchNormApply(*inputs, act="relu6")
        out.backward(mx.nd.array(head))
        for array in [summary, out.asnumpy()] + [a.grad.asnumpy() for a in inputs[:3]]:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("threads", [1, 3])
def test_kernel_results_do_not_depend_on_the_thread_count(ops, run_on_threads, threads):
    """Every per-channel sum runs over images in a fixed order on whichever thread takes the
    channel: the same bits on 1 and 3 threads as in this process."""
    run_on_threads("test_batch_norm",
                   f"assert t.kernel_results_digest() == {kernel_results_digest()!r}", threads)


def apply_results(shape, act, monkeypatch, no_stream):
    """BatchNormApply's output and every gradient (float32) with IGC_NO_STREAM as given."""
    monkeypatch.setenv("IGC_NO_STREAM", no_stream)
    rng = np.random.default_rng(5)
    c = shape[1]
    x = rng.standard_normal(shape).astype("float32") * 2 + 1
    inputs = [mx.nd.array(a) for a in (x, rng.uniform(0.5, 3, c), rng.uniform(-1, 4, c),
                                       rng.uniform(0, 2, c), rng.uniform(0.5, 2, c))]
    for array in inputs:
        array.attach_grad()
    with mx.autograd.record():
        out = mx.nd.BatchNormApply(*inputs, act=act)
    out.backward(mx.nd.array(rng.standard_normal(shape).astype("float32")))
    return [out.asnumpy()] + [a.grad.asnumpy() for a in inputs[:3]], [a.asnumpy() for a in inputs]


# Outputs of 16 MB and more are written with non-temporal stores: 32x32 planes (rows on 32-byte
# boundaries) and 37x37 planes (rows start anywhere: plain stores before the first boundary and
# after the last).
@pytest.mark.parametrize("shape,act", [((64, 66, 32, 32), "relu6"), ((64, 50, 37, 37), "relu")])
def test_streamed_outputs_have_the_bits_of_plain_stores(ops, shape, act, monkeypatch):
    assert np.prod(shape) * 4 >= 16 << 20
    streamed, (x, gamma, beta, mean, invstd) = apply_results(shape, act, monkeypatch, "0")
    plain, _ = apply_results(shape, act, monkeypatch, "1")
    for name, a, b in zip(["output", "data grad", "gamma grad", "beta grad"], streamed, plain):
        assert np.array_equal(a, b), name
    # and the output is the normalisation itself
    per_channel = (1, -1, 1, 1)
    scale = (gamma * invstd).reshape(per_channel)
    shift = beta.reshape(per_channel) - mean.reshape(per_channel) * scale
    expected = np.maximum(x * scale + shift, 0)
    if act == "relu6":
        expected = np.minimum(expected, 6)
    np.testing.assert_allclose(streamed[0], expected, rtol=1e-5, atol=1e-5)
