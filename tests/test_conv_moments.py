"""IGCConv(moments=True): the batch statistics of its output for the BatchNorm that reads it,
taken by the conv from each output plane as it writes it (network.fuse_input_batchnorms puts it
in training graphs). The second output must equal BatchNormMoments of the first bit for bit on
every kernel path, thread count and ISA, and change nothing else."""
import mxnet as mx
import numpy as np
import pytest
import test_igc_conv as conv_tests

# (n, c, h, w, f, g, kernel, stride, pad, bias, interleave, dtype), as in test_igc_conv.py: the
# general correlation (odd sizes, strides, interleaved outputs, float64), pointwise GEMMs (also
# interleaved, grouped, 4x4 and 32x32 planes), the few-taps stem, the narrow depthwise kernels,
# and batch-1 convs whose rows are split among the threads.
CASES = (conv_tests.CASES + [
    (4, 16, 4, 4, 32, 1, (1, 1), (1, 1), (0, 0), False, False, "float32"),
    (3, 16, 32, 32, 24, 4, (1, 1), (1, 1), (0, 0), True, True, "float32"),
    (5, 24, 8, 8, 48, 1, (1, 1), (1, 1), (0, 0), False, False, "float64"),
] + conv_tests.FEW_TAPS_CASES[:2] + conv_tests.DEPTHWISE_SMALL_CASES[::2]
    + conv_tests.DEPTHWISE_SMALL_CASES[5:6] + conv_tests.ROW_CHUNK_CASES)


def conv_outputs(case, moments, in_act=None, branches=1):
    """IGCConv's outputs (and, with in_act, the input BatchNorm's inputs added) on random
    arrays whose planes have different means per image and channel."""
    n, c, h, w, f, g, kernel, stride, pad, bias, interleave, dtype = case
    rng = np.random.RandomState(0)
    arrays = conv_tests.random_inputs(case)
    arrays["data"] += rng.uniform(-4, 4, (n, c, 1, 1)).astype(dtype)
    attrs = dict(num_filter=f, kernel=kernel, stride=stride, pad=pad, num_group=g,
                 no_bias=not bias, interleave=interleave)
    params = [mx.nd.array(arrays["w"], dtype=dtype)]
    if bias:
        params.append(mx.nd.array(arrays["b"], dtype=dtype))
    bn = []
    if in_act is not None:
        bn = [mx.nd.array(rng.uniform(lo, hi, c), dtype=dtype)
              for lo, hi in ((0.5, 2), (-1, 1), (-0.5, 0.5), (0.5, 2))]
        attrs["in_act"] = in_act
    if branches > 1:
        attrs["input_branches"] = branches
    if moments:
        attrs["moments"] = True
    outs = mx.nd.IGCConv(mx.nd.array(arrays["data"], dtype=dtype), *bn, *params, **attrs)
    return [o.asnumpy() for o in (outs if moments else [outs])]


def check_moments(case, in_act=None, branches=1):
    out, summary = conv_outputs(case, True, in_act, branches)
    (plain,) = conv_outputs(case, False, in_act, branches)
    np.testing.assert_array_equal(out, plain)
    want = mx.nd.BatchNormMoments(mx.nd.array(plain, dtype=case[-1])).asnumpy()
    assert summary.shape == (2, case[4], 1, 1) and summary.dtype == want.dtype
    np.testing.assert_array_equal(summary, want)
    # And they are the moments: [mean - std, mean + std] per channel.
    mean, std = plain.mean(axis=(0, 2, 3)), plain.std(axis=(0, 2, 3))
    tol = 1e-4 if case[-1] == "float32" else 1e-10
    np.testing.assert_allclose(summary[:, :, 0, 0], [mean - std, mean + std], rtol=tol,
                               atol=tol * max(1.0, float(np.abs(plain).max())))


@pytest.mark.parametrize("case", CASES, ids=conv_tests.case_id)
def test_moments_output_equals_batchnormmoments_of_the_output_bit_for_bit(ops, case):
    check_moments(case)


@pytest.mark.parametrize("case", conv_tests.IN_BN_CASES, ids=conv_tests.in_bn_id)
def test_moments_with_an_input_batchnorm(ops, case):
    n, c, h, w, f, g, kernel, stride, bias, act, branches, dtype = case
    pad = (kernel[0] // 2, kernel[1] // 2)
    check_moments((n, c, h, w, f, g, kernel, stride, pad, bias, False, dtype), act, branches)


@pytest.mark.parametrize("variable, value", [("IGC_CONV_BASELINE", "1"), ("IGC_CONV_AVX2", "1")])
def test_moments_on_the_other_kernels(ops, variable, value, monkeypatch):
    """The portable kernels (both ops pick the same row sums) and the AVX2 GEMM blocks."""
    monkeypatch.setenv(variable, value)
    for case in CASES[::3]:
        check_moments(case)


@pytest.mark.parametrize("threads", [1, 3])
def test_moments_do_not_depend_on_the_thread_count(run_on_threads, threads):
    """On 3 threads every path hands its items out among the threads (the batch-1 convs split
    their rows, so their moments are taken in a pass after the items)."""
    run_on_threads("test_conv_moments", "[t.check_moments(c) for c in t.CASES]", threads)


def test_moments_output_carries_no_gradient_and_changes_no_other(ops):
    """The backward of IGCConv(moments=True), as in a training graph (a BlockGrad reads the
    moments): the same gradients as IGCConv's, whatever gradient reaches the moments."""
    case = (3, 8, 9, 9, 12, 4, (3, 3), (1, 1), (1, 1), True, True, "float32")
    arrays = conv_tests.random_inputs(case)
    igc, _ = conv_tests.conv_symbols(case)
    with_moments = mx.sym.IGCConv(*igc.get_children(), **{**igc.list_attr(), "moments": True})
    out_grad = np.random.RandomState(1).uniform(-1, 1, (3, 12, 9, 9)).astype("float32")
    want_out, want_grads = conv_tests.run_forward_backward(igc, arrays, out_grad)
    exe = with_moments.bind(mx.cpu(), args={k: mx.nd.array(v) for k, v in arrays.items()},
                            args_grad={k: mx.nd.zeros(v.shape) for k, v in arrays.items()})
    outs = exe.forward(is_train=True)
    np.testing.assert_array_equal(outs[0].asnumpy(), want_out)
    exe.backward([mx.nd.array(out_grad), mx.nd.ones((2, 12, 1, 1)) * 7])
    for name, want in want_grads.items():
        np.testing.assert_array_equal(exe.grad_dict[name].asnumpy(), want, err_msg=name)


def test_moments_attribute_infers_its_shape_and_rejects_bad_values(ops):
    sym = mx.sym.IGCConv(mx.sym.var("data"), mx.sym.var("w"), num_filter=12, kernel=(3, 3),
                         pad=(1, 1), num_group=4, no_bias=True, moments=True)
    _, outs, _ = sym.infer_shape(data=(2, 8, 9, 10))
    assert outs == [(2, 12, 9, 10), (2, 12, 1, 1)]
    with pytest.raises(mx.base.MXNetError, match="'moments'"):
        conv_tests.call_op(moments="often")


def test_moments_of_an_empty_batch_are_nan(ops):
    """Under numpy shapes a batch of 0 images runs (an empty output): statistics of no values
    are NaN, not whatever the workspace held."""
    with mx.util.np_shape(True):
        empty = mx.nd.array(np.zeros((0, 4, 5, 5), np.float32))
        out, summary = mx.nd.IGCConv(empty, mx.nd.ones((4, 2, 3, 3)), moments=True, no_bias=True,
                                     **{**conv_tests.ZERO_BATCH_ATTRS})
        assert out.shape == (0, 4, 5, 5)
        assert summary.shape == (2, 4, 1, 1) and np.isnan(summary.asnumpy()).all()
