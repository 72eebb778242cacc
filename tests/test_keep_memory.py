"""utility.keep_freed_memory: freed buffers are reused instead of page-faulting in again."""
import os
import subprocess
import sys


def test_keep_freed_memory_stops_the_page_faults_of_reallocated_buffers():
    """Each training step frees and allocates buffers of tens of MB; glibc's default returns
    them to the OS, so each one page-faults in again (utility.keep_freed_memory)."""
    # malloc/free as MXNet's and oneDNN's buffers do (numpy would ask for huge pages itself)
    script = ("import ctypes, resource, utility; keep = utility.keep_freed_memory(); "
              "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p; "
              "n = 64 << 20\n"
              "def touch():\n"
              "    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(ctypes.c_void_p(p))\n"
              "touch(); f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; touch()\n"
              "print(keep, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    faults = {}
    for setting in ("0", "1"):
        env = dict(os.environ, IGC_KEEP_FREED_MEMORY=setting, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=120, check=True).stdout.split()
        faults[setting] = (out[0] == "True", int(out[1]))
    pages = (64 << 20) // 4096
    assert faults["0"] == (False, faults["0"][1]) and faults["0"][1] > pages // 2
    assert faults["1"][0] and faults["1"][1] < pages // 20
