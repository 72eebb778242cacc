"""The CUDA Reorder kernels' index math, checked on the CPU.

build/libigc_reorder_cuda_emulator.so runs the kernels' loops over the very mappings that
reorder_gpu.cu calls (src/operator/reorder.h: the launcher's plan, the tile and row mappings,
the run pieces and the shared-memory cursor) and checks every access on the way. Here each zoo
network's permutation shapes and odd sizes, in every dtype and at aligned and unaligned
addresses, must give the numpy reference bit for bit with every output unit written exactly
once, so a kernel change is checked without a GPU (tests/test_reorder_cuda.py runs the kernels
themselves where there is one).
"""
import ctypes
import os
import sys

import numpy as np
import pytest

import reference
import utility

sys.path.insert(0, os.path.join(utility.PROJECT_DIR, "benchmarks"))
from reorder import ZOO  # noqa: E402

EMULATOR = os.path.join(utility.PROJECT_DIR, "build", "libigc_reorder_cuda_emulator.so")
ERRORS = {-1: "arguments rejected", -2: "index out of bounds", -3: "misaligned 16-byte vector",
          -4: "shared memory written twice in a tile", -5: "shared memory read before written"}
DTYPE_BYTES = {"float32": 4, "float64": 8, "float16": 2}

ZOO_SHAPES = sorted({(c, h, w, g) for _, shapes in ZOO.values() for c, h, w, g in shapes})
ODD_SHAPES = [  # (shape, g): rank 2, 3 and 5, 1x1 rows, single-row tiles, rows around 1 KiB
    ((7, 12), 4), ((5, 6, 9), 6), ((3, 30, 3, 5), 5), ((2, 36, 2, 3, 2), 6), ((16, 40, 1, 1), 8),
    ((3, 1600, 1, 1), 800), ((2, 4, 1, 1), 2), ((2, 6, 5, 5), 3), ((2, 12, 11, 23), 4),
    ((2, 12, 16, 16), 6), ((2, 12, 16, 15), 6), ((1, 24, 7, 7), 12), ((3, 10, 7, 7), 5),
]


@pytest.fixture(scope="module")
def emulate():
    if not os.path.isfile(EMULATOR):
        pytest.fail(f"{EMULATOR} not found: run `make ops`")
    fn = ctypes.CDLL(EMULATOR).igc_emulate_reorder_cuda
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 4 + [
        ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def check(emulate, shape, g, dtype, in_offset=0, out_offset=0):
    """Runs the kernels' mappings as if `in`/`out` sat `in_offset`/`out_offset` bytes past a
    256-byte boundary (the unit and vector width depend on it); returns the plan."""
    nbytes = int(np.prod(shape)) * DTYPE_BYTES[dtype]
    x = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    out = np.zeros_like(x)
    writes = np.zeros(nbytes // 2, np.int32)  # per output unit, room for the smallest (2 bytes)
    plan = np.zeros(6, np.int64)
    inner = int(np.prod(shape[2:], dtype=np.int64))
    rc = emulate(x.ctypes.data, out.ctypes.data, writes.ctypes.data, shape[0], shape[1], inner, g,
                 utility.MX_DTYPE_CODES[dtype], 4096 + in_offset, 8192 + out_offset,
                 plan.ctypes.data)
    assert rc == 0, f"{shape} g={g} {dtype}: {ERRORS.get(rc, rc)}"
    tiled, unit, vec = int(plan[0]), int(plan[1]), int(plan[2])
    assert unit in (2, 4, 8, 16)
    units = nbytes // unit
    assert np.array_equal(writes[:units], np.ones(units, np.int32)), (
        f"{shape} g={g} {dtype}: output units written {np.bincount(writes[:units])} times")
    # The reference on whole channel rows of bytes: the kernels only move bytes.
    rows = x.reshape(shape[0], shape[1], -1)
    assert np.array_equal(out.reshape(rows.shape), reference.reorder(rows, g)), (
        f"{shape} g={g} {dtype}: output differs from the reference")
    return {"tiled": bool(tiled), "unit": unit, "vec": vec, "tile": (int(plan[3]), int(plan[4])),
            "smem": int(plan[5])}


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("c,h,w,g", ZOO_SHAPES)
def test_cuda_mappings_move_every_unit_once_on_the_zoo_shapes(emulate, c, h, w, g, dtype):
    plan = check(emulate, (2, c, h, w), g, dtype)
    # Rows under 1 KiB that do not move in 16-byte units on their own (7x7, 14x14 but float32,
    # 1x1) take the shared-memory tiles with 16-byte vectors, in the tile budget.
    row_bytes = h * w * DTYPE_BYTES[dtype]
    assert plan["tiled"] == (row_bytes < 1024 and (row_bytes <= 256 or row_bytes % 16 != 0))
    if plan["tiled"]:
        assert plan["vec"] * plan["unit"] == 16, plan
        assert plan["smem"] <= 16384 + 16 * plan["tile"][0], plan


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape,g", ODD_SHAPES)
def test_cuda_mappings_move_every_unit_once_on_odd_sizes(emulate, shape, g, dtype):
    check(emulate, shape, g, dtype)


@pytest.mark.parametrize("in_offset,out_offset", [(2, 0), (0, 2), (4, 4), (8, 0), (0, 8)])
@pytest.mark.parametrize("shape,g", [((3, 10, 7, 7), 5), ((2, 1600, 7, 7), 800),
                                     ((2, 96, 14, 14), 2), ((5, 6, 9), 6)])
def test_cuda_mappings_at_unaligned_addresses_fall_back_to_narrower_units(
        emulate, shape, g, in_offset, out_offset):
    plan = check(emulate, shape, g, "float16", in_offset, out_offset)
    bits = in_offset | out_offset
    assert plan["unit"] <= bits & -bits, plan  # the widest unit both addresses allow
    assert not plan["tiled"] or plan["vec"] == 1, plan


def test_zoo_table_is_every_networks_gpu_permutations_at_its_training_batch(ops):
    import network
    from training import recipes
    derived = {}
    for name in network.list_networks():
        info = network.network_info(name)
        size = info["input_size"]
        shapes = utility.permutation_shapes(network.get_symbol(name, 10, device="gpu"),
                                            (1, 3, size, size))
        if not shapes:
            continue
        if info["dataset_kind"] == "cifar":
            batch = recipes.CIFAR_RECIPE["batch_size"]
        else:
            batch = recipes.IMAGENET_RECIPES[info["family"]].get(
                "batch_size", recipes.IGCV3_BATCH_PER_DEVICE)
        derived[name] = (batch, [s[1:] + (g,) for s, g in shapes])
    assert derived == ZOO
