#!/usr/bin/env python3
"""Benchmark of the channel permutation: native `Reorder` vs reshape->swapaxes->reshape vs memcpy.

Prints one table: shape, g, threads, method, GB/s (bytes read + written by the permutations
only) and the ratio to a memcpy of the same bytes (np.copyto into a preallocated array)
measured in the same run. Each thread count runs in its own process (OMP_NUM_THREADS is read
at start-up).

    python tools/bench_reorder.py                 # all shapes, 1 and 2 threads
    python tools/bench_reorder.py --threads 1 --quick
    python tools/bench_reorder.py --cuda          # CUDA kernel via PyTorch vs a device copy
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHAPES = [  # (N, C, H, W), g
    ((64, 48, 32, 32), 24),
    ((64, 96, 16, 16), 2),
    ((64, 192, 8, 8), 24),
    ((64, 192, 32, 32), 2),
    ((32, 256, 56, 56), 16),
    ((32, 2048, 7, 7), 16),
]
QUICK_SHAPES = SHAPES[:3]

# Targets from the issue: the kernel into a preallocated output at >= 0.9x memcpy; what
# training pays (forward+backward in an executor) >= 2x faster than the reshape chain.
KERNEL_TARGET = 0.9
EXECUTOR_SPEEDUP_TARGET = 2.0


def median_seconds(fn, min_time, min_reps=5, max_reps=200):
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and
                                    len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure_cpu(shapes, min_time):
    """Runs in the child process; returns rows of (shape, g, method, seconds, bytes)."""
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
        for name, fn, passes in methods:
            rows.append((list(shape), g, name, median_seconds(fn, min_time), passes * nbytes))
    return rows


def run_threads(threads, shapes, min_time):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_CPU_WORKER_NTHREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(shapes),
           "--min-time", str(min_time)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"benchmark child with {threads} thread(s) failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def bench_cuda(shapes, min_time):
    import torch

    import utility
    if not torch.cuda.is_available():
        sys.exit("--cuda needs PyTorch with a CUDA device")
    kernel = utility.reorder_entry_point("cuda")
    print(f"device: {torch.cuda.get_device_name()}")
    header = (f"{'shape':<20} {'g':>4} {'dtype':<8} {'d2d copy GB/s':>14} {'Reorder GB/s':>13} "
              f"{'x copy':>7} {'torch shuffle GB/s':>19} {'x copy':>7}")
    print(header)
    print("-" * len(header))
    for shape, g in shapes:
        for dtype in (torch.float32, torch.float16, torch.float64):
            x = torch.randn(shape, device="cuda").to(dtype)
            out = torch.empty_like(x)
            stream = torch.cuda.current_stream().cuda_stream
            code = utility.MX_DTYPE_CODES[str(dtype).replace("torch.", "")]
            inner = x[0, 0].numel()

            def timed(fn):
                def run():
                    fn()
                    torch.cuda.synchronize()
                return median_seconds(run, min_time)
            t_copy = timed(lambda: out.copy_(x))
            t_op = timed(lambda: kernel(x.data_ptr(), out.data_ptr(), shape[0], shape[1], inner,
                                        g, code, stream))
            flat = x.view(shape[0], shape[1], -1)
            t_torch = timed(lambda: torch.nn.functional.channel_shuffle(flat, g))
            nbytes = 2 * x.numel() * x.element_size()
            copy, op, tshuf = (nbytes / t / 1e9 for t in (t_copy, t_op, t_torch))
            print(f"{'x'.join(map(str, shape)):<20} {g:>4} {str(dtype)[6:]:<8} {copy:14.1f} "
                  f"{op:13.1f} {op / copy:7.2f} {tshuf:19.1f} {tshuf / copy:7.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated OMP_NUM_THREADS values (default: 1,2)")
    parser.add_argument("--quick", action="store_true", help="only the three CIFAR shapes")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds of repetitions per measurement (default: 0.3)")
    parser.add_argument("--cuda", action="store_true",
                        help="benchmark the CUDA kernel from PyTorch instead of the CPU op")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(measure_cpu(json.loads(args.child), args.min_time)))
        return
    shapes = [[list(s), g] for s, g in (QUICK_SHAPES if args.quick else SHAPES)]
    if args.cuda:
        bench_cuda([(tuple(s), g) for s, g in shapes], args.min_time)
        return
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got '{args.threads}'")
    print_cpu_table([(t, run_threads(t, shapes, args.min_time)) for t in threads])


if __name__ == "__main__":
    main()
