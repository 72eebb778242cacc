"""The IGCBlock op (src/operator/igc_block.h): one folded IGCV3 / MobileNetV2 block equals the
same block built from MXNet's Convolution, the plugin's Reorder, clip and elemwise_add, on both
kernels (AVX-512, AVX2+FMA and the portable one), on 1 and 3 threads, with its weights as they
are and packed (packed_weights, the channel-blocked kernel); bad input is a one-line error."""

import mxnet as mx
import numpy as np
import pytest
from cpu_flags import has_avx512

from network.graph.blocks import pack_1x1

NAMES = ("data", "exp_weight", "exp_bias", "dw_weight", "dw_bias", "lin_weight", "lin_bias")
# (batch, channels, height, width, expansion t, out channels, groups, stride, interleave)
CASES = [
    (1, 16, 8, 8, 6, 16, 2, 1, True),
    (2, 16, 9, 7, 6, 16, 2, 1, True),
    (3, 8, 5, 3, 6, 12, 2, 2, True),
    (1, 32, 40, 40, 1, 16, 2, 1, True),     # t = 1 expansion, long rows
    (2, 24, 15, 17, 6, 32, 2, 2, True),     # odd sizes, stride 2
    (1, 24, 34, 34, 6, 24, 2, 2, True),     # even size, stride 2, full vectors
    (1, 12, 7, 7, 6, 12, 1, 1, False),      # MobileNetV2: one group, no permutation
    (1, 6, 1, 1, 6, 6, 2, 1, True),         # one pixel
    (1, 6, 2, 2, 6, 6, 2, 2, True),
    (1, 64, 7, 7, 3, 64, 2, 1, True),
    (1, 64, 14, 14, 6, 64, 4, 1, True),     # 4 groups
    (1, 8, 3, 30, 6, 8, 2, 2, True),
    (2, 96, 12, 12, 6, 96, 2, 1, True),     # several bands per image
    (1, 40, 7, 7, 6, 40, 1, 1, False),      # linear conv summing 240 planes, residual, 49 columns
    (2, 16, 13, 13, 6, 24, 2, 2, True),     # stride 2: 7 outputs per row (a tail past 4)
]


# Extra shapes for the packed kernel (multiples of 8 expanded and output channels per group):
# fewer pixels than a register block, panels of 8 filters, stride 2 on odd widths.
PACKED_EXTRA = [
    (1, 8, 1, 1, 2, 8, 1, 1, False),        # one pixel, one panel of 8
    (1, 16, 2, 2, 3, 16, 2, 2, True),       # 4 input pixels, 1 output; panels of 16 + 8
    (2, 16, 5, 5, 4, 24, 1, 1, False),      # 25 pixels: the last block moved back; 16 + 8 filters
    (1, 24, 3, 11, 2, 16, 1, 2, False),     # stride 2, odd width
    (3, 32, 6, 9, 3, 32, 4, 1, True),       # 4 groups, 3 images
    (1, 8, 13, 13, 3, 24, 1, 1, False),     # 169 pixels: blocks of 6 and 5, of 12 and 11 pixels
]


# Shapes on which the packed kernel's expansion reads a channel-blocked copy of its input (with the
# AVX2 kernels): at most 64 input pixels per band and a group's input rows plus a panel's weights
# above 24 KB (igc_block_packed_cpu.cc, kBlockedPixels / kBlockedBytes): 7 x 7 planes with 128+
# inputs, a channel count off the 8-lane blocks, stride 2, groups with the permutation, a residual.
BLOCKED_INPUT = [
    (1, 128, 7, 7, 2, 16, 1, 1, False),
    (2, 130, 6, 6, 4, 24, 1, 1, False),     # 130 inputs: the last 8-channel block has 2
    (1, 136, 8, 8, 1, 16, 1, 2, False),     # stride 2: 64 input pixels
    (1, 320, 5, 5, 1, 32, 2, 1, True),      # 2 groups of 160 inputs, interleaved
    (1, 160, 7, 7, 1, 160, 1, 1, False),    # residual
]


def packable(case):
    _, c, _, _, t, f, g, _, _ = case
    return (c * t // g) % 8 == 0 and (f // g) % 8 == 0


PACKED_CASES = [c for c in CASES if packable(c)] + PACKED_EXTRA + BLOCKED_INPUT


def case_id(c):
    return "x".join(map(str, c[:4])) + f"-t{c[4]}-f{c[5]}-g{c[6]}-s{c[7]}" + (
        "-inter" if c[8] else "")


def block_arrays(case, residual, seed=0):
    n, c, h, w, t, f, g, _, _ = case
    e = c * t
    rng = np.random.RandomState(seed)
    shapes = [(n, c, h, w), (e, c // g, 1, 1), (e,), (e, 1, 3, 3), (e,), (f, e // g, 1, 1), (f,)]
    scales = [1.0, 0.3, 0.5, 0.3, 0.5, 0.3, 0.5]
    arrays = {name: rng.normal(0.5 if name == "dw_bias" else 0.0, s, shape).astype(np.float32)
              for name, shape, s in zip(NAMES, shapes, scales)}
    return arrays


def reference_symbol(case, residual):
    _, _, _, _, t, f, g, stride, interleave = case
    v = {name: mx.sym.var(name) for name in NAMES}
    e = case[1] * t
    out = mx.sym.Convolution(v["data"], v["exp_weight"], v["exp_bias"], num_filter=e,
                             kernel=(1, 1), num_group=g)
    if interleave:
        out = mx.sym.Reorder(out, branch_factor=g)
    out = mx.sym.Convolution(out, v["dw_weight"], v["dw_bias"], num_filter=e, kernel=(3, 3),
                             stride=(stride, stride), pad=(1, 1), num_group=e)
    out = mx.sym.clip(out, 0, 6)
    out = mx.sym.Convolution(out, v["lin_weight"], v["lin_bias"], num_filter=f, kernel=(1, 1),
                             num_group=g)
    return out + v["data"] if residual else out


def block_symbol(case, residual, packed=False):
    _, c, _, _, t, f, g, stride, interleave = case
    return mx.sym.IGCBlock(*(mx.sym.var(n) for n in NAMES), expanded=c * t, num_filter=f,
                           num_group=g, stride=stride, interleave=interleave, residual=residual,
                           packed_weights=packed)


def packed_arrays(case, arrays):
    g = case[6]
    return dict(arrays, exp_weight=pack_1x1(arrays["exp_weight"], g),
                lin_weight=pack_1x1(arrays["lin_weight"], g))


def run(symbol, arrays):
    executor = symbol.bind(mx.cpu(), {k: mx.nd.array(v) for k, v in arrays.items()})
    return executor.forward(is_train=False)[0].asnumpy()


def residual_choices(case):
    return (False, True) if case[7] == 1 and case[1] == case[5] else (False,)


def check_case(case, packed=False):
    for residual in residual_choices(case):
        arrays = block_arrays(case, residual)
        want = run(reference_symbol(case, residual), arrays)
        got = run(block_symbol(case, residual, packed),
                  packed_arrays(case, arrays) if packed else arrays)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"{case_id(case)} residual={residual}")


def check_packed_case(case):
    check_case(case, packed=True)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_block_equals_its_stock_ops(ops, case):
    check_case(case)


@pytest.mark.parametrize("case", PACKED_CASES, ids=case_id)
def test_packed_block_equals_its_stock_ops(ops, case):
    check_packed_case(case)


def test_pack_1x1_layout():
    """Per group, per panel of 16 filters (then 8), the panel's K x width transpose."""
    f, k, g = 48, 3, 2  # 24 filters per group: panels of 16 and 8
    weight = np.arange(f * k, dtype=np.float32).reshape(f, k, 1, 1)
    packed = pack_1x1(weight, g)
    assert packed.shape == (f * k,) and packed.dtype == np.float32
    at = 0
    for grp in range(g):
        for f0, width in ((0, 16), (16, 8)):
            first = grp * 24 + f0
            for c in range(k):
                np.testing.assert_array_equal(packed[at:at + width],
                                              weight[first:first + width, c, 0, 0])
                at += width
    assert at == f * k


@pytest.mark.parametrize("variable, value", [("DNNL_MAX_CPU_ISA", "AVX2"),
                                              ("IGC_CONV_BASELINE", "1")])
@pytest.mark.parametrize("case", PACKED_CASES[:5] + PACKED_EXTRA[:3], ids=case_id)
def test_packed_portable_kernel_equals_the_stock_ops(ops, case, variable, value, monkeypatch):
    """IGC_CONV_BASELINE=1 runs the packed layouts through the portable C++ kernel."""
    monkeypatch.setenv(variable, value)
    check_packed_case(case)


@pytest.mark.parametrize("variable, value", [("DNNL_MAX_CPU_ISA", "AVX2"),
                                              ("IGC_CONV_BASELINE", "1")])
@pytest.mark.parametrize("case", BLOCKED_INPUT[:4], ids=case_id)
def test_blocked_input_shapes_on_every_kernel(ops, case, variable, value, monkeypatch):
    """The shapes whose expansion reads the channel-blocked input copy, on the AVX2 kernels under
    a oneDNN cap and on the portable ones (which read the rows in place)."""
    monkeypatch.setenv(variable, value)
    check_packed_case(case)


@pytest.mark.parametrize("variable, value", [("IGC_BLOCK_AVX2", "1"),
                                              ("DNNL_MAX_CPU_ISA", "AVX2"),
                                              ("IGC_CONV_BASELINE", "1")])
@pytest.mark.parametrize("case", CASES[:6] + CASES[9:10], ids=case_id)
def test_the_avx2_and_portable_kernels_equal_the_stock_ops(ops, case, variable, value,
                                                           monkeypatch):
    """Where AVX-512 exists the default GEMM is the AVX-512 one: IGC_BLOCK_AVX2=1 or a oneDNN cap
    below AVX-512 picks the AVX2+FMA kernels, IGC_CONV_BASELINE=1 the portable C++ ones (all
    read on every call)."""
    monkeypatch.setenv(variable, value)
    check_case(case)


# Bands of 1 .. 30, 49, 56 and 169 pixels (the AVX-512 kernel splits a band into even register
# blocks of at most 12 pixels: every block size from 1 to 12 runs), 16 and 8 filter panels.
PIXEL_SWEEP = [(1, 16, h, w, 1, 24, 1, 1, False) for h, w in
               [(1, n) for n in range(1, 13)] + [(2, 7), (3, 5), (2, 9), (4, 5), (3, 7), (2, 11),
                                                 (5, 5), (3, 9), (2, 14), (5, 6), (7, 7), (7, 8),
                                                 (13, 13)]]


@pytest.mark.skipif(not has_avx512(), reason="the CPU has no AVX-512")
@pytest.mark.parametrize("case", PACKED_CASES + PIXEL_SWEEP, ids=case_id)
def test_packed_avx512_kernel_equals_the_avx2_one_bit_for_bit(ops, case, monkeypatch):
    """On 16-filter panels the packed kernel's AVX-512 register blocks (a pixel's 16 filters in
    one register) make the same sums in the same order as the AVX2 ones (IGC_BLOCK_AVX2=1)."""
    for residual in residual_choices(case):
        arrays = packed_arrays(case, block_arrays(case, residual))
        symbol = block_symbol(case, residual, packed=True)
        monkeypatch.delenv("IGC_BLOCK_AVX2", raising=False)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        wide = run(symbol, arrays)
        monkeypatch.setenv("IGC_BLOCK_AVX2", "1")
        narrow = run(symbol, arrays)
        np.testing.assert_array_equal(wide, narrow, err_msg=f"{case_id(case)} residual={residual}")
        assert np.isfinite(wide).all() and np.abs(wide).max() > 0


@pytest.mark.parametrize("case", PIXEL_SWEEP[::3], ids=case_id)
def test_packed_pixel_counts_equal_the_stock_ops(ops, case):
    check_packed_case(case)


@pytest.mark.parametrize("variable", ["IGC_BLOCK_AVX2", "IGC_CONV_BASELINE", "IGC_CONV_AVX2",
                                      "IGC_NO_STREAM"])
@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_a_switch_that_is_neither_0_nor_1_is_a_clear_error(ops, variable, value, monkeypatch):
    """The switches' one rule: unset, empty or 0 is off, 1 is on, anything else is refused
    (before, any value of IGC_BLOCK_AVX2, 0 included, meant on)."""
    monkeypatch.setenv(variable, value)
    case = CASES[0]
    with pytest.raises(mx.base.MXNetError) as err:
        run(block_symbol(case, False), block_arrays(case, False))
    assert (f"IGCBlock: environment variable {variable}='{value}' must be 1 (on), 0 or empty "
            "(off), or unset") in str(err.value)
    for off in ("0", ""):
        monkeypatch.setenv(variable, off)
        check_case(case)


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_split_images_and_bands(run_on_threads, threads):
    """Batch 1 on 3 threads splits an image into 3 bands of rows (uneven), batch 2 gives whole
    images; the result must not depend on it."""
    run_on_threads("test_igc_block", "[t.check_case(c) for c in "
                   "(t.CASES[1], t.CASES[3], t.CASES[5], t.CASES[12])]; "
                   "[t.check_packed_case(c) for c in "
                   "(t.CASES[1], t.CASES[3], t.CASES[12], t.PACKED_EXTRA[1], t.PACKED_EXTRA[4], "
                   "t.BLOCKED_INPUT[1], t.BLOCKED_INPUT[3])]",
                   threads)


@pytest.mark.parametrize("packed", [False, True])
def test_non_finite_leftovers_in_the_workspace_do_not_leak(ops, packed):
    """The depthwise kernel reads (and masks off) memory beside each band; a call whose buffers
    were full of NaN must not change the next call's result."""
    case = CASES[12]
    arrays = block_arrays(case, True)
    inputs = packed_arrays(case, arrays) if packed else arrays
    poisoned = dict(inputs, data=np.full_like(arrays["data"], np.nan))
    symbol = block_symbol(case, True, packed)
    executor = symbol.bind(mx.cpu(), {k: mx.nd.array(v) for k, v in poisoned.items()})
    assert np.isnan(executor.forward(is_train=False)[0].asnumpy()).all()
    executor.arg_dict["data"][:] = arrays["data"]
    got = executor.forward(is_train=False)[0].asnumpy()
    want = run(reference_symbol(case, True), arrays)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("attrs, message", [
    (dict(stride=3), "'stride' must be 1 or 2"),
    (dict(num_group=5), "'num_group'=5 must divide"),
    (dict(residual=True, num_filter=12), "residual needs stride 1 and num_filter equal"),
    (dict(expanded=0), "'expanded' must be an integer >= 1"),
    (dict(interleave="maybe"), "'interleave' must be True or False"),
    (dict(pad=1), "unknown attribute 'pad'"),
    (dict(packed_weights=True, num_filter=4, residual=False),
     r"packed_weights needs multiples of 8 expanded and output channels per group, got "
     r"expanded=24, num_filter=4, num_group=2"),
    (dict(packed_weights="sometimes"), "'packed_weights' must be True or False"),
])
def test_bad_attributes_are_one_line_errors(ops, attrs, message):
    base = dict(expanded=24, num_filter=8, num_group=2, stride=1, interleave=True)
    with pytest.raises(mx.MXNetError, match=message):  # at symbol creation or shape inference
        symbol = mx.sym.IGCBlock(*(mx.sym.var(n) for n in NAMES), **dict(base, **attrs))
        symbol.infer_shape(data=(1, 8, 6, 6), exp_weight=(24, 4, 1, 1), exp_bias=(24,),
                           dw_weight=(24, 1, 3, 3), dw_bias=(24,), lin_weight=(8, 12, 1, 1),
                           lin_bias=(8,))


def test_wrong_weight_shape_and_dtype_are_named(ops):
    symbol = block_symbol((1, 8, 6, 6, 3, 8, 2, 1, True), False)
    shapes = dict(data=(1, 8, 6, 6), exp_weight=(24, 4, 1, 1), exp_bias=(24,),
                  dw_weight=(24, 1, 3, 3), dw_bias=(24,), lin_weight=(8, 12, 1, 1), lin_bias=(8,))
    with pytest.raises(mx.MXNetError, match=r"input 'dw_weight' has shape \(24, 1, 5, 5\)"):
        symbol.infer_shape(**dict(shapes, dw_weight=(24, 1, 5, 5)))
    with pytest.raises(mx.MXNetError, match="only float32 is supported"):
        symbol.infer_type(data="float64")


def test_packed_weight_shapes_are_flat(ops):
    symbol = block_symbol((1, 8, 6, 6, 3, 16, 1, 1, False), False, packed=True)
    shapes = dict(data=(1, 8, 6, 6), exp_weight=(24 * 8,), exp_bias=(24,), dw_weight=(24, 1, 3, 3),
                  dw_bias=(24,), lin_weight=(16 * 24,), lin_bias=(16,))
    assert symbol.infer_shape(**shapes)[1] == [(1, 16, 6, 6)]
    with pytest.raises(mx.MXNetError, match=r"input 'lin_weight' has shape \(16, 24, 1, 1\), "
                                            r"expected \(384,\)"):
        symbol.infer_shape(**dict(shapes, lin_weight=(16, 24, 1, 1)))
