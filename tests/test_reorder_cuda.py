"""The CUDA Reorder kernel through its plain C entry point, and through MXNet.

The prebuilt mxnet-cu112 runs only on sm_50-86 GPUs, so the kernel is checked from PyTorch,
bit-exactly against torch.nn.functional.channel_shuffle, on any GPU; where mxnet-cu112 sees a
GPU, the Reorder op on mx.gpu() is checked against the numpy reference too. Without a CUDA
device (CI) only the entry point's argument checks run. Nothing here imports MXNet unless it is
installed, so the file runs on a machine with PyTorch alone (tools/gpu_check.sh).
"""
import ctypes
import os

import numpy as np
import pytest

import reference
import utility

if not os.path.isfile(utility.DEFAULT_CUDA_KERNELS_LIB):
    pytest.skip("the CUDA kernels were not built (no nvcc when `make ops` ran)",
                allow_module_level=True)

SHAPES = [  # (shape, g): long rows, 14x14, 7x7 and 1x1 rows, rank 2 and 5, odd sizes
    ((64, 48, 32, 32), 24),
    ((64, 96, 16, 16), 2),
    ((64, 192, 8, 8), 24),
    ((8, 800, 14, 14), 400),
    ((32, 2048, 7, 7), 16),
    ((8, 1600, 7, 7), 800),
    ((16, 960, 7, 7), 2),
    ((3, 10, 11, 23), 5),
    ((16, 40, 1, 1), 8),
    ((7, 12), 4),
    ((3, 30, 3, 5), 5),
    ((2, 36, 2, 3, 2), 6),
    ((5, 6, 9), 6),
    ((5, 6, 9), 1),
]


@pytest.fixture(scope="module")
def kernel():
    return utility.reorder_entry_point("cuda")


def test_cuda_entry_point_rejects_bad_arguments_without_a_gpu(kernel):
    fake_in, fake_out = ctypes.c_void_p(256), ctypes.c_void_p(512)
    assert kernel(fake_in, fake_out, 1, 4, 1, 2, 3, None) == -1  # uint8: unsupported dtype
    assert kernel(fake_in, fake_out, 1, 5, 1, 2, 0, None) == -1  # 2 does not divide 5
    assert kernel(fake_in, fake_out, 1, 4, 1, 0, 0, None) == -1  # no groups
    assert kernel(fake_in, fake_out, 0, 4, 1, 2, 0, None) == 0   # nothing to do


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for PyTorch")
    return torch


def run_kernel(torch, kernel, x, g):
    out = torch.empty_like(x)
    outer, channels = x.shape[0], x.shape[1]
    inner = x[0, 0].numel()
    code = utility.MX_DTYPE_CODES[str(x.dtype).replace("torch.", "")]
    stream = torch.cuda.current_stream().cuda_stream
    rc = kernel(x.data_ptr(), out.data_ptr(), outer, channels, inner, g, code, stream)
    assert rc == 0, f"igc_reorder_cuda returned {rc}"
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("shape,g", SHAPES)
def test_cuda_reorder_equals_torch_channel_shuffle(torch, kernel, shape, g, dtype):
    x = torch.randn(shape, device="cuda").to(getattr(torch, dtype))
    expected = torch.nn.functional.channel_shuffle(x.view(shape[0], shape[1], -1), g).view(shape)
    out = run_kernel(torch, kernel, x, g)
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
    back = run_kernel(torch, kernel, out, shape[1] // g)
    assert torch.equal(back, x)


def test_cuda_reorder_handles_unaligned_pointers(torch, kernel):
    base = torch.randn(1 + 4 * 12 * 7, device="cuda", dtype=torch.float16)
    x = base[1:].view(4, 12, 7)  # 2-byte aligned only
    out = run_kernel(torch, kernel, x, 3)
    torch.cuda.synchronize()
    assert torch.equal(out, torch.nn.functional.channel_shuffle(x, 3))


@pytest.fixture(scope="module")
def mx():
    mx = pytest.importorskip("mxnet")
    if mx.context.num_gpus() == 0:
        pytest.skip("no GPU for MXNet (mxnet-cu112 sees none: it runs on sm_50-86)")
    utility.load_ops()
    return mx


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("shape,g", SHAPES)
def test_mxnet_reorder_on_the_gpu_equals_the_numpy_reference(mx, shape, g, dtype):
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, shape).astype(dtype)
    head = rng.uniform(-1, 1, shape).astype(dtype)
    data = mx.nd.array(x, ctx=mx.gpu(0), dtype=dtype)
    data.attach_grad()
    with mx.autograd.record():
        out = mx.nd.Reorder(data, branch_factor=g)
    out.backward(mx.nd.array(head, ctx=mx.gpu(0), dtype=dtype))
    assert out.context == mx.gpu(0)
    assert np.array_equal(out.asnumpy(), reference.reorder(x, g))
    assert np.array_equal(data.grad.asnumpy(), reference.reorder(head, shape[1] // g))
