"""The harness every benchmark here shares: a child process per thread count, interleaved rounds
with medians, the CPU line and the printed table.

A benchmark script calls `harness.main(parent, measure)` at the bottom. The parent parses its flags
and calls `per_thread(__file__, payload, threads)`, which starts the same script once per thread
count with OMP_NUM_THREADS set (OpenMP reads it at start-up, so it cannot change in a running
process) and MXNet's subgraph chatter off; in the child, `measure(payload)` returns something
JSON can carry, which comes back as that thread count's result. Variants are timed with
`interleaved_medians` (A, B, C, A, B, C, ...), so that load from other processes on a shared
machine hits every variant alike, and each reports its median.

A peer framework (PyTorch, ONNX Runtime) runs in a process of its own beside the child
(`Peer`): the script's `peer(payload)` builds its functions there, and the child calls them in
turn with its own, one process computing at a time.
"""
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CHILD_FLAG = "--harness-child"
PEER_FLAG = "--harness-peer"
RESULT_PREFIX = "HARNESS-RESULT "
PEER_PREFIX = "HARNESS-PEER "


def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return dict((k.strip(), v.strip()) for k, _, v in
                (line.partition(":") for line in first.splitlines()) if k.strip())


def _lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return {}
    return dict((k.strip(), v.strip()) for k, _, v in
                (line.partition(":") for line in out.splitlines()) if k.strip())


def cpu_isa(flags):
    """'avx512 (avx512f avx512bw ...)', 'avx2' or 'below avx2' from the CPU flag list."""
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    if avx512:
        return f"avx512 ({' '.join(avx512)})"
    return "avx2" if "avx2" in flags else "below avx2 (no avx2 flag)"


def cpu_line():
    """One line: CPU model (with family/model), logical cores, ISA, and DNNL_MAX_CPU_ISA if set
    (with what it does not limit: a capped table still compares with the peers' AVX-512 code)."""
    info = _cpuinfo() or {}
    lscpu = {} if info else _lscpu()
    model = info.get("model name") or lscpu.get("Model name") or platform.processor() or "unknown"
    family = info.get("cpu family") or lscpu.get("CPU family")
    number = info.get("model") or lscpu.get("Model")
    if family and number:
        model += f" (family {family} model {number})"
    flags = (info.get("flags") or lscpu.get("Flags") or "").split()
    line = f"CPU: {model}, {os.cpu_count()} logical cores, ISA {cpu_isa(flags)}"
    cap = os.environ.get("DNNL_MAX_CPU_ISA")
    if cap:
        line += (f"; DNNL_MAX_CPU_ISA={cap} (oneDNN and the plugin limited to it; not ONNX "
                 "Runtime's MLAS kernels, nor PyTorch's own ATen ones)")
    return line


def versions(*modules):
    """'mxnet 1.9.1, torch 2.13.0+cpu' for the importable ones among `modules` (names)."""
    found = []
    for name in modules:
        try:
            module = __import__(name)
        except ImportError:
            continue
        found.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(found)


def print_header(title, *modules):
    print(title)
    print(cpu_line())
    if modules:
        print(versions(*modules))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()


def child_env(threads, extra_env=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_SUBGRAPH_VERBOSE="0")
    env.update(extra_env or {})
    return env


def _child(script, payload, threads, extra_env):
    cmd = [sys.executable, os.path.abspath(script), CHILD_FLAG, json.dumps(payload)]
    proc = subprocess.run(cmd, env=child_env(threads, extra_env), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        sys.exit(f"benchmark child {os.path.basename(script)} ({threads} thread(s)) failed:\n"
                 f"{proc.stderr[-3000:]}")
    return proc.stdout


def run_child(script, payload, threads, extra_env=None):
    """`measure(payload)` of `script`, run in a fresh process with `threads` OpenMP threads."""
    for line in reversed(_child(script, payload, threads, extra_env).splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    sys.exit(f"benchmark child {os.path.basename(script)} printed no result")


def child_output(script, payload, threads, extra_env=None):
    """Everything the child printed (for logs the child itself cannot read, e.g. DNNL_VERBOSE)."""
    return _child(script, payload, threads, extra_env)


def per_thread(script, payload, threads, extra_env=None):
    """{threads: result} over the thread counts, one child process each."""
    return {t: run_child(script, payload, t, extra_env) for t in threads}


class Peer:
    """Functions built and called in a process of their own: `peer(payload)` of `script` (see
    `main`), which returns ({name: function}, info). `functions()` gives this process one
    callable per name for interleaved_medians, `info` what the peer reported (JSON).

    Why a process: MXNet and PyTorch link the same OpenMP runtime (libgomp.so.1; whichever
    loads first serves both), and libgomp counts the worker threads of every team it has
    started. MXNet's engine worker leads one team and PyTorch's calling thread another; once
    that count exceeds the CPUs, libgomp lets an idle worker spin 100 times instead of about
    300,000 before it sleeps in the kernel, and each parallel region of either framework starts
    by waking one (a 2-thread mobilenetv2_cifar step with a PyTorch peer in its process made
    about 1,560 voluntary context switches, 4 without). A user runs one framework per process.
    The peer inherits the child's environment (threads, pinning), or runs on `threads` OpenMP
    threads of its own where given (so that one child can interleave the same step on several
    thread counts); the pause before each call (interleaved_medians) lets the other process's
    workers go idle first.
    """

    def __init__(self, script, payload, threads=None):
        self.script = os.path.basename(script)
        env = None if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads))
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(script), PEER_FLAG, json.dumps(payload)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        hello = json.loads(self._reply())
        self.names, self.info = hello["names"], hello["info"]

    def _reply(self):
        for line in self._proc.stdout:
            if line.startswith(PEER_PREFIX):
                return line[len(PEER_PREFIX):]
        sys.exit(f"benchmark peer process of {self.script} ended (exit code "
                 f"{self._proc.wait()}) without a reply; its error is above")

    def call(self, name):
        """Runs `name` once in the peer; the seconds the peer timed around it."""
        self._proc.stdin.write(name + "\n")
        self._proc.stdin.flush()
        return float(self._reply())

    def functions(self):
        return {name: PeerCall(self, name) for name in self.names}

    def close(self):
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PeerCall:
    """One of a Peer's functions: a call runs it in the peer and returns the peer's own timing
    of it (interleaved_medians takes that, not the pipe's round trip)."""

    def __init__(self, peer, name):
        self.peer, self.name = peer, name

    def __call__(self):
        return self.peer.call(self.name)


def serve_peer(fns, info):
    """The peer process's loop: announce the names, then run each name read from stdin and
    write back its seconds, until stdin closes."""
    print(PEER_PREFIX + json.dumps({"names": list(fns), "info": info}), flush=True)
    for line in sys.stdin:
        fn = fns[line.strip()]
        t0 = time.perf_counter()
        fn()
        print(PEER_PREFIX + repr(time.perf_counter() - t0), flush=True)


def interleaved_medians(fns, rounds=5, warmup=1, min_time=0.0, max_rounds=200, pause=0.0):
    """Median seconds per call of each function in the dict `fns`, called in turn each round.

    Every function runs `warmup` times first. Then at least `rounds` rounds, and more while the
    rounds so far took under `min_time` seconds in all (at most `max_rounds`). Round r starts at
    the r-th variant (the order rotates), so that each variant follows each other one equally
    often: a variant finds the caches as the one before it left them (a large graph run before
    a small one costs the small one about 2 ms at batch 1). `pause` seconds of sleep before each
    timed call let the previous variant's spinning worker threads (OpenMP's, ONNX Runtime's) go
    idle, so that they do not steal the cores from the next one.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {key: [] for key in fns}
    keys = list(fns)
    start = time.perf_counter()
    done = 0
    while done < rounds or (time.perf_counter() - start < min_time and done < max_rounds):
        for key in keys[done % len(keys):] + keys[:done % len(keys)]:
            fn = fns[key]
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            reported = fn()
            elapsed = time.perf_counter() - t0
            times[key].append(reported if isinstance(fn, PeerCall) else elapsed)
        done += 1
    return {key: statistics.median(v) for key, v in times.items()}


def ratio(numerator, denominator):
    return f"{numerator / denominator:.2f}x" if denominator else "-"


_NUMBER = re.compile(r"^[-+]?[\d,.]+x?%?$")


def print_table(headers, rows):
    """Columns sized to their contents; numbers (and '1.23x' ratios) right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    right = [bool(rows) and all(_NUMBER.match(r[i]) or r[i] == "-" for r in rows)
             for i in range(len(headers))]

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()
    print(line([str(h) for h in headers]))
    print("-" * len(line([str(h) for h in headers])))
    for row in rows:
        print(line(row))


def pinned_env(pin):
    """Child environment for `pin`: OpenMP's threads bound to CPUs (OMP_PROC_BIND=true: every
    OpenMP runtime in the child, MXNet's and oneDNN's and PyTorch's, binds its calling thread to
    the first CPU and each worker to the next), or explicitly not (false)."""
    return {"OMP_PROC_BIND": "true" if pin else "false"}


def ort_affinities(threads, cpus):
    """ONNX Runtime's session.intra_op_thread_affinities for `threads` intra-op threads: the
    pool's own threads (all but the calling one, which OpenMP binding put on cpus[0]) on
    cpus[1], cpus[2], ... in turn, as the 1-based processor numbers ONNX Runtime takes; empty
    for one thread."""
    return ";".join(str(cpus[i % len(cpus)] + 1) for i in range(1, threads))


def add_threads_flag(parser, default="1,2"):
    parser.add_argument("--threads", default=default,
                        help=f"comma-separated OpenMP thread counts, one process each "
                             f"(default: {default})")


def parse_int_list(parser, flag, text, minimum=1):
    """'1,2' -> [1, 2] for `flag`, or a parser error naming it: not integers, or one below
    `minimum` (1: "positive")."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        parser.error(f"{flag} must be comma-separated integers, got {text!r}")
    if not values or any(v < minimum for v in values):
        bound = "positive" if minimum == 1 else f">= {minimum}"
        parser.error(f"{flag} must be {bound}, got {text!r}")
    return values


def parse_threads(parser, text):
    """'1,2' -> [1, 2], or a parser error naming the flag."""
    return parse_int_list(parser, "--threads", text)


def add_rounds_flags(parser, rounds, warmup, quick, unit):
    """--rounds and --warmup (each `unit`, 'call' or 'step', timed or not) with these defaults,
    and --quick for the (rounds, warmup) in `quick`; parse_rounds reads them."""
    parser.add_argument("--rounds", type=int, default=rounds,
                        help=f"timed rounds (default: {rounds})")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help=f"warm-up {unit}s (default: {warmup})")
    parser.add_argument("--quick", action="store_true",
                        help=f"{quick[0]} rounds after {quick[1]} warm-up {unit}"
                             f"{'s' if quick[1] != 1 else ''}")
    parser.set_defaults(quick_rounds=quick)


def parse_rounds(parser, args):
    """(rounds, warmup) from add_rounds_flags' flags, or a parser error naming them."""
    rounds, warmup = args.quick_rounds if args.quick else (args.rounds, args.warmup)
    if rounds < 1 or warmup < 0:
        parser.error(f"--rounds must be >= 1 and --warmup >= 0, got {rounds}, {warmup}")
    return rounds, warmup


def main(parent, measure, peer=None):
    """Entry point of a benchmark script: `measure(payload)` in a child, `peer(payload)` in a
    peer process (see Peer), else `parent()`."""
    if len(sys.argv) == 3 and sys.argv[1] in (CHILD_FLAG, PEER_FLAG):
        # As in the project's training and tools (utility.setup_process): freed memory is kept
        # for reuse, here for the peers too.
        import utility
        utility.keep_freed_memory()
        if sys.argv[1] == PEER_FLAG:
            serve_peer(*peer(json.loads(sys.argv[2])))
            return 0
        # and (MXNet's child only) this thread's own OpenMP regions stay on it
        utility.serial_caller()
        result = measure(json.loads(sys.argv[2]))
        sys.stdout.flush()
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    return parent()
