"""The IGCBlock op (src/operator/igc_block.h): one folded IGCV3 / MobileNetV2 block equals the
same block built from MXNet's Convolution, the plugin's Reorder, clip and elemwise_add, on both
kernels (AVX-512, AVX2+FMA and the portable one), on 1 and 3 threads; bad input is a one-line
error."""

import mxnet as mx
import numpy as np
import pytest

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


def block_symbol(case, residual):
    _, c, _, _, t, f, g, stride, interleave = case
    return mx.sym.IGCBlock(*(mx.sym.var(n) for n in NAMES), expanded=c * t, num_filter=f,
                           num_group=g, stride=stride, interleave=interleave, residual=residual)


def run(symbol, arrays):
    executor = symbol.bind(mx.cpu(), {k: mx.nd.array(v) for k, v in arrays.items()})
    return executor.forward(is_train=False)[0].asnumpy()


def residual_choices(case):
    return (False, True) if case[7] == 1 and case[1] == case[5] else (False,)


def check_case(case):
    for residual in residual_choices(case):
        arrays = block_arrays(case, residual)
        want = run(reference_symbol(case, residual), arrays)
        got = run(block_symbol(case, residual), arrays)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"{case_id(case)} residual={residual}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_block_equals_its_stock_ops(ops, case):
    check_case(case)


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


@pytest.mark.parametrize("variable", ["IGC_BLOCK_AVX2", "IGC_CONV_BASELINE"])
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
                   "(t.CASES[1], t.CASES[3], t.CASES[5], t.CASES[12])]", threads)


def test_non_finite_leftovers_in_the_workspace_do_not_leak(ops):
    """The depthwise kernel reads (and masks off) memory beside each band; a call whose buffers
    were full of NaN must not change the next call's result."""
    case = CASES[12]
    arrays = block_arrays(case, True)
    poisoned = dict(arrays, data=np.full_like(arrays["data"], np.nan))
    symbol = block_symbol(case, True)
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
