"""The native `IGCConv` op (group conv with fused interleaved store) against MXNet's Convolution
followed by the pure-symbol permutation (reshape -> swapaxes -> reshape), and the networks built
with conv_impl='igc' against conv_impl='mxnet'."""
import json

import mxnet as mx
import numpy as np
import pytest
from cpu_flags import has_avx512

from network import layers

# 32x32 planes, 42 filters over 24 inputs: the weight gradient's row dot products on
# output-gradient rows a multiple of 4 KB apart (10 blocks of 4 copied first, 2 rows in place),
# and the data gradient's GEMM (24 rows over 42 planes read from memory, 4 KB apart) with B
# through the 128-column copies on either ISA (test_gemm_avx2_blocks_equal_convolution runs it
# on the AVX2 blocks too).
ALIASED_B_CASE = (2, 24, 32, 32, 42, 1, (1, 1), (1, 1), (0, 0), True, False, "float32")

# (N, C, H, W, F, G, kernel, stride, pad, bias, interleave, dtype): the CIFAR unit shapes, odd
# sizes, rectangular kernels/strides/pads, pads wider than the kernel, rows narrower and wider
# than one vector block (W = 5 .. 70), 1 to 16 channels per group, depthwise, pointwise on small
# planes, float32/float64.
CASES = [
    (2, 4, 5, 7, 4, 2, (3, 3), (1, 1), (1, 1), True, False, "float64"),
    (2, 6, 9, 11, 6, 3, (3, 3), (2, 2), (1, 1), True, True, "float64"),
    (4, 48, 32, 32, 48, 24, (3, 3), (1, 1), (1, 1), False, True, "float32"),
    (4, 48, 32, 32, 48, 24, (3, 3), (2, 2), (1, 1), False, True, "float32"),
    (2, 96, 16, 16, 96, 24, (3, 3), (1, 1), (1, 1), False, True, "float32"),
    (2, 192, 8, 8, 192, 24, (3, 3), (1, 1), (1, 1), True, True, "float32"),
    (2, 8, 7, 9, 12, 4, (1, 3), (2, 1), (0, 2), True, True, "float64"),
    (2, 8, 7, 9, 12, 4, (1, 1), (1, 1), (0, 0), False, False, "float64"),
    (1, 3, 10, 10, 5, 1, (5, 5), (3, 2), (2, 3), True, False, "float64"),
    (2, 4, 5, 70, 4, 4, (3, 3), (1, 1), (1, 1), True, True, "float64"),
    (2, 4, 9, 45, 8, 2, (3, 3), (1, 2), (1, 1), True, True, "float32"),
    (2, 6, 13, 20, 6, 3, (3, 1), (2, 1), (1, 0), True, False, "float64"),
    (2, 6, 13, 20, 6, 3, (1, 1), (1, 1), (3, 3), True, False, "float64"),
    (2, 32, 13, 20, 32, 2, (3, 3), (1, 1), (1, 1), True, True, "float64"),
    (2, 12, 14, 14, 12, 12, (3, 3), (2, 2), (1, 1), False, False, "float32"),
    (1, 5, 4, 4, 10, 5, (4, 4), (1, 1), (0, 0), True, True, "float64"),
    # Pointwise on small planes: the backward takes several images per item, the last block
    # short of images here (9 images, 4 per block), 49 values per image (a vector's tail).
    (9, 8, 7, 7, 12, 4, (1, 1), (1, 1), (0, 0), True, True, "float32"),
    (16, 6, 4, 4, 10, 2, (1, 1), (1, 1), (0, 0), False, False, "float64"),
    (30, 64, 4, 4, 96, 2, (1, 1), (1, 1), (0, 0), True, True, "float32"),  # multi-threaded
    (2, 16, 33, 32, 20, 2, (1, 1), (1, 1), (0, 0), True, False, "float32"),  # one image per item
    # Dense pointwise with sums longer than the GEMM's pass (288 inputs forward, 160 outputs in
    # the data gradient: several passes over B rows) on 7x7 (a last partial block of columns).
    (3, 288, 7, 7, 160, 1, (1, 1), (1, 1), (0, 0), True, False, "float32"),
    # Weight gradient as row dot products (planes of >= 256 values): 289 values (a vector's
    # tail), 3 images per item and a short last block, 7 filters x 5 channels per group.
    (20, 10, 17, 17, 14, 2, (1, 1), (1, 1), (0, 0), True, True, "float32"),
    # The AVX2 GEMM with its A in panels and more than 32 rows (a copy of each pass's B slice):
    # 32x32 planes (rows 4 KB apart), 40 filters (a 4-row last panel) over 136 inputs (two
    # passes) forward, 136 rows over 40 in the data gradient; 3x3 planes (fewer columns than one
    # block: masked, no copy) with 38 filters, and 24 images (3 per weight-gradient item).
    (2, 136, 32, 32, 40, 1, (1, 1), (1, 1), (0, 0), False, False, "float32"),
    (24, 40, 3, 3, 38, 1, (1, 1), (1, 1), (0, 0), True, True, "float32"),
    # Short sums with more than 32 rows (B packed in chunks, weight rows outer): 144 filters
    # over 24 inputs on 15x15 (14 whole column blocks and a last partial one); the data gradient
    # (24 rows over 144, two passes) reads B in place.
    (2, 24, 15, 15, 144, 1, (1, 1), (1, 1), (0, 0), True, False, "float32"),
    # Few rows on rows of 2115 values (B copied 128 columns at a time, the next block
    # prefetched): 8 filters over 136 inputs (two passes), 16 full blocks, a short one and a tail.
    (2, 136, 45, 47, 8, 1, (1, 1), (1, 1), (0, 0), True, False, "float32"),
    # Rows 1 to 4 values past a multiple of 16 (the last columns along the weight rows, 12 / T
    # panels at a time and fewer for the rest): 4x5 planes (T = 4) with 80 filters over 40
    # inputs (14 and 7 panels), 5x10 planes (T = 2) with 70 filters (a 4-row last panel) over 30.
    (3, 40, 4, 5, 80, 1, (1, 1), (1, 1), (0, 0), True, False, "float32"),
    (2, 30, 5, 10, 70, 1, (1, 1), (1, 1), (0, 0), False, False, "float32"),
    # More inputs than filters on planes of 64 to 255 values: the weight gradient with the output
    # gradient transposed (a GEMM over all input channels): 8x8 planes, 96 inputs over 32 filters
    # with a bias; 9x13 planes (117 values: zero tails to a whole vector), 2 groups of 24
    # inputs over 10 filters, interleaved, 10 images (blocks of several images).
    (10, 96, 8, 8, 32, 1, (1, 1), (1, 1), (0, 0), True, False, "float32"),
    (10, 48, 9, 13, 20, 2, (1, 1), (1, 1), (0, 0), True, True, "float32"),
    # Row dot products on output-gradient rows a multiple of 4 KB apart (blocks of 4 copied
    # first): ALIASED_B_CASE (above); 16x16 planes of 4 interleaved groups (filter rows 4 planes
    # = 4 KB apart), 5 filters x 4 inputs per group, 9 images (4 per item, each image a segment
    # of the copy; a last item of 1).
    ALIASED_B_CASE,
    (9, 16, 16, 16, 20, 4, (1, 1), (1, 1), (0, 0), False, True, "float32"),
]
# Depthwise 3x3 at unit stride (one input and one output plane per group: the stencil kernel of
# the forward and the data gradient, in blocks of 4 rows x 2 vectors or 8 rows x 1 vector): 11,
# 9, 6 and 13 rows (every short last block of rows), 20, 9 and 10 columns (two-vector blocks, a
# one-vector block, partial vectors), float32 and float64.
STENCIL_CASES = [
    (2, 6, 11, 20, 6, 6, (3, 3), (1, 1), (1, 1), True, False, "float32"),
    (3, 5, 9, 9, 5, 5, (3, 3), (1, 1), (1, 1), False, True, "float32"),
    (2, 3, 6, 10, 3, 3, (3, 3), (1, 1), (1, 1), False, False, "float32"),
    (2, 4, 13, 20, 4, 4, (3, 3), (1, 1), (1, 1), True, False, "float64"),
]
# Column stride 2 in float32 (the AVX2 split of input rows into column phases, 16 values at a
# time, then 8, then one by one, and the spread of the output gradient over every other column):
# padding 0, 1 and 2 (even input columns in the second phase for odd padding), rows of 37, 40,
# 18, 29 and 32 values (whole blocks, an 8-value step, tails), 3x3 and 5x5 kernels, row stride 2
# and 1.
STRIDE2_CASES = [
    (2, 4, 10, 29, 4, 4, (3, 3), (2, 2), (1, 1), False, True, "float32"),
    (3, 5, 6, 32, 10, 5, (3, 3), (2, 2), (1, 1), True, False, "float32"),
    (2, 6, 11, 37, 6, 6, (3, 3), (2, 2), (0, 0), True, False, "float32"),
    (2, 4, 8, 40, 8, 2, (5, 5), (2, 2), (2, 2), False, True, "float32"),
    (2, 3, 9, 18, 3, 3, (3, 3), (1, 2), (1, 1), True, False, "float32"),
    # Depthwise 3x3 at stride 2, padding 1 (the data gradient by phases from the undilated
    # output gradient): 13 x 53 (a last even row, three 16-column blocks and 5 columns past
    # them), 12 x 50 (a last odd row reading the zero row below, 2 columns past the blocks),
    # 7 x 16 (one block, nothing past it).
    (2, 5, 13, 53, 5, 5, (3, 3), (2, 2), (1, 1), True, False, "float32"),
    (3, 4, 12, 50, 4, 4, (3, 3), (2, 2), (1, 1), False, False, "float32"),
    (2, 3, 7, 16, 3, 3, (3, 3), (2, 2), (1, 1), True, False, "float32"),
]
# Few taps per filter at column stride 2 (input channels x kernel <= 64, 8k filters per group,
# float32: blocks of 6 pixels x 16 filters): 16 + 8 filters on 15 output columns (the last block
# moved back), 2 interleaved groups of 8 filters at row stride 1, a 5 x 5 kernel (50 taps) on
# rows of exactly 6 outputs, 16 + 16 + 8 filters at strides (1, 2) with padding (0, 1).
FEW_TAPS_CASES = [
    (2, 3, 13, 29, 24, 1, (3, 3), (2, 2), (1, 1), True, False, "float32"),
    (2, 6, 9, 17, 16, 2, (3, 3), (1, 2), (1, 1), False, True, "float32"),
    (1, 2, 12, 11, 8, 1, (5, 5), (2, 2), (2, 2), True, False, "float32"),
    (2, 3, 10, 11, 40, 1, (3, 3), (1, 2), (0, 1), True, False, "float32"),
]
# input_branches=B: the conv reads Reorder(B) of its data (one input channel per group). (case,
# B) with C/B != B, so that reading the inverse permutation would fail: IGCV3's depthwise shape
# at stride 1 and 2, two filters per group with a strided column, an interleaved output too, and
# a 1x1 kernel (kept off the pointwise GEMM path, which reads channels in place).
PERMUTED_CASES = [
    ((2, 12, 9, 11, 12, 12, (3, 3), (1, 1), (1, 1), True, False, "float64"), 2),
    ((3, 24, 8, 8, 24, 24, (3, 3), (2, 2), (1, 1), False, False, "float32"), 3),
    ((2, 6, 5, 19, 12, 6, (3, 3), (1, 2), (1, 1), True, False, "float64"), 3),
    ((3, 16, 7, 7, 16, 16, (3, 3), (1, 1), (1, 1), False, True, "float32"), 2),
    ((2, 8, 5, 5, 8, 8, (1, 1), (1, 1), (0, 0), True, False, "float32"), 4),
]
# Depthwise 3x3, padding 1, on small float32 planes (the channel-at-a-time kernels of
# igc_depthwise_cpu.cc): unit stride on rows of 4, 8, 3 and 1 values (rows shorter than a
# vector), 16 rows; stride 2 from 8x8, 16x16, odd 9x5 and 15x13, a 16-column row; with and
# without bias, interleaved outputs, enough work for several threads (16 x 128 x 4 x 4).
DEPTHWISE_SMALL_CASES = [
    (16, 128, 4, 4, 128, 128, (3, 3), (1, 1), (1, 1), True, False, "float32"),
    (3, 24, 8, 8, 24, 24, (3, 3), (1, 1), (1, 1), False, True, "float32"),
    (2, 6, 5, 3, 6, 6, (3, 3), (1, 1), (1, 1), True, False, "float32"),
    (2, 4, 16, 8, 4, 4, (3, 3), (1, 1), (1, 1), True, True, "float32"),
    (3, 5, 1, 1, 5, 5, (3, 3), (1, 1), (1, 1), True, False, "float32"),
    (16, 96, 8, 8, 96, 96, (3, 3), (2, 2), (1, 1), True, False, "float32"),
    (2, 8, 16, 16, 8, 8, (3, 3), (2, 2), (1, 1), False, True, "float32"),
    (2, 6, 9, 5, 6, 6, (3, 3), (2, 2), (1, 1), True, False, "float32"),
    (2, 4, 15, 13, 4, 4, (3, 3), (2, 2), (1, 1), True, True, "float32"),
    (2, 3, 2, 16, 3, 3, (3, 3), (2, 2), (1, 1), False, False, "float32"),
]
TOLERANCE = {"float32": 2e-5, "float64": 1e-12}  # relative to the largest reference magnitude


def conv_symbols(case, weight_name="w", input_branches=1):
    """(IGCConv symbol, reference symbol) over variables data, w[, b]."""
    _, _, _, _, f, g, kernel, stride, pad, bias, interleave, _ = case
    data = mx.sym.var("data")
    params = [mx.sym.var(weight_name)] + ([mx.sym.var("b")] if bias else [])
    attrs = dict(num_filter=f, kernel=kernel, stride=stride, pad=pad, num_group=g, no_bias=not bias)
    extra = {"input_branches": input_branches} if input_branches > 1 else {}
    igc = mx.sym.IGCConv(data, *params, interleave=interleave, **attrs, **extra)
    if input_branches > 1:
        data = layers.permute(data, input_branches, "ref_in", "reshape")
    ref = mx.sym.Convolution(data, *params, **attrs)
    return igc, layers.permute(ref, g, "ref_perm", "reshape") if interleave else ref


def run_forward_backward(sym, arrays, out_grad):
    exe = sym.bind(mx.cpu(), args={k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()},
                   args_grad={k: mx.nd.zeros(v.shape, dtype=v.dtype) for k, v in arrays.items()},
                   grad_req="write")
    out = exe.forward(is_train=True)[0].asnumpy()
    exe.backward(mx.nd.array(out_grad, dtype=out_grad.dtype))
    return out, {k: g.asnumpy() for k, g in exe.grad_dict.items()}


def random_inputs(case, seed=0):
    n, c, h, w, f, g, kernel, _, _, bias, _, dtype = case
    rng = np.random.RandomState(seed)
    arrays = {"data": rng.uniform(-1, 1, (n, c, h, w)).astype(dtype),
              "w": rng.uniform(-1, 1, (f, c // g) + tuple(kernel)).astype(dtype)}
    if bias:
        arrays["b"] = rng.uniform(-1, 1, (f,)).astype(dtype)
    return arrays


def assert_close(got, want, dtype, what):
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got - want).max()) / scale
    assert err <= TOLERANCE[dtype], f"{what}: max relative error {err:.3g}"


def check_against_reference(case, input_branches=1):
    igc, ref = conv_symbols(case, input_branches=input_branches)
    arrays = random_inputs(case)
    out_shape = ref.infer_shape(**{k: v.shape for k, v in arrays.items()})[1][0]
    out_grad = np.random.RandomState(1).uniform(-1, 1, out_shape).astype(case[-1])
    got_out, got_grads = run_forward_backward(igc, arrays, out_grad)
    want_out, want_grads = run_forward_backward(ref, arrays, out_grad)
    assert got_out.shape == want_out.shape
    assert_close(got_out, want_out, case[-1], "output")
    for name in arrays:
        assert_close(got_grads[name], want_grads[name], case[-1], f"gradient of {name}")


def case_id(c):
    return ("x".join(map(str, c[:6])) + f"-k{c[6][0]}{c[6][1]}s{c[7][0]}{c[7][1]}"
            f"p{c[8][0]}{c[8][1]}-{'bias' if c[9] else 'nobias'}-{'inter' if c[10] else 'plain'}"
            f"-{c[11]}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_and_gradients_equal_convolution_plus_permutation(ops, case):
    check_against_reference(case)


@pytest.mark.parametrize("case", STRIDE2_CASES, ids=case_id)
def test_column_stride_2_equals_convolution(ops, case):
    check_against_reference(case)


@pytest.mark.parametrize("case", FEW_TAPS_CASES, ids=case_id)
def test_few_taps_forward_equals_convolution(ops, case):
    check_against_reference(case)
    check_relu6_act(case)


@pytest.mark.parametrize("case", STENCIL_CASES, ids=case_id)
def test_depthwise_unit_stride_equals_convolution(ops, case):
    check_against_reference(case)


@pytest.mark.parametrize("case", STENCIL_CASES[:2], ids=case_id)
def test_sse2_baseline_depthwise_unit_stride_equals_convolution(ops, case, monkeypatch):
    monkeypatch.setenv("IGC_CONV_BASELINE", "1")
    check_against_reference(case)


@pytest.mark.parametrize("case", DEPTHWISE_SMALL_CASES, ids=case_id)
def test_depthwise_on_small_planes_equals_convolution(ops, case):
    check_against_reference(case)


@pytest.mark.parametrize("case", DEPTHWISE_SMALL_CASES[:1] + DEPTHWISE_SMALL_CASES[5:6],
                         ids=case_id)
def test_depthwise_on_small_planes_with_permuted_input(ops, case):
    check_against_reference(case, 4)


@pytest.mark.parametrize("stride, h, w", [(1, 6, 6), (2, 6, 6), (1, 6, 20), (1, 10, 20),
                                          (2, 6, 21), (1, 10, 37)])
def test_depthwise_weight_gradient_ignores_columns_outside_each_tap(ops, stride, h, w):
    """An infinite value in the last input column reaches only the taps that read it: the
    small-plane kernels' vectors reach past the row, as do the general path's last vector of a
    row (rows of 20, 21 and 37 values; its tap passes on 6 rows, its rolling stencil on 10), and
    a 0 * inf there would make every tap NaN."""
    n, c = 2, 3
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (n, c, h, w)).astype("float32")
    x[:, :, 2, w - 1] = np.inf
    weight = rng.uniform(-1, 1, (c, 1, 3, 3)).astype("float32")
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    dy = rng.uniform(0.5, 1, (n, c, ho, wo)).astype("float32")  # positive: no inf - inf
    sym = mx.sym.IGCConv(mx.sym.var("data"), mx.sym.var("w"), num_filter=c, num_group=c,
                         kernel=(3, 3), stride=(stride, stride), pad=(1, 1), no_bias=True)
    _, grads = run_forward_backward(sym, {"data": x, "w": weight}, dy)
    padded = np.pad(x.astype("float64"), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for ky in range(3):
        for kx in range(3):
            window = padded[:, :, ky:ky + stride * ho:stride, kx:kx + stride * wo:stride]
            want = (np.where(dy != 0, window, 0) * dy).sum(axis=(0, 2, 3))
            got = grads["w"][:, 0, ky, kx]
            assert np.array_equal(np.isinf(got), np.isinf(want)), (ky, kx, got, want)
            finite = np.isfinite(want)
            np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)
    assert np.isinf(grads["w"]).any() and np.isfinite(grads["w"]).any()


@pytest.mark.parametrize("case, branches", PERMUTED_CASES,
                         ids=[f"{case_id(c)}-in{b}" for c, b in PERMUTED_CASES])
def test_permuted_input_equals_permutation_plus_convolution(ops, case, branches):
    check_against_reference(case, branches)


# The baseline on a stride-2 conv, rectangular kernels and every pointwise GEMM path above.
SSE2_CASES = [CASES[i] for i in (1, 3, 9, 13, -10, -7, -5, -4, -3, -2, -1)]


@pytest.mark.parametrize("case", SSE2_CASES, ids=case_id)
def test_sse2_baseline_path_equals_convolution_plus_permutation(ops, case, monkeypatch):
    monkeypatch.setenv("IGC_CONV_BASELINE", "1")  # read on every call by the kernels
    check_against_reference(case)


@pytest.mark.parametrize("case, branches", PERMUTED_CASES[1:3],
                         ids=[f"{case_id(c)}-in{b}" for c, b in PERMUTED_CASES[1:3]])
def test_sse2_baseline_permuted_input_equals_permutation_plus_convolution(ops, case, branches,
                                                                         monkeypatch):
    monkeypatch.setenv("IGC_CONV_BASELINE", "1")
    check_against_reference(case, branches)


@pytest.mark.parametrize("threads", [1, 3])
def test_results_do_not_depend_on_the_thread_count(run_on_threads, threads):
    """Items (images x groups, or blocks of images for a pointwise backward) are dealt out to
    the threads dynamically and the weight gradient is summed over per-thread partials."""
    run_on_threads("test_igc_conv", "[t.check_against_reference(c) for c in "
                   "(t.CASES[2], t.CASES[3], t.CASES[-10], t.CASES[-7], t.CASES[-6], "
                   "t.CASES[-5], t.CASES[-4], t.CASES[-3], t.CASES[-2], t.CASES[-1], "
                   "t.DEPTHWISE_SMALL_CASES[0], t.DEPTHWISE_SMALL_CASES[5])] + "
                   "[t.check_against_reference(*t.PERMUTED_CASES[1])]", threads)


# The float32 pointwise cases: every path of the blocked GEMM (panels, copies of B, chunks,
# passes, narrow tails, masked blocks, a residual-free forward and data gradient).
POINTWISE_F32 = [c for c in CASES if c[6] == (1, 1) and c[11] == "float32"]


@pytest.mark.skipif(not has_avx512(), reason="the CPU has no AVX-512")
@pytest.mark.parametrize("case", POINTWISE_F32, ids=case_id)
def test_gemm_avx512_blocks_equal_the_avx2_ones_bit_for_bit(ops, case, monkeypatch):
    """Where AVX-512 exists the pointwise IGCConv's GEMM runs AVX-512 register blocks: the same
    sums in the same order as the AVX2 blocks (IGC_CONV_AVX2=1), forward and both gradients."""
    wide_out, _ = check_avx512_equals_avx2(case, monkeypatch)
    assert np.abs(wide_out).max() > 0


def check_avx512_equals_avx2(case, monkeypatch):
    """IGCConv's forward and gradients on the AVX-512 kernels (IGC_CONV_AVX2=0) equal to the AVX2
    ones' (=1) bit for bit; returns the AVX-512 (output, gradients)."""
    igc, _ = conv_symbols(case)
    arrays = random_inputs(case)
    out_shape = igc.infer_shape(**{k: v.shape for k, v in arrays.items()})[1][0]
    out_grad = np.random.RandomState(1).uniform(-1, 1, out_shape).astype(case[-1])
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("IGC_CONV_AVX2", "0")
    wide_out, wide_grads = run_forward_backward(igc, arrays, out_grad)
    monkeypatch.setenv("IGC_CONV_AVX2", "1")
    narrow_out, narrow_grads = run_forward_backward(igc, arrays, out_grad)
    np.testing.assert_array_equal(wide_out, narrow_out)
    for name in arrays:
        np.testing.assert_array_equal(wide_grads[name], narrow_grads[name], err_msg=name)
    return wide_out, wide_grads


def check_avx512_forward_equals_avx2(case, act, monkeypatch):
    """IGCConv(act) on 8x the random data with a NaN in it, IGC_CONV_AVX2=0 against =1: the same
    outputs bit for bit; returns the AVX-512 one."""
    igc, _ = conv_symbols(case)
    if act == "relu6":
        igc = mx.sym.IGCConv(*igc.get_children(), **{**igc.list_attr(), "act": "relu6"})
    arrays = random_inputs(case)
    arrays["data"] = arrays["data"] * 8
    arrays["data"][0, 0, 1, 2] = np.nan
    args = {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()}
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    outputs = []
    for narrow in ("0", "1"):
        monkeypatch.setenv("IGC_CONV_AVX2", narrow)
        outputs.append(igc.bind(mx.cpu(), args).forward()[0].asnumpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    return outputs[0]


@pytest.mark.skipif(not has_avx512(), reason="the CPU has no AVX-512")
@pytest.mark.parametrize("act", ["none", "relu6"])
@pytest.mark.parametrize("case", FEW_TAPS_CASES + [  # + the stems of odd and ImageNet size
    (2, 3, 17, 23, 32, 1, (3, 3), (2, 2), (1, 1), True, False, "float32"),
    (1, 3, 224, 224, 32, 1, (3, 3), (2, 2), (1, 1), True, False, "float32")], ids=case_id)
def test_few_taps_avx512_equals_the_avx2_kernel_bit_for_bit(ops, case, act, monkeypatch):
    """The few-taps forward (column stride 2) in AVX-512 (vectors along the output row) makes
    each value's sum in the AVX2 kernel's order: the same outputs, with act='relu6' too (a NaN
    input included)."""
    out = check_avx512_forward_equals_avx2(case, act, monkeypatch)
    assert np.isnan(out).any() and (np.abs(out) > 0).any()


# Depthwise 3x3 at unit stride on planes of 14 to 48 columns: the forward and data gradient's
# stencil runs 16-lane AVX-512 vectors where the rows end on a 16-column boundary (14, 16, 31, 32,
# 48: whole, partial and three-vector rows) and stays on 8 lanes elsewhere (24, 40).
STENCIL_CASES = [(2, 5, 11, 16, 5, 5, (3, 3), (1, 1), (1, 1), True, False, "float32"),
                 (1, 3, 7, 32, 3, 3, (3, 3), (1, 1), (1, 1), False, False, "float32"),
                 (2, 4, 9, 31, 4, 4, (3, 3), (1, 1), (1, 1), True, False, "float32"),
                 (1, 2, 5, 14, 2, 2, (3, 3), (1, 1), (1, 1), True, False, "float32"),
                 (1, 2, 3, 48, 2, 2, (3, 3), (1, 1), (1, 1), False, False, "float32"),
                 (2, 3, 6, 24, 3, 3, (3, 3), (1, 1), (1, 1), True, False, "float32"),
                 (1, 2, 4, 40, 2, 2, (3, 3), (1, 1), (1, 1), True, False, "float32")]


@pytest.mark.skipif(not has_avx512(), reason="the CPU has no AVX-512")
@pytest.mark.parametrize("case", STENCIL_CASES, ids=case_id)
def test_stencil_avx512_equals_the_avx2_one_bit_for_bit(ops, case, monkeypatch):
    """The depthwise stencil's 16 lanes (one output each) take every sum's nine terms in the
    8-lane order: the same forward (act='relu6' too, a NaN input included) and gradients."""
    _, grads = check_avx512_equals_avx2(case, monkeypatch)
    relu6 = check_avx512_forward_equals_avx2(case, "relu6", monkeypatch)
    assert np.isnan(relu6).any() and (relu6 == 6).any() and (relu6 == 0).any()
    assert np.abs(grads["data"]).max() > 0


@pytest.mark.parametrize("case", STENCIL_CASES, ids=case_id)
def test_stencil_planes_equal_convolution(ops, case):
    check_against_reference(case)


AVX2_GEMM_CASES = POINTWISE_F32[::2] + [c for c in [ALIASED_B_CASE] if c not in POINTWISE_F32[::2]]


@pytest.mark.parametrize("variable, value", [("IGC_CONV_AVX2", "1"), ("DNNL_MAX_CPU_ISA", "AVX2")])
@pytest.mark.parametrize("case", AVX2_GEMM_CASES + FEW_TAPS_CASES, ids=case_id)
def test_gemm_avx2_blocks_equal_convolution(ops, case, variable, value, monkeypatch):
    """IGC_CONV_AVX2=1 or a oneDNN cap below AVX-512 keeps the GEMM and the few-taps forward on
    their AVX2 kernels."""
    monkeypatch.setenv(variable, value)
    check_against_reference(case)


def test_baseline_switch_other_than_0_or_1_is_a_clear_error(ops, monkeypatch):
    monkeypatch.setenv("IGC_CONV_BASELINE", "on")
    with pytest.raises(mx.base.MXNetError, match="IGCConv: environment variable "
                       "IGC_CONV_BASELINE='on' must be 1"):
        check_against_reference(CASES[1])


@pytest.mark.parametrize("interleave", [False, True])
def test_numeric_gradient_matches_backward(ops, interleave):
    case = (2, 4, 6, 5, 6, 2, (3, 3), (2, 1), (1, 1), True, interleave, "float64")
    igc, _ = conv_symbols(case)
    arrays = random_inputs(case)
    mx.test_utils.check_numeric_gradient(igc, arrays, numeric_eps=1e-6, rtol=1e-5, atol=1e-7,
                                         dtype=np.float64)


def test_shared_weight_gets_the_sum_of_both_uses(ops):
    """lib_api gives the op no write request: each call must write its gradient, and MXNet sums
    the two uses of one weight itself."""
    case = (2, 8, 6, 6, 8, 4, (3, 3), (1, 1), (1, 1), False, True, "float64")
    rng = np.random.RandomState(3)
    arrays = {"data": rng.uniform(-1, 1, (2, 8, 6, 6)), "data2": rng.uniform(-1, 1, (2, 8, 6, 6)),
              "w": rng.uniform(-1, 1, (8, 2, 3, 3))}
    symbols = []
    for igc_op in (True, False):
        outs = []
        w = mx.sym.var("w")  # one variable used by both convolutions
        for data in ("data", "data2"):
            attrs = dict(num_filter=8, kernel=(3, 3), pad=(1, 1), num_group=4, no_bias=True)
            x = mx.sym.var(data)
            outs.append(mx.sym.IGCConv(x, w, interleave=True, **attrs) if igc_op
                        else layers.permute(mx.sym.Convolution(x, w, **attrs), 4, "ref_perm",
                                            "reshape"))
        symbols.append(outs[0] + 2 * outs[1])
    out_grad = rng.uniform(-1, 1, (2, 8, 6, 6))
    (got_out, got), (want_out, want) = (run_forward_backward(s, arrays, out_grad) for s in symbols)
    assert_close(got_out, want_out, case[-1], "output")
    for name in arrays:
        assert_close(got[name], want[name], case[-1], f"gradient of {name}")


# act='relu6' (the inference fusion of conv + clip(0, 6)): the stem shape (3 -> 32, 3x3, stride 2)
# on odd sizes, an interleaved grouped conv, a pointwise one (the GEMM path), float64.
ACT_CASES = [
    (2, 3, 17, 23, 32, 1, (3, 3), (2, 2), (1, 1), True, False, "float32"),
    (2, 8, 9, 11, 12, 4, (3, 3), (1, 1), (1, 1), True, True, "float32"),
    (2, 16, 7, 7, 24, 2, (1, 1), (1, 1), (0, 0), False, True, "float32"),
    (2, 6, 9, 11, 6, 3, (3, 3), (2, 2), (1, 1), True, True, "float64"),
]


def check_relu6_act(case):
    """IGCConv with act='relu6' gives exactly clip(IGCConv, 0, 6), NaN included."""
    igc, _ = conv_symbols(case)
    arrays = random_inputs(case)
    arrays["data"] = arrays["data"] * 8  # outputs on both sides of 0 and of 6
    arrays["data"][0, 0, 1, 2] = np.nan
    fused = mx.sym.IGCConv(*igc.get_children(), **{**igc.list_attr(), "act": "relu6"})
    args = {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()}
    got = fused.bind(mx.cpu(), args).forward()[0].asnumpy()
    want = mx.sym.clip(igc, 0, 6).bind(mx.cpu(), args).forward()[0].asnumpy()
    assert np.isnan(want).any() and (want == 6).any() and (want == 0).any() and (
        (want > 0) & (want < 6)).any()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", ACT_CASES, ids=case_id)
@pytest.mark.parametrize("baseline", ["0", "1"], ids=["avx2", "sse2"])
def test_relu6_act_equals_the_conv_then_clip_nan_included(ops, case, baseline, monkeypatch):
    """Every output clipped to [0, 6] as MXNet's clip does, the same values (NaN stays NaN, in
    the places a NaN input spreads to), whichever kernel ran."""
    monkeypatch.setenv("IGC_CONV_BASELINE", baseline)
    check_relu6_act(case)


# Fewer images x groups than threads: the forward splits each plane's output rows among the
# threads (two chunks per thread, each copying only the input rows it reads): a batch-1 stem
# (3 -> 32, 3x3, stride 2, 65 rows: chunks of 8 and 9 output rows on 2 threads), unit stride
# on 23 rows, 2 groups on 3 threads (4 chunks each), a 5x5 kernel at row stride 2, float64.
ROW_CHUNK_CASES = [
    (1, 3, 65, 61, 32, 1, (3, 3), (2, 2), (1, 1), True, False, "float32"),
    (1, 8, 23, 30, 8, 1, (3, 3), (1, 1), (1, 1), False, False, "float32"),
    (1, 16, 25, 19, 16, 2, (3, 3), (1, 1), (1, 1), True, True, "float64"),
    (1, 4, 31, 24, 8, 1, (5, 5), (2, 1), (2, 2), True, False, "float32"),
]


@pytest.mark.parametrize("threads", [2, 3])
def test_forward_rows_split_among_threads_equal_convolution(run_on_threads, threads):
    """The row chunks of a batch-1 forward together give every output row once, with and
    without act='relu6', on both kernels."""
    run_on_threads("test_igc_conv", "import os; cases = t.ROW_CHUNK_CASES; "
                   "[t.check_against_reference(c) for c in cases]; "
                   "[t.check_relu6_act(c) for c in cases]; "
                   "os.environ['IGC_CONV_BASELINE'] = '1'; "
                   "[t.check_against_reference(c) for c in cases]", threads)


# Batch-1 pointwise convs (the GEMM path) have fewer images x groups than threads too: the
# forward splits each group's filters among the threads in whole 12-row blocks (160 filters: 14
# blocks; 61: 5 whole blocks and 1 row; 2 interleaved groups of 45 on 3 threads, 4 chunks each).
FILTER_CHUNK_CASES = [
    (1, 64, 7, 7, 160, 1, (1, 1), (1, 1), (0, 0), True, False, "float32"),
    (1, 128, 6, 7, 61, 1, (1, 1), (1, 1), (0, 0), False, False, "float32"),
    (1, 96, 8, 8, 90, 2, (1, 1), (1, 1), (0, 0), True, True, "float32"),
]


def save_forward_outputs(cases, path):
    """The inference forward of each case (plain, then act='relu6') into the .npz `path`."""
    outputs = {}
    for i, case in enumerate(cases):
        igc, _ = conv_symbols(case)
        args = {k: mx.nd.array(v * 4, dtype=v.dtype) for k, v in random_inputs(case).items()}
        relu6 = mx.sym.IGCConv(*igc.get_children(), **{**igc.list_attr(), "act": "relu6"})
        for name, sym in (("plain", igc), ("relu6", relu6)):
            outputs[f"{i}_{name}"] = sym.bind(mx.cpu(), args).forward(is_train=False)[0].asnumpy()
    np.savez(path, **outputs)


@pytest.mark.parametrize("threads", [2, 3])
def test_forward_filters_split_among_threads_equal_one_thread(run_on_threads, threads, tmp_path):
    """The filter chunks of a batch-1 pointwise forward give every output once and each value
    the same sum as one thread's GEMM (bytes equal), with and without act='relu6', on the
    default, the AVX2 and the portable GEMM; the results and gradients equal the convolution's."""
    for switch in ("", "IGC_CONV_AVX2", "IGC_CONV_BASELINE"):
        outputs = {}
        for t in (1, threads):
            path = str(tmp_path / f"out{t}{switch}.npz")
            setup = f"import os; os.environ[{switch!r}] = '1'; " if switch else ""
            run_on_threads("test_igc_conv", setup + "cases = t.FILTER_CHUNK_CASES; "
                           f"t.save_forward_outputs(cases, {path!r}); "
                           "[t.check_against_reference(c) for c in cases]; "
                           "[t.check_relu6_act(c) for c in cases]", t)
            outputs[t] = dict(np.load(path))
        assert sorted(outputs[1]) == sorted(outputs[threads]) and len(outputs[1]) == 6
        for key, want in outputs[1].items():
            assert want.size and np.isfinite(want).all()
            np.testing.assert_array_equal(outputs[threads][key], want, err_msg=f"{key} {switch}")


def test_relu6_act_has_no_backward_and_says_so(ops):
    case = ACT_CASES[0]
    igc, _ = conv_symbols(case)
    fused = mx.sym.IGCConv(*igc.get_children(), **{**igc.list_attr(), "act": "relu6"})
    arrays = random_inputs(case)
    exe = fused.bind(mx.cpu(), {k: mx.nd.array(v) for k, v in arrays.items()},
                     args_grad={k: mx.nd.zeros(v.shape) for k, v in arrays.items()})
    exe.forward(is_train=True)
    with pytest.raises(mx.base.MXNetError) as err:
        exe.backward(mx.nd.ones(exe.outputs[0].shape))
        mx.nd.waitall()
    assert "IGCConv: attribute 'act'='relu6' is an inference fusion" in str(err.value)
    assert "has no backward" in str(err.value)


def test_symbol_infers_weight_bias_and_output_shapes(ops):
    sym = mx.sym.IGCConv(mx.sym.var("data"), mx.sym.var("w"), mx.sym.var("b"), num_filter=12,
                         kernel=(3, 3), stride=(2, 2), pad=(1, 1), num_group=4, interleave=True)
    args, outs, _ = sym.infer_shape(data=(2, 8, 9, 10))
    assert dict(zip(sym.list_arguments(), args)) == {"data": (2, 8, 9, 10), "w": (12, 2, 3, 3),
                                                    "b": (12,)}
    assert outs == [(2, 12, 5, 5)]


def call_op(data_shape=(2, 8, 6, 6), weight_shape=(8, 2, 3, 3), dtype="float32", **attrs):
    params = dict(num_filter=8, kernel=(3, 3), pad=(1, 1), num_group=4, no_bias=True)
    params.update(attrs)
    inputs = [mx.nd.ones(data_shape, dtype=dtype), mx.nd.ones(weight_shape, dtype=dtype)]
    return mx.nd.IGCConv(*inputs, **params).asnumpy()


@pytest.mark.parametrize("attrs, shapes, expected", [
    (dict(num_group=3), {}, ["IGCConv", "'num_group'=3", "'num_filter'=8"]),
    (dict(num_group=16, num_filter=16), {"weight_shape": (16, 1, 3, 3)},
     ["IGCConv", "'num_group'=16", "input channel count 8"]),
    (dict(kernel=(0, 3)), {}, ["IGCConv", "'kernel'", "(0, 3)"]),
    (dict(kernel=(3,)), {}, ["IGCConv", "'kernel'", "pair"]),
    (dict(stride=(0, 1)), {}, ["IGCConv", "'stride'", "(0, 1)"]),
    (dict(pad=(-1, 0)), {}, ["IGCConv", "'pad'", "(-1, 0)"]),
    (dict(dilate=(2, 2)), {}, ["IGCConv", "dilation is not supported", "(2, 2)"]),
    (dict(layout="NHWC"), {}, ["IGCConv", "unknown attribute 'layout'"]),
    (dict(num_filter=0), {}, ["IGCConv", "'num_filter'", "'0'"]),
    (dict(interleave="maybe"), {}, ["IGCConv", "'interleave'", "maybe"]),
    (dict(kernel=(9, 9)), {"weight_shape": (8, 2, 9, 9)}, ["IGCConv", "'kernel'=(9, 9)", "larger"]),
    ({}, {"weight_shape": (8, 4, 3, 3)}, ["IGCConv", "'weight'", "(8, 4, 3, 3)", "(8, 2, 3, 3)"]),
    ({}, {"data_shape": (2, 8, 6)}, ["IGCConv", "rank 4", "(2, 8, 6)"]),
    ({}, {"dtype": "float16"}, ["IGCConv", "float16"]),
    (dict(input_branches=0), {}, ["IGCConv", "'input_branches'", "'0'"]),
    (dict(act="relu"), {}, ["IGCConv", "'act' must be none or relu6", "'relu'"]),
    (dict(input_branches=3, num_group=8), {"weight_shape": (8, 1, 3, 3)},
     ["IGCConv", "'input_branches'=3", "does not divide", "input channel count 8"]),
    (dict(input_branches=2), {},
     ["IGCConv", "'input_branches'=2", "one input channel per group", "'num_group'=4"]),
])
def test_invalid_attributes_raise_clear_errors(ops, attrs, shapes, expected):
    with pytest.raises(mx.base.MXNetError) as err:
        call_op(**shapes, **attrs)
    for text in expected:
        assert text in str(err.value)
    # The process keeps working after the error.
    assert call_op().shape == (2, 8, 6, 6)


# --- networks: conv_impl='igc' against conv_impl='mxnet' ---------------------------------------

NET_CONFIG = dict(depth=8, primary_partition=4, secondary_partition=2)


# IGCV3 with few, narrow blocks: its depthwise convs are IGCConv with conv_impl 'igc' (and
# 'auto'), and its BatchNorms the plugin's.
IGCV3_CONFIG = dict(depth_multiplier=0.5, width_multiplier=0.25)


def build_plain_igc(conv_impl):
    import network
    return network.get_symbol("plain_igc", num_classes=10, conv_impl=conv_impl, **NET_CONFIG)


def build_igcv3_cifar(conv_impl):
    import network
    return network.get_symbol("igcv3_cifar", num_classes=10, conv_impl=conv_impl, **IGCV3_CONFIG)


def bind_network(sym, batch=4):
    return sym.simple_bind(mx.cpu(), data=(batch, 3, 32, 32), softmax_label=(batch,),
                           grad_req="write")


@pytest.mark.parametrize("build", [build_plain_igc, build_igcv3_cifar])
def test_igc_network_equals_mxnet_network_outputs_and_gradients(ops, build):
    nets = {impl: build(impl) for impl in ("mxnet", "igc")}
    assert nets["igc"].list_arguments() == nets["mxnet"].list_arguments()
    assert nets["igc"].list_auxiliary_states() == nets["mxnet"].list_auxiliary_states()
    assert any(n["op"] == "IGCConv" for n in _nodes(nets["igc"]))
    assert not any(n["op"] == "IGCConv" for n in _nodes(nets["mxnet"]))
    if build is build_igcv3_cifar:  # IGCV3's permutation read by the depthwise IGCConv
        assert not any(n["op"] == "Reorder" for n in _nodes(nets["igc"]))
        assert any(n["op"] == "Reorder" for n in _nodes(nets["mxnet"]))
        assert any(n.get("attrs", {}).get("input_branches") == "2" for n in _nodes(nets["igc"]))
    exes = {impl: bind_network(sym) for impl, sym in nets.items()}
    rng = np.random.RandomState(0)
    data = rng.uniform(-1, 1, (4, 3, 32, 32)).astype("float32")
    label = np.array([1, 3, 5, 7], dtype="float32")
    for name, arr in exes["mxnet"].arg_dict.items():
        value = data if name == "data" else label if name == "softmax_label" else (
            rng.uniform(-0.5, 0.5, arr.shape) if not name.endswith("gamma") else
            rng.uniform(0.5, 1.5, arr.shape)).astype("float32")
        for exe in exes.values():
            exe.arg_dict[name][:] = value
    results = {}
    for impl, exe in exes.items():
        out = exe.forward(is_train=True)[0].asnumpy()
        exe.backward()
        results[impl] = (out, {k: v.asnumpy() for k, v in exe.grad_dict.items()})
    assert_close(results["igc"][0], results["mxnet"][0], "float32", "network output")
    for name, want in results["mxnet"][1].items():
        if name in ("data", "softmax_label"):
            continue
        np.testing.assert_allclose(results["igc"][1][name], want, rtol=2e-3,
                                   atol=max(2e-4 * float(np.abs(want).max()), 2e-5),
                                   err_msg=f"gradient of {name}")


def _nodes(sym):
    return json.loads(sym.tojson())["nodes"]


@pytest.mark.parametrize("saved_with, loaded_with", [("mxnet", "igc"), ("igc", "mxnet")])
def test_checkpoints_interchange_between_conv_impls(ops, tmp_path, saved_with, loaded_with):
    rng = np.random.RandomState(1)
    data = mx.nd.array(rng.uniform(-1, 1, (4, 3, 32, 32)))
    outputs = {}
    for impl in (saved_with, loaded_with):
        mod = mx.mod.Module(build_plain_igc(impl), context=mx.cpu())
        mod.bind(data_shapes=[("data", (4, 3, 32, 32))], label_shapes=[("softmax_label", (4,))],
                 for_training=False)
        if impl == saved_with:
            mod.init_params(mx.init.Xavier(magnitude=2))
            mod.save_checkpoint(str(tmp_path / "net"), 0)
        else:
            _, arg_params, aux_params = mx.model.load_checkpoint(str(tmp_path / "net"), 0)
            mod.set_params(arg_params, aux_params, allow_missing=False, allow_extra=False)
        mod.forward(mx.io.DataBatch([data]), is_train=False)
        outputs[impl] = mod.get_outputs()[0].asnumpy()
    assert_close(outputs[loaded_with], outputs[saved_with], "float32", "predictions")


ZERO_BATCH_ATTRS = dict(num_filter=4, num_group=2, kernel=(3, 3), pad=(1, 1))


def test_zero_size_batch_is_a_clear_error_and_the_process_stays_healthy(ops):
    empty = mx.nd.array(np.zeros((0, 4, 5, 5), np.float32))
    weight, bias = mx.nd.ones((4, 2, 3, 3)), mx.nd.zeros(4)
    for _ in range(2):
        with pytest.raises(mx.base.MXNetError) as err:
            mx.nd.IGCConv(empty, weight, bias, **ZERO_BATCH_ATTRS).wait_to_read()
        message = str(err.value)
        assert "IGCConv: input 'data' has shape (?, 4, 5, 5) with an axis of unknown size" \
            in message and "size 0" in message, message
    # The next call is correct: each output is the sum over its group's 2 channels x 3x3 window.
    x = np.ones((1, 4, 5, 5), np.float32)
    out = mx.nd.IGCConv(mx.nd.array(x), weight, bias, **ZERO_BATCH_ATTRS).asnumpy()
    np.testing.assert_allclose(out[0, :, 2, 2], 18.0)
    np.testing.assert_allclose(out[0, :, 0, 0], 8.0)


def test_zero_size_batch_under_numpy_shapes_gives_empty_output_and_zero_weight_gradient(ops):
    with mx.util.np_shape(True):
        empty = mx.nd.array(np.zeros((0, 4, 5, 5), np.float32))
        weight, bias = mx.nd.ones((4, 2, 3, 3)), mx.nd.ones(4)
        for array in (empty, weight, bias):
            array.attach_grad()
        weight.grad[:] = 7
        bias.grad[:] = 7
        with mx.autograd.record():
            y = mx.nd.IGCConv(empty, weight, bias, **ZERO_BATCH_ATTRS)
        y.backward(mx.nd.array(np.zeros((0, 4, 5, 5), np.float32)))
        assert y.asnumpy().shape == (0, 4, 5, 5)
        # A sum over no samples: gradients written as 0 (grad_req 'write').
        np.testing.assert_array_equal(weight.grad.asnumpy(), 0)
        np.testing.assert_array_equal(bias.grad.asnumpy(), 0)


# --- the input BatchNorm (in_act): BatchNormApply read inside the conv -------------------------

# (N, C, H, W, F, G, kernel, stride, bias, in_act, input_branches, dtype): the general path at
# unit stride and stride 2 (column phases; rows wider than the stack buffer's share too), the
# narrow depthwise kernels (4x4, 7x7, stride 2 onto 4x4), a group conv, a permuted input, float64,
# and pointwise convs (GEMMs reading the transformed rows from an item buffer) on each of their
# weight-gradient paths: the transposed input on 6x6 and 4x4 planes (2 groups), the transposed
# output gradient on 8x8, row dot products on 16x16; float64 (the applied tensor made first).
IN_BN_CASES = [
    (2, 8, 32, 32, 8, 8, (3, 3), (1, 1), False, "relu6", 1, "float32"),
    (2, 8, 20, 19, 8, 8, (3, 3), (2, 2), False, "relu", 1, "float32"),
    (2, 8, 40, 37, 8, 8, (3, 3), (2, 2), True, "relu6", 1, "float32"),
    (2, 16, 4, 4, 16, 16, (3, 3), (1, 1), False, "relu6", 1, "float32"),
    (2, 8, 7, 7, 8, 8, (3, 3), (1, 1), False, "relu", 1, "float32"),
    (2, 8, 8, 8, 8, 8, (3, 3), (2, 2), False, "none", 1, "float32"),
    (2, 8, 9, 9, 12, 2, (3, 3), (1, 1), True, "none", 1, "float32"),
    (3, 8, 12, 12, 8, 8, (3, 3), (1, 1), False, "relu6", 2, "float32"),
    (2, 8, 6, 6, 6, 1, (1, 1), (1, 1), False, "relu6", 1, "float32"),
    (2, 8, 11, 11, 8, 8, (3, 3), (1, 1), False, "relu6", 1, "float64"),
    (2, 16, 16, 16, 8, 1, (1, 1), (1, 1), False, "relu6", 1, "float32"),
    (3, 24, 8, 8, 8, 1, (1, 1), (1, 1), True, "relu", 1, "float32"),
    (4, 8, 4, 4, 16, 2, (1, 1), (1, 1), False, "none", 1, "float32"),
    (2, 8, 5, 5, 6, 1, (1, 1), (1, 1), False, "relu6", 1, "float64"),
    # the row-dot path (planes of 256 values and more): its BatchNorm sums per image, two
    # chunks of them per row here (the second partial), dx from the data gradient made again
    # (at most 32 filters per group) or kept in data_grad (more)
    (2, 8, 24, 30, 12, 1, (1, 1), (1, 1), False, "relu6", 1, "float32"),
    (2, 8, 32, 20, 40, 1, (1, 1), (1, 1), False, "none", 1, "float32"),
    (2, 16, 16, 20, 72, 2, (1, 1), (1, 1), True, "relu", 1, "float32"),
]


# Large enough to run on several threads, each conv's backward in several blocks of channels
# with the BatchNorm backward run on each (see fused_bn_groups / the narrow kernels' blocks of
# 16): the general path on 32x32 planes, depthwise, and on 16x16 planes of a group conv (4
# groups per block on 1 thread, 1 on 3), at stride 2, the narrow depthwise kernels on 40 channels
# (blocks of 16, 16 and 8), plain and with a permuted input (each block's BatchNorm channels
# scattered over the data); pointwise convs (the BatchNorm backward after theirs, on blocks of
# channels) with row dot products and with the transposed output gradient.
IN_BN_BLOCK_CASES = [
    (4, 16, 32, 32, 16, 16, (3, 3), (1, 1), False, "relu6", 1, "float32"),
    (4, 32, 16, 16, 32, 16, (3, 3), (1, 1), True, "relu", 1, "float32"),
    (16, 40, 8, 8, 40, 40, (3, 3), (1, 1), False, "relu6", 1, "float32"),
    (16, 40, 8, 8, 40, 40, (3, 3), (1, 1), False, "relu6", 4, "float32"),
    (16, 40, 16, 16, 40, 40, (3, 3), (2, 2), False, "none", 1, "float32"),
    (8, 32, 16, 16, 16, 1, (1, 1), (1, 1), False, "relu6", 1, "float32"),
    (16, 48, 8, 8, 16, 2, (1, 1), (1, 1), True, "relu6", 1, "float32"),
    (8, 16, 24, 24, 40, 1, (1, 1), (1, 1), True, "relu", 1, "float32"),
]


def in_bn_id(c):
    return (f"{'x'.join(map(str, c[:6]))}-k{c[6][0]}s{c[7][0]}-{c[9]}"
            f"{'-in' + str(c[10]) if c[10] > 1 else ''}-{c[11]}")


def in_bn_results(case, fused):
    """Output and every gradient (NaN in the data included) of IGCConv(in_act) or of
    BatchNormApply -> IGCConv over the same arrays."""
    n, c, h, w, f, g, kernel, stride, bias, act, branches, dtype = case
    names = ["data", "gamma", "beta", "mean", "invstd", "w"] + (["b"] if bias else [])
    v = {k: mx.sym.var(k) for k in names}
    attrs = dict(kernel=kernel, stride=stride, pad=(kernel[0] // 2, kernel[1] // 2), num_filter=f,
                 num_group=g, no_bias=not bias)
    if branches > 1:
        attrs["input_branches"] = branches
    params = [v["w"]] + ([v["b"]] if bias else [])
    bn = [v["gamma"], v["beta"], v["mean"], v["invstd"]]
    if fused:
        sym = mx.sym.IGCConv(v["data"], *bn, *params, in_act=act, **attrs)
    else:
        sym = mx.sym.IGCConv(mx.sym.BatchNormApply(v["data"], *bn, act=act), *params, **attrs)
    rng = np.random.RandomState(0)
    arrays = {"data": rng.uniform(-3, 5, (n, c, h, w)), "gamma": rng.uniform(0.5, 2, c),
              "beta": rng.uniform(-1, 1, c), "mean": rng.uniform(-0.5, 0.5, c),
              "invstd": rng.uniform(0.5, 2, c), "w": rng.uniform(-1, 1, (f, c // g) + kernel)}
    if bias:
        arrays["b"] = rng.uniform(-1, 1, f)
    arrays["data"][0, 0, 1, 2] = np.nan
    arrays = {k: a.astype(dtype) for k, a in arrays.items()}
    out_shape = sym.infer_shape(**{k: a.shape for k, a in arrays.items()})[1][0]
    out_grad = np.random.RandomState(1).uniform(-1, 1, out_shape).astype(dtype)
    return run_forward_backward(sym, arrays, out_grad)


def check_input_batchnorm(case, exact_weights=True):
    """Fused against unfused, bit for bit; with exact_weights=False the conv's weight and bias
    gradients to rounding only (on several threads the unfused conv's sums over the images are
    split between the threads as they take the items). Returns the fused results."""
    fused_out, fused_grads = in_bn_results(case, True)
    plain_out, plain_grads = in_bn_results(case, False)
    np.testing.assert_array_equal(fused_out, plain_out)
    # The NaN reaches the output, except through ReLU (v > 0 ? v : 0 makes it 0).
    assert np.isnan(fused_out).any() == (case[9] != "relu")
    assert np.isfinite(fused_out).sum() > fused_out.size // 2
    for name, grad in plain_grads.items():
        if exact_weights or name not in ("w", "b"):
            np.testing.assert_array_equal(fused_grads[name], grad, err_msg=name)
        else:
            np.testing.assert_allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-3,
                                       err_msg=name)
    assert np.abs(fused_grads["gamma"][1:]).max() > 0 and not fused_grads["mean"].any()
    return fused_out, fused_grads


# Unit-stride depthwise planes of at most 16 values (4x4, 2x8, 3x5, 2x3, 3x3), which AVX-512
# CPUs run a whole plane per register, and of 8 columns (8, 7, 3 and 12 rows: two rows per
# register, an odd last one alone); each with the input transform of every activation.
SMALL_PLANE_CASES = [(2, 16, 4, 4, 16, 16, (3, 3), (1, 1), True, act, 1, "float32")
                     for act in ("relu6", "relu", "none")] + [
    (2, 8, h, w, 8, 8, (3, 3), (1, 1), bias, act, 1, "float32")
    for h, w, bias, act in ((2, 8, False, "relu6"), (3, 5, True, "relu6"), (2, 3, False, "relu6"),
                            (3, 3, True, "relu6"), (8, 8, False, "relu6"), (7, 8, True, "relu"),
                            (3, 8, True, "none"), (12, 8, False, "relu6"))]


@pytest.mark.skipif(not has_avx512(), reason="the CPU has no AVX-512")
@pytest.mark.parametrize("case", SMALL_PLANE_CASES, ids=in_bn_id)
def test_small_planes_avx512_equal_the_avx2_kernel_bit_for_bit(ops, case, monkeypatch):
    """A plane (or two rows) per 512-bit register makes each output's and data gradient's sum in
    the AVX2 kernel's order, through the same input transform (a NaN input included): the same
    output and gradients, and the fused op still equals BatchNormApply then the conv."""
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("IGC_CONV_AVX2", "0")
    wide_out, wide_grads = check_input_batchnorm(case)
    monkeypatch.setenv("IGC_CONV_AVX2", "1")
    narrow_out, narrow_grads = in_bn_results(case, True)
    np.testing.assert_array_equal(wide_out, narrow_out)
    for name, grad in narrow_grads.items():
        np.testing.assert_array_equal(wide_grads[name], grad, err_msg=name)
    assert (np.nan_to_num(wide_grads["data"]) != 0).any() and (wide_out != 0).any()


def save_input_batchnorm_blocks(path):
    """check_input_batchnorm on IN_BN_BLOCK_CASES; the fused results saved to `path`."""
    saved = {}
    for i, case in enumerate(IN_BN_BLOCK_CASES):
        out, grads = check_input_batchnorm(case, exact_weights=False)
        saved.update({f"{i}_out": out, **{f"{i}_{k}": g for k, g in grads.items()}})
    np.savez(path, **saved)


@pytest.mark.parametrize("case", IN_BN_CASES, ids=in_bn_id)
def test_input_batchnorm_equals_batchnormapply_then_conv_bit_for_bit(ops, case):
    """IGCConv(in_act) applies the BatchNorm as it reads its input (a float64 pointwise conv into
    its workspace first) with the values BatchNormApply computes, and its backward hands the
    gradient through BatchNormApply's: the same output and gradients bit for bit."""
    check_input_batchnorm(case)


@pytest.mark.parametrize("variable, value", [("IGC_CONV_BASELINE", "1"), ("IGC_CONV_AVX2", "1")])
@pytest.mark.parametrize("case", IN_BN_CASES[1::3], ids=in_bn_id)
def test_input_batchnorm_on_the_other_kernels(ops, case, variable, value, monkeypatch):
    """The portable kernels (no fused multiply-add in either op) and the AVX2 ones."""
    monkeypatch.setenv(variable, value)
    check_input_batchnorm(case)


@pytest.mark.parametrize("threads", [1, 3])
def test_input_batchnorm_does_not_depend_on_the_thread_count(run_on_threads, threads):
    run_on_threads("test_igc_conv", "[t.check_input_batchnorm(c) for c in t.IN_BN_CASES[:4]]",
                   threads)


def test_input_batchnorm_in_blocks_of_channels_on_several_threads(run_on_threads, tmp_path):
    """The BatchNorm backward inside the conv's, a block of channels at a time over the batch:
    the same values as BatchNormApply's over the whole tensor, on 1 and 3 threads, and the fused
    op's results do not depend on the thread count, its weight gradient included (each block's
    sums over the images are made on one thread, in image order) except in the pointwise convs,
    whose weight gradient adds the threads' partial sums (to rounding, as unfused)."""
    files = {threads: tmp_path / f"fused{threads}.npz" for threads in (1, 3)}
    for threads, path in files.items():
        run_on_threads("test_igc_conv", f"t.save_input_batchnorm_blocks({str(path)!r})", threads)
    one, three = np.load(files[1]), np.load(files[3])
    assert sorted(one.files) == sorted(three.files) and len(one.files) > 20
    for name in one.files:
        case, key = IN_BN_BLOCK_CASES[int(name.split("_")[0])], name.split("_", 1)[1]
        if case[6] == (1, 1) and key in ("w", "b"):
            np.testing.assert_allclose(one[name], three[name], rtol=1e-5,
                                       atol=1e-5 * np.nanmax(np.abs(one[name])), err_msg=name)
        else:
            np.testing.assert_array_equal(one[name], three[name], err_msg=name)


def test_input_batchnorm_rejects_bad_attributes_and_shapes(ops):
    x, w = mx.nd.ones((2, 4, 5, 5)), mx.nd.ones((4, 1, 3, 3))
    stats = [mx.nd.ones(4)] * 4
    attrs = dict(kernel=(3, 3), pad=(1, 1), num_filter=4, num_group=4, no_bias=True)
    with pytest.raises(mx.base.MXNetError, match="attribute 'in_act' must be none, relu or relu6, "
                                                 "got 'tanh'"):
        mx.nd.IGCConv(x, *stats, w, in_act="tanh", **attrs).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="input 'beta' has shape"):
        mx.sym.IGCConv(mx.sym.var("x"), *[mx.sym.var(k) for k in "abcd"], mx.sym.var("w"),
                       in_act="relu6", **attrs).infer_shape(x=(2, 4, 5, 5), b=(5,))
    assert mx.nd.IGCConv(x, *stats, w, in_act="relu6", **attrs).shape == (2, 4, 5, 5)
