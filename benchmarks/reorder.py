#!/usr/bin/env python3
"""Benchmark of the channel permutation: native `Reorder` vs reshape->swapaxes->reshape vs memcpy.

Prints one table: shape, g, threads, method, GB/s (bytes read + written by the permutations
only) and the ratio to a memcpy of the same bytes (np.copyto into a preallocated array)
measured in the same run, the methods of a shape interleaved (harness.py: one process per
thread count, medians).

    python benchmarks/reorder.py                  # all shapes, 1 and 2 threads
    python benchmarks/reorder.py --threads 1 --quick
    python benchmarks/reorder.py --cuda           # CUDA kernel via PyTorch vs a device copy

With --cuda: every zoo network's permutation shapes at its training batch (ZOO) and the shapes of
docs/gpu.md, in float32/16/64, each timed as back-to-back launches between CUDA events against
a device-to-device copy of the same bytes: GPU time per call and GB/s apart.
"""
import argparse
import sys
import time

import numpy as np

import harness

SHAPES = [  # (N, C, H, W), g
    ((64, 48, 32, 32), 24),
    ((64, 96, 16, 16), 2),
    ((64, 192, 8, 8), 24),
    ((64, 192, 32, 32), 2),
    ((32, 256, 56, 56), 16),
    ((32, 2048, 7, 7), 16),
]
QUICK_SHAPES = SHAPES[:3]

# Each zoo network's permutations in its GPU graph (C, H, W, g), at its training batch per device
# (training/recipes.py: CIFAR 64, IGCV1 ImageNet 256, IGCV3 / IGCV2 ImageNet 96). A table, so that
# `--cuda` runs where PyTorch has no MXNet beside it; tests/test_reorder_cuda_index.py derives it
# from the network registry and compares.
ZOO = {
    "plain_igc": (64, [(48, 32, 32, 24), (48, 32, 32, 2), (96, 16, 16, 24), (96, 16, 16, 4),
                       (192, 8, 8, 24), (192, 8, 8, 8)]),
    "resnet_igc": (64, [(48, 32, 32, 24), (48, 32, 32, 2), (96, 16, 16, 24), (96, 16, 16, 2),
                        (96, 16, 16, 4), (192, 8, 8, 24), (192, 8, 8, 4), (192, 8, 8, 8)]),
    "resnet_igc_imgnet_d18": (256, [(200, 56, 56, 100), (200, 56, 56, 2), (400, 28, 28, 200),
                                    (400, 28, 28, 2), (800, 14, 14, 400), (800, 14, 14, 2),
                                    (1600, 7, 7, 800), (1600, 7, 7, 2)]),
    "igcv3": (96, [(32, 112, 112, 2), (96, 112, 112, 2), (144, 56, 56, 2), (192, 28, 28, 2),
                   (384, 14, 14, 2), (576, 14, 14, 2), (960, 7, 7, 2)]),
    "igcv3_cifar": (64, [(32, 32, 32, 2), (96, 32, 32, 2), (144, 32, 32, 2), (192, 16, 16, 2),
                         (384, 8, 8, 2), (576, 8, 8, 2), (960, 4, 4, 2)]),
    "igcv2": (96, [(224, 112, 112, 8), (448, 56, 56, 14), (448, 56, 56, 16), (896, 28, 28, 16),
                   (896, 28, 28, 28), (1792, 14, 14, 28), (1792, 14, 14, 32), (3584, 7, 7, 32),
                   (3584, 7, 7, 56)]),
    "igcv2_cifar": (64, [(256, 32, 32, 8), (512, 32, 32, 16), (1024, 16, 16, 16),
                         (1024, 16, 16, 32), (2048, 8, 8, 32), (4096, 4, 4, 32),
                         (4096, 4, 4, 64)]),
}

# Targets from the issue: the kernel into a preallocated output at >= 0.9x memcpy; what
# training pays (forward+backward in an executor) >= 2x faster than the reshape chain.
KERNEL_TARGET = 0.9
EXECUTOR_SPEEDUP_TARGET = 2.0


def measure_cpu(payload):
    """Runs in the child process; returns rows of (shape, g, method, seconds, bytes)."""
    shapes, min_time = payload["shapes"], payload["min_time"]
    import mxnet as mx

    import utility
    from network import layers
    utility.load_ops()
    kernel = utility.reorder_entry_point("cpu")
    rows = []
    for shape, g in shapes:
        shape = tuple(shape)
        c = shape[1]
        x_np = np.random.RandomState(0).rand(*shape).astype(np.float32)
        nbytes = x_np.nbytes
        dst = np.empty_like(x_np)
        out_np = np.empty_like(x_np)
        x = mx.nd.array(x_np)
        y = mx.nd.empty(shape)
        dy = mx.nd.array(np.random.RandomState(1).rand(*shape).astype(np.float32))

        def executor(sym):
            exe = sym.simple_bind(mx.cpu(), data=shape, grad_req="write")
            exe.arg_dict["data"][:] = x

            def fwd():
                exe.forward(is_train=False)
                exe.outputs[0].wait_to_read()

            def fwd_bwd():
                exe.forward(is_train=True)
                exe.backward(out_grads=[dy])
                exe.grad_dict["data"].wait_to_read()
            return fwd, fwd_bwd

        def in_graph(sym):
            """fwd+bwd with the gradient produced inside the graph (by make_loss, a fill), as
            a permutation inside a network gets it, instead of backward(dy)'s two head copies."""
            exe = mx.sym.make_loss(sym).simple_bind(mx.cpu(), data=shape, grad_req="write")
            exe.arg_dict["data"][:] = x

            def fwd_bwd():
                exe.forward(is_train=True)
                exe.backward()
                exe.grad_dict["data"].wait_to_read()
            return fwd_bwd

        data = mx.sym.var("data")
        chain = layers.permute(data, g, "perm", "reshape")
        op = mx.sym.Reorder(data, branch_factor=g)
        chain_fwd, chain_fwd_bwd = executor(chain)
        op_fwd, op_fwd_bwd = executor(op)

        def chain_imperative():
            permuted = mx.nd.reshape(x, shape=(0, -4, g, c // g, -2))
            mx.nd.reshape(mx.nd.swapaxes(permuted, 1, 2), shape=(0, -3, -2)).wait_to_read()

        methods = [
            ("memcpy (np.copyto)", lambda: np.copyto(dst, x_np), 2),
            ("Reorder kernel, direct C call (no MXNet)",
             lambda: kernel(x_np.ctypes.data, out_np.ctypes.data, shape[0], c,
                            x_np[0, 0].size, g, 0), 2),
            ("MXNet copyto (same bytes, through the engine)",
             lambda: x.copyto(y).wait_to_read(), 2),
            ("reshape chain, imperative, fwd", chain_imperative, 2),
            ("reshape chain, executor, fwd", chain_fwd, 2),
            ("reshape chain, executor, fwd+bwd", chain_fwd_bwd, 4),
            ("Reorder, imperative fresh, fwd",
             lambda: mx.nd.Reorder(x, branch_factor=g).wait_to_read(), 2),
            ("Reorder, imperative out=, fwd",
             lambda: mx.nd.Reorder(x, branch_factor=g, out=y).wait_to_read(), 2),
            ("Reorder, imperative out=, bwd kernel (g'=C/g)",
             lambda: mx.nd.Reorder(x, branch_factor=c // g, out=y).wait_to_read(), 2),
            ("Reorder, executor, fwd", op_fwd, 2),
            ("Reorder, executor, fwd+bwd", op_fwd_bwd, 4),
            ("reshape chain, in graph (make_loss), fwd+bwd", in_graph(chain), 4),
            ("Reorder, in graph (make_loss), fwd+bwd", in_graph(op), 4),
        ]
        seconds = harness.interleaved_medians({name: fn for name, fn, _ in methods}, warmup=2,
                                              min_time=min_time * len(methods))
        for name, _, passes in methods:
            rows.append((list(shape), g, name, seconds[name], passes * nbytes))
    return rows


def print_cpu_table(results):
    header = f"{'shape':<20} {'g':>4} {'thr':>3}  {'method':<48} {'GB/s':>7} {'x memcpy':>9}"
    print(header)
    print("-" * len(header))
    summary = []
    for threads, rows in results:
        by_shape = {}
        for shape, g, name, seconds, nbytes in rows:
            by_shape.setdefault((tuple(shape), g), []).append((name, seconds, nbytes))
        for (shape, g), entries in by_shape.items():
            memcpy_gbs = entries[0][2] / entries[0][1] / 1e9
            gbs = {}
            for name, seconds, nbytes in entries:
                gbs[name] = nbytes / seconds / 1e9
                print(f"{'x'.join(map(str, shape)):<20} {g:>4} {threads:>3}  {name:<48} "
                      f"{gbs[name]:7.2f} {gbs[name] / memcpy_gbs:9.2f}")
            op = min(gbs["Reorder, imperative out=, fwd"],
                     gbs["Reorder, imperative out=, bwd kernel (g'=C/g)"])
            kernel = op / memcpy_gbs
            vs_engine_copy = op / gbs["MXNet copyto (same bytes, through the engine)"]
            speedup = gbs["Reorder, executor, fwd+bwd"] / gbs["reshape chain, executor, fwd+bwd"]
            in_graph = (gbs["Reorder, in graph (make_loss), fwd+bwd"] /
                        gbs["reshape chain, in graph (make_loss), fwd+bwd"])
            summary.append((shape, g, threads, kernel, vs_engine_copy, speedup, in_graph))
        print()
    print(f"Targets: kernel (out=, fwd and bwd) >= {KERNEL_TARGET}x memcpy; executor fwd+bwd "
          f">= {EXECUTOR_SPEEDUP_TARGET}x the reshape chain")
    print(f"{'shape':<20} {'g':>4} {'thr':>3}  {'kernel x memcpy':>16} {'x MXNet copyto':>15}"
          f" {'exec fwd+bwd speedup':>21} {'in-graph speedup':>17}")
    for shape, g, threads, kernel, vs_engine_copy, speedup, in_graph in summary:
        flag = "" if kernel >= KERNEL_TARGET and speedup >= EXECUTOR_SPEEDUP_TARGET else "  (short)"
        print(f"{'x'.join(map(str, shape)):<20} {g:>4} {threads:>3}  {kernel:16.2f} "
              f"{vs_engine_copy:15.2f} {speedup:21.2f} {in_graph:17.2f}{flag}")


# --cuda: the shapes of the first device measurement (docs/gpu.md) and the zoo's.
CUDA_SHAPES = ([("", (256, 192, 56, 56), 2), ("", (256, 48, 32, 32), 24),
                ("", (64, 96, 16, 16), 2), ("", (256, 2048, 7, 7), 16),
                ("", (256, 1600, 7, 7), 800)]
               + [(name, (batch, c, h, w), g) for name, (batch, shapes) in ZOO.items()
                  for c, h, w, g in shapes])
# Target: every tensor of at least 8 MB moves at >= 0.85x a device-to-device copy of the same
# bytes; smaller ones are latency, reported as such.
CUDA_TARGET, CUDA_TARGET_BYTES = 0.85, 8 << 20


def cuda_seconds(torch, fns, rounds=5, batch_seconds=0.01):
    """Median GPU seconds per call of each function in `fns`: each round times a batch of
    back-to-back calls between two CUDA events (no synchronisation between calls), the functions
    in rotating order."""
    def timed(fn, reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps

    reps = {}
    for key, fn in fns.items():
        fn()  # warm-up, then one batch of 10 to size the timed batches
        reps[key] = max(3, min(10000, int(batch_seconds / timed(fn, 10))))
    times = {key: [] for key in fns}
    keys = list(fns)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[key].append(timed(fns[key], reps[key]))
    return {key: sorted(v)[len(v) // 2] for key, v in times.items()}


def bench_cuda(shapes):
    import torch

    import utility
    if not torch.cuda.is_available():
        sys.exit("--cuda needs PyTorch with a CUDA device")
    kernel = utility.reorder_entry_point("cuda")
    arch = "".join(map(str, torch.cuda.get_device_capability()))
    print(f"Reorder on {torch.cuda.get_device_name()} (sm_{arch}), PyTorch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("GB/s: bytes read + written per call; us: GPU time per call of back-to-back launches "
          "(CUDA events); x copy: Reorder GB/s / the device copy's")
    header = (f"{'network':<22} {'shape':<18} {'g':>4} {'dtype':<8} {'MB':>7} {'copy us':>9} "
              f"{'Reorder us':>10} {'copy GB/s':>9} {'GB/s':>7} {'x copy':>6}")
    print(header)
    print("-" * len(header))
    stream = torch.cuda.current_stream().cuda_stream
    short = []
    counted = 0
    seen = set()
    for name, shape, g in shapes:
        if (shape, g) in seen:
            continue
        seen.add((shape, g))
        for dtype in (torch.float32, torch.float16, torch.float64):
            dtype_name = str(dtype).replace("torch.", "")
            label = f"{name or '-':<22} {'x'.join(map(str, shape)):<18} {g:>4} {dtype_name:<8}"
            try:
                x = torch.randn(shape, device="cuda", dtype=dtype)
                out = torch.empty_like(x)
            except torch.cuda.OutOfMemoryError:
                print(f"{label} (no memory for it on this GPU)")
                continue
            code = utility.MX_DTYPE_CODES[dtype_name]
            inner = x[0, 0].numel()
            src, dst = x.data_ptr(), out.data_ptr()
            rc = kernel(src, dst, shape[0], shape[1], inner, g, code, stream)
            if rc != 0:
                sys.exit(f"igc_reorder_cuda returned {rc} for {shape}, g={g}, {dtype_name}")
            t = cuda_seconds(torch, {
                "copy": lambda: out.copy_(x),
                "op": lambda: kernel(src, dst, shape[0], shape[1], inner, g, code, stream)})
            nbytes = x.numel() * x.element_size()
            copy, op = (2 * nbytes / t[k] / 1e9 for k in ("copy", "op"))
            flag = ""
            if nbytes >= CUDA_TARGET_BYTES:
                counted += 1
                if op < CUDA_TARGET * copy:
                    short.append(f"{'x'.join(map(str, shape))} g={g} {dtype_name}")
                    flag = "  (short)"
            print(f"{label} {nbytes / 2 ** 20:7.1f} {t['copy'] * 1e6:9.1f} {t['op'] * 1e6:10.1f} "
                  f"{copy:9.0f} {op:7.0f} {op / copy:6.2f}{flag}")
            x = out = None  # freed before the next shape's tensors
    print(f"\nTensors of at least {CUDA_TARGET_BYTES >> 20} MB at >= {CUDA_TARGET}x copy: "
          f"{counted - len(short)} of {counted}"
          + (f"; short: {', '.join(short)}" if short else ""))


def parent(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_threads_flag(parser)
    parser.add_argument("--quick", action="store_true",
                        help="only the three CIFAR shapes (--cuda: the five of docs/gpu.md)")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds of repetitions per measurement (default: 0.3)")
    parser.add_argument("--cuda", action="store_true",
                        help="benchmark the CUDA kernel from PyTorch instead of the CPU op")
    args = parser.parse_args(argv)
    shapes = [[list(s), g] for s, g in (QUICK_SHAPES if args.quick else SHAPES)]
    if args.cuda:
        bench_cuda(CUDA_SHAPES[:5] if args.quick else CUDA_SHAPES)
        return
    threads = harness.parse_threads(parser, args.threads)
    # One engine worker: the methods run one at a time, each with the OpenMP threads.
    results = harness.per_thread(__file__, dict(shapes=shapes, min_time=args.min_time), threads,
                                 {"MXNET_CPU_WORKER_NTHREADS": "1"})
    harness.print_header("Channel permutation (Reorder) throughput", "mxnet")
    print_cpu_table(list(results.items()))


if __name__ == "__main__":
    sys.exit(harness.main(parent, measure_cpu))
