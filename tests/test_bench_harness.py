"""benchmarks/harness.py: the child process gets its thread count, variants are interleaved, the
CPU line names the ISA, tables align. (No timing is asserted.)"""
import os
import sys
import textwrap
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import harness  # noqa: E402


def test_child_runs_with_the_requested_threads_and_returns_its_result(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.join(ROOT, "benchmarks")!r})
        import harness

        def measure(payload):
            print("chatter that is not the result")
            return dict(payload, omp=os.environ["OMP_NUM_THREADS"],
                        verbose=os.environ["MXNET_SUBGRAPH_VERBOSE"])

        sys.exit(harness.main(lambda: 3, measure))
    """))
    results = harness.per_thread(str(script), {"x": [1, 2]}, [1, 3])
    assert results == {1: {"x": [1, 2], "omp": "1", "verbose": "0"},
                       3: {"x": [1, 2], "omp": "3", "verbose": "0"}}


def test_failing_child_exits_with_its_stderr(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import sys\nsys.exit('the child says no')\n")
    with pytest.raises(SystemExit) as err:
        harness.run_child(str(script), {}, 1)
    assert "the child says no" in str(err.value) and "broken.py" in str(err.value)


def test_variants_are_called_in_interleaved_rounds():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    seconds = harness.interleaved_medians(fns, rounds=3, warmup=1)
    # one warm-up round, then rounds whose order rotates: each variant follows each other once
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert set(seconds) == {"a", "b", "c"} and all(s >= 0 for s in seconds.values())


PEER_PROBE = f"""
import json, os, sys, time
sys.path.insert(0, {os.path.join(ROOT, "benchmarks")!r})
import harness

def measure(payload):
    with harness.Peer(__file__, payload, threads=payload.get("peer_threads")) as peer:
        fns = {{"local": lambda: None, **peer.functions()}}
        seconds = harness.interleaved_medians(fns, rounds=3, warmup=1)
    return dict(peer.info, child_pid=os.getpid(), seconds=seconds)

def peer(payload):
    if payload.get("fail"):
        raise RuntimeError("the peer cannot build its functions")
    def record(name):
        with open(payload["log"], "a") as log:
            log.write(name + "\\n")
        time.sleep(0.02)
    fns = {{name: (lambda name=name: record(name)) for name in ("slow_a", "slow_b")}}
    return fns, {{"peer_pid": os.getpid(), "omp": os.environ["OMP_NUM_THREADS"]}}

sys.exit(harness.main(lambda: 0, measure, peer))
"""


def test_peer_functions_run_in_their_own_process_in_turn_with_the_childs(tmp_path):
    script, log = tmp_path / "peer_probe.py", tmp_path / "calls.log"
    script.write_text(PEER_PROBE)
    result = harness.run_child(str(script), {"log": str(log)}, 3)
    assert result["peer_pid"] != result["child_pid"] and result["omp"] == "3"
    # warm-up (local, a, b), then 3 rounds rotating by one (local a b, a b local, b local a):
    # the peer ran its calls in the order the child made them
    assert log.read_text().split() == ["slow_a", "slow_b"] * 3 + ["slow_b", "slow_a"]
    # the peer's own timing of each call (it sleeps 20 ms), not the child's of its pipe
    assert min(result["seconds"]["slow_a"], result["seconds"]["slow_b"]) >= 0.02
    assert set(result["seconds"]) == {"local", "slow_a", "slow_b"}


def test_a_peer_can_run_on_threads_of_its_own(tmp_path):
    script, log = tmp_path / "peer_probe.py", tmp_path / "calls.log"
    script.write_text(PEER_PROBE)
    result = harness.run_child(str(script), {"log": str(log), "peer_threads": 2}, 3)
    assert result["omp"] == "2"


def test_a_peer_that_fails_stops_the_child_with_its_error(tmp_path):
    script = tmp_path / "peer_probe.py"
    script.write_text(PEER_PROBE)
    with pytest.raises(SystemExit) as err:
        harness.run_child(str(script), {"log": str(tmp_path / "calls.log"), "fail": True}, 1)
    message = str(err.value)
    assert "the peer cannot build its functions" in message
    assert "benchmark peer process of peer_probe.py ended (exit code 1) without a reply" in message


@pytest.mark.parametrize("flags, isa", [
    (["sse2", "avx", "avx2", "avx512f", "avx512bw"], "avx512 (avx512bw avx512f)"),
    (["sse2", "avx", "avx2", "fma"], "avx2"),
    (["sse2", "sse4_2"], "below avx2 (no avx2 flag)"),
])
def test_isa_from_cpu_flags(flags, isa):
    assert harness.cpu_isa(flags) == isa


def test_cpu_line_notes_a_onednn_isa_cap(monkeypatch):
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    line = harness.cpu_line()
    assert line.startswith("CPU: ") and " ISA " in line
    assert "DNNL_MAX_CPU_ISA=AVX2 (oneDNN and the plugin limited to it; not ONNX" in line
    assert line.endswith("nor PyTorch's own ATen ones)")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA")
    assert "DNNL_MAX_CPU_ISA" not in harness.cpu_line()


def test_table_right_aligns_numeric_columns(capsys):
    harness.print_table(["case", "ms", "ratio"], [["long case name", "1.50", "2.00x"],
                                                   ["b", "12.25", "-"]])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "case               ms  ratio"
    assert lines[2] == "long case name   1.50  2.00x"
    assert lines[3] == "b               12.25      -"


class FakeCudaTorch:
    """Just enough of torch for `benchmarks/reorder.py --cuda`: a device clock that each copy
    and each kernel call advance by its bytes over a bandwidth, CUDA events that read it, and a
    count of synchronisations."""

    COPY_BYTES_PER_S, KERNEL_BYTES_PER_S = 2e12, 1e12
    float32, float16, float64 = "torch.float32", "torch.float16", "torch.float64"
    SIZES = {float32: 4, float16: 2, float64: 8}

    class OutOfMemoryError(Exception):
        pass

    def __init__(self):
        self.clock, self.calls, self.syncs = 0.0, 0, 0
        torch = self

        class Tensor:
            def __init__(self, shape, dtype):
                self.shape, self.dtype = tuple(shape), dtype

            def numel(self):
                return int(np.prod(self.shape))

            def element_size(self):
                return torch.SIZES[self.dtype]

            def data_ptr(self):
                return 4096

            def __getitem__(self, index):  # x[0, 0]
                return Tensor(self.shape[len(index):], self.dtype)

            def copy_(self, other):
                torch.run(2 * other.numel() * other.element_size() / torch.COPY_BYTES_PER_S)

        class Event:
            def __init__(self, enable_timing):
                assert enable_timing

            def record(self):
                self.time = torch.clock

            def synchronize(self):
                torch.syncs += 1

            def elapsed_time(self, end):
                return (end.time - self.time) * 1e3

        self.randn = lambda shape, device, dtype: Tensor(shape, dtype)
        self.empty_like = lambda x: Tensor(x.shape, x.dtype)
        self.__version__ = "2.11.0"
        self.cuda = types.SimpleNamespace(
            is_available=lambda: True, get_device_name=lambda: "Fake GPU",
            get_device_capability=lambda: (9, 0), Event=Event,
            OutOfMemoryError=self.OutOfMemoryError,
            current_stream=lambda: types.SimpleNamespace(cuda_stream=0))

    def run(self, seconds):
        self.clock += seconds
        self.calls += 1

    def kernel(self, src, dst, outer, channels, inner, g, code, stream):
        size = {0: 4, 2: 2, 1: 8}[code]
        self.run(2 * outer * channels * inner * size / self.KERNEL_BYTES_PER_S)
        return 0


def test_reorder_cuda_benchmark_times_back_to_back_calls_between_events(monkeypatch, capsys):
    import reorder

    import utility
    torch = FakeCudaTorch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(utility, "reorder_entry_point", lambda device: torch.kernel)
    reorder.bench_cuda([("small", (2, 4, 3, 3), 2), ("big", (64, 256, 16, 16), 2)])
    out = capsys.readouterr().out
    # One synchronisation per timed batch, not per call.
    assert torch.calls > 50 * torch.syncs
    big = [line.split() for line in out.splitlines() if line.startswith("big")]
    assert [row[3] for row in big] == ["float32", "float16", "float64"]
    # 16 MiB of float32: copy 2 x 16 MiB / 2 TB/s = 16.8 us, the kernel twice that, 0.50x copy.
    assert big[0][4:10] == ["16.0", "16.8", "33.6", "2000", "1000", "0.50"]
    assert big[0][10] == "(short)"
    assert "Tensors of at least 8 MB at >= 0.85x copy: 0 of 3; short: 64x256x16x16 g=2 float32" \
        in out


def test_profile_step_lists_every_conv_layer_with_its_times(ops, capsys):
    """benchmarks/profile_step.py on a tiny mobilenetv2_cifar step: one row per convolution of
    the graph (every one an IGCConv in the graph the step binds, the stem included), in graph
    order, with positive times and the multiply-adds of its shapes; the op table has the
    convolutions and the BatchNorm passes."""
    import profile_step

    import network
    assert profile_step.parent(["--family", "mobilenetv2_cifar", "--batch", "2", "--steps", "2",
                                "--warmup", "1", "--top", "40"]) == 0
    out = capsys.readouterr().out
    layers = profile_step.conv_layers(network.get_symbol("mobilenetv2_cifar", 10), (2, 3, 32, 32))
    assert len(layers) == 53 and {op for op, *_ in layers} == {"IGCConv", "Convolution"}
    rows = [line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in {name for _, name, *_ in layers}]
    assert [r[0] for r in rows] == [name for _, name, *_ in layers]
    for row, (_, _, src, dst, kernel, groups, macs) in zip(rows, layers):
        assert row[1:6] == ["x".join(map(str, src)), "x".join(map(str, dst)),
                            "x".join(map(str, kernel)), str(groups), f"{macs / 1e6:.0f}"]
        assert float(row[6]) > 0 and float(row[8]) > 0
    # the first 1x1 conv after the stem: 2 images of 32x32, 32 -> 32 channels
    assert layers[1][1:] == ("seq-0-block0-exp-conv2d", (2, 32, 32, 32), (2, 32, 32, 32),
                             (1, 1), 1, 2 * 32 * 32 * 32 * 32)
    for op in ("_backward_IGCConv", "IGCConv", "BatchNormApply", "_backward_BatchNormApply"):
        assert any(line.split()[:1] == [op] for line in out.splitlines()), op
    assert not any(line.split()[:1] == ["Convolution"] for line in out.splitlines())


def test_fusion_ab_times_each_graph_in_interleaved_rounds(ops, capsys):
    """benchmarks/fusion_ab.py on a tiny mobilenetv2_cifar step: one row per graph variant, in
    order, with a positive step time, its ratio to the unfused graph's and its wins over the
    variant above in the given rounds."""
    import fusion_ab
    assert fusion_ab.parent(["--family", "mobilenetv2_cifar", "--batch", "2", "--rounds", "3",
                             "--threads", "1"]) == 0
    out = capsys.readouterr().out
    labels = [label for label, _ in fusion_ab.VARIANTS]
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in [[x] for x in labels]]
    assert [r[0] for r in rows] == labels
    for row in rows:
        assert float(row[1]) > 0 and row[2].endswith("x")
    assert rows[0][2] == "1.00x" and rows[0][3] == "-"
    assert all(r[3].endswith("/3") for r in rows[1:])
    with pytest.raises(SystemExit):
        fusion_ab.parent(["--family", "mobilenetv2_cifar", "--rounds", "0"])


def test_profile_step_refuses_bad_flags():
    import profile_step
    with pytest.raises(SystemExit):
        profile_step.parent(["--family", "resnet50"])
    with pytest.raises(SystemExit):
        profile_step.parent(["--family", "igcv3_cifar", "--steps", "0"])


@pytest.mark.parametrize("threads, cpus, want", [(1, [0, 1], ""), (2, [0, 1], "2"),
                                                 (3, [4, 5, 6], "6;7"), (3, [0, 1], "2;1")])
def test_onnxruntime_pool_threads_go_to_the_cpus_after_the_first(threads, cpus, want):
    """1-based processor numbers, one per pool thread (the calling thread is not ORT's to pin),
    starting after the CPU OpenMP binds the calling thread to, wrapping past the last."""
    assert harness.ort_affinities(threads, cpus) == want


@pytest.mark.parametrize("flags, pinned", [([], True), (["--no-pin"], False)])
def test_inference_benchmark_pins_every_runtime_unless_told_not_to(monkeypatch, capsys, flags,
                                                                   pinned):
    """The children get OMP_PROC_BIND (true, or false with --no-pin), the payload says whether
    to pin ONNX Runtime's pool and on which CPUs, and the header says which it was."""
    import inference_peers
    calls = []

    def fake_child(script, payload, threads, extra_env=None):
        calls.append((payload, threads, extra_env))
        times = {"MXNet": 0.02, "MXNet optimized": 0.01, "PyTorch": 0.03, "ONNX Runtime": 0.012}
        return {"rows": [(payload["networks"][0], b, times) for b in payload["batches"]]}

    monkeypatch.setattr(harness, "run_child", fake_child)
    assert inference_peers.parent(flags + ["--threads", "1,2", "--batches", "1",
                                           "--networks", "mobilenetv2"]) == 0
    assert [threads for _, threads, _ in calls] == [1, 2]
    for payload, _, env in calls:
        assert env == {"OMP_PROC_BIND": "true" if pinned else "false"}
        assert payload["pin"] is pinned and payload["cpus"] == sorted(os.sched_getaffinity(0))
    out = capsys.readouterr().out
    assert ("threads: pinned (OMP_PROC_BIND=true" in out) is pinned
    assert ("threads: not pinned (--no-pin" in out) is not pinned
    assert "1.20x" in out  # ORT 12 ms / MXNet optimized 10 ms


def test_training_benchmark_prints_each_steps_gain_from_threads_beside_a_memory_pass(monkeypatch,
                                                                                     capsys):
    """With 1 and 2 threads the table gains each step's time on 1 thread against 2 (project and
    PyTorch), and a line gives the same for a pass at memory speed, run in a child of its own."""
    import train_peers
    calls = []

    def fake_child(script, payload, threads, extra_env=None):
        calls.append((dict(payload), threads))
        if payload.get("memory"):
            return {1: 0.040, 2: 0.030}[threads]
        return 1000, [[1, 0.600, 1.200], [2, 0.400, 0.600]]

    monkeypatch.setattr(harness, "run_child", fake_child)
    assert train_peers.parent(["--threads", "1,2", "--families", "mobilenetv2_cifar",
                               "--quick"]) == 0
    # one child for the step on both thread counts (interleaved there), then the memory pass
    # in a child per count
    assert [(p.get("memory", False), p.get("threads"), t) for p, t in calls] == [
        (False, [1, 2], 1), (True, None, 1), (True, None, 2)]
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("mobilenetv2_cifar")
               and line.split()[3] == "2")
    assert row.split()[-3:] == ["1.50x", "1.50x", "2.00x"]  # PyTorch/project, project, PyTorch
    # 64 x 144 x 32 x 32 floats read and written: 75.5 MB
    assert "1 thread(s) 40.00 ms (1.9 GB/s), 2 thread(s) 30.00 ms (2.5 GB/s, 1.33x vs 1)" in out


def test_training_benchmark_on_one_thread_count_has_no_scaling_columns(monkeypatch, capsys):
    import train_peers
    monkeypatch.setattr(harness, "run_child", lambda *a, **k: (1000, [[2, 0.5, 1.0]]))
    assert train_peers.parent(["--threads", "2", "--families", "igcv3_cifar", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "vs 2 thread(s)" not in out and "memory-bound pass" not in out


def test_memory_pass_runs_on_the_childs_threads(tmp_path):
    """The memory-bound pass itself (the plugin's BatchNormApply), in a real child on 1 thread: a
    positive time."""
    script = os.path.join(ROOT, "benchmarks", "train_peers.py")
    seconds = harness.run_child(script, dict(threads=1, rounds=1, memory=True), 1)
    assert 0 < seconds < 5


def test_call_overhead_benchmark_tables_each_pause_per_thread_count(monkeypatch, capsys):
    """One pinned child per thread count, each given every pause; a row per (threads, pause)
    with both runtimes' times, MXNet's excess and ORT/MXNet; a bad --pauses is one parser
    error naming the flag."""
    import call_overhead
    calls = []

    def fake_child(script, payload, threads, extra_env=None):
        calls.append((payload, threads, extra_env))
        return {str(p): {"MXNet": 0.0002 + p * 1e-5, "ONNX Runtime": 0.0001} for p in
                payload["pauses"]}

    monkeypatch.setattr(harness, "run_child", fake_child)
    assert call_overhead.parent(["--threads", "1,2", "--pauses", "0,50", "--quick"]) == 0
    assert [threads for _, threads, _ in calls] == [1, 2]
    for payload, _, env in calls:
        assert env == {"OMP_PROC_BIND": "true"}
        assert payload["pauses"] == [0, 50] and payload["rounds"] == 5
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [row[:2] for row in rows] == [["1", "0"], ["1", "50"], ["2", "0"], ["2", "50"]]
    assert rows[0][2:] == ["0.200", "0.100", "+0.100", "0.50x"]
    assert rows[1][2:] == ["0.700", "0.100", "+0.600", "0.14x"]
    with pytest.raises(SystemExit):
        call_overhead.parent(["--pauses", "0,fifty"])
    assert "--pauses must be comma-separated integers" in capsys.readouterr().err
