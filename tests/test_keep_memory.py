"""utility.keep_freed_memory: freed buffers are reused instead of page-faulting in again; it and
the other process-wide settings (utility.setup_process, serial_caller included) are made by
explicit calls only."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = (64 << 20) // 4096
# malloc/free as MXNet's and oneDNN's buffers do (numpy would ask for huge pages itself)
TOUCH = ("import ctypes, resource\n"
         "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p; n = 64 << 20\n"
         "def touch():\n"
         "    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(ctypes.c_void_p(p))\n"
         "def faults():\n"
         "    touch(); f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; touch()\n"
         "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0\n")


def run(script, **env):
    env = dict({k: v for k, v in os.environ.items()
                if k not in ("MXNET_SUBGRAPH_VERBOSE", "IGC_KEEP_FREED_MEMORY",
                             "IGC_SERIAL_CALLER")},
               PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, "-c", TOUCH + script], env=env, capture_output=True,
                          text=True, timeout=120, check=True).stdout.split()


def test_keep_freed_memory_stops_the_page_faults_of_reallocated_buffers():
    """Each training step frees and allocates buffers of tens of MB; glibc's default returns
    them to the OS, so each one page-faults in again (utility.keep_freed_memory)."""
    script = "import utility; keep = utility.keep_freed_memory(); print(keep, faults())"
    faults = {setting: run(script, IGC_KEEP_FREED_MEMORY=setting) for setting in ("0", "1")}
    assert faults["0"][0] == "False" and int(faults["0"][1]) > PAGES // 2
    assert faults["1"][0] == "True" and int(faults["1"][1]) < PAGES // 20


def test_importing_the_project_changes_nothing_until_setup_process_is_called(ops):
    script = ("import os, mxnet as mx\n"
              "binds = (mx.symbol.Symbol.bind, mx.symbol.Symbol.simple_bind)\n"
              "import network, training, utility\n"
              "utility.load_ops()\n"
              "omp = ctypes.CDLL('libgomp.so.1').omp_get_max_threads\n"
              "def state():\n"
              "    same = binds == (mx.symbol.Symbol.bind, mx.symbol.Symbol.simple_bind)\n"
              "    print(os.environ.get('MXNET_SUBGRAPH_VERBOSE'), same, faults(), omp())\n"
              "state(); utility.setup_process(); state()\n")
    (verbose, binds_kept, faults, caller, verbose_set, binds_after, faults_after,
     caller_after) = run(script, OMP_NUM_THREADS="2")
    assert (verbose, binds_kept, caller) == ("None", "True", "2") and int(faults) > PAGES // 2
    # the caller's own OpenMP regions serial (utility.serial_caller), the ops' threads untouched
    assert (verbose_set, binds_after, caller_after) == ("0", "False", "1")
    assert int(faults_after) < PAGES // 20
