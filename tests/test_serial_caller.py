"""utility.serial_caller: once the thread that drives MXNet has led an OpenMP team of its own (a
parallel copy in asnumpy), libgomp counts more threads than CPUs and its workers sleep between
every two parallel regions; with the caller kept serial they spin, and the ops keep their
threads."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 20 depthwise IGCConv ops (one parallel region each) in a graph run 40 times after a large
# asnumpy on this thread; prints whether serial_caller applied, this thread's OpenMP thread
# count, the process's voluntary context switches per run and its CPU time over the wall time.
SCRIPT = """
import ctypes, resource, time
import mxnet as mx
import utility
utility.load_ops()
applied = utility.serial_caller()
mx.nd.ones((1 << 22,)).asnumpy()
net = mx.sym.var("data")
for i in range(20):
    net = mx.sym.IGCConv(net, mx.sym.var(f"w{i}"), kernel=(3, 3), pad=(1, 1), num_filter=32,
                         num_group=32, no_bias=True)
executor = net.simple_bind(mx.cpu(), data=(4, 32, 56, 56), grad_req="null")
for array in executor.arg_arrays:
    array[:] = 0.1
for _ in range(3):
    executor.forward()
    executor.outputs[0].wait_to_read()
usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(40):
    executor.forward()
    executor.outputs[0].wait_to_read()
wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
switches = (after.ru_nvcsw - usage.ru_nvcsw) / 40
cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
caller = ctypes.CDLL("libgomp.so.1").omp_get_max_threads()
print(applied, caller, switches, cpu / wall)
"""


def run(setting):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="2", IGC_SERIAL_CALLER=setting,
               MXNET_SUBGRAPH_VERBOSE="0")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    return out[0] == "True", int(out[1]), float(out[2]), float(out[3])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs for 2 OpenMP threads")
def test_a_serial_caller_keeps_the_workers_of_the_ops_spinning(ops):
    off, on = run("0"), run("1")
    assert off[:2] == (False, 2) and on[:2] == (True, 1)
    # off: about 2 per op (a worker falls asleep and is woken for each region); on: the engine's
    # own hand-over per run
    assert off[2] >= 20 and on[2] <= off[2] / 4, (off, on)
    # and the ops still run on both threads (the engine worker's own setting): two CPUs busy
    assert on[3] > 1.5, on
