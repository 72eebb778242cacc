"""benchmarks/harness.py: the child process gets its thread count, variants are interleaved, the
CPU line names the ISA, tables align. (No timing is asserted.)"""
import os
import sys
import textwrap

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
    assert line.endswith("DNNL_MAX_CPU_ISA=AVX2 (oneDNN limited to it)")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA")
    assert "DNNL_MAX_CPU_ISA" not in harness.cpu_line()


def test_table_right_aligns_numeric_columns(capsys):
    harness.print_table(["case", "ms", "ratio"], [["long case name", "1.50", "2.00x"],
                                                   ["b", "12.25", "-"]])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "case               ms  ratio"
    assert lines[2] == "long case name   1.50  2.00x"
    assert lines[3] == "b               12.25      -"
