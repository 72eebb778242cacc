"""tools/gpu_check.sh: one line and exit status 2 at once where there is no GPU; on a stand-in GPU
machine (fake nvidia-smi, nvcc, cmake, compute-sanitizer and Python on PATH) every step runs,
memcheck's verdict lands in the table and the benchmark's table is printed."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")



def run_check(tmp_path, nvidia_smi=None, tools=None, env=None):
    """The script run from a copy in tmp_path/tools, so that it could touch no real build, with
    stand-in programs (name: shell script body) first on PATH."""
    (tmp_path / "tools").mkdir()
    script = shutil.copy(SCRIPT, tmp_path / "tools")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = dict(tools or {})
    if nvidia_smi is not None:  # a stand-in driver tool: prints and exits as given
        tools["nvidia-smi"] = nvidia_smi
    for name, body in tools.items():
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", **(env or {}))
    env.pop("CUDA_ARCHS", None)
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                    reason="this machine has an NVIDIA driver")
@pytest.mark.parametrize("nvidia_smi,message", [
    (None, "no NVIDIA GPU: nvidia-smi is not on PATH"),
    ("echo 'No devices were found'; exit 6", "no NVIDIA GPU: nvidia-smi lists none"),
    ("exit 0", "no NVIDIA GPU: nvidia-smi lists none"),
])
def test_gpu_check_without_a_gpu_exits_2_with_one_line(tmp_path, nvidia_smi, message):
    result = run_check(tmp_path, nvidia_smi)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpu_check: {message}"), result.stderr
    assert not (tmp_path / "build").exists()


# A Hopper machine with PyTorch and no MXNet, as far as the script can tell.
GPU_MACHINE = {
    "nvidia-smi": """case "$*" in
  *compute_cap*) echo 9.0 ;;
  *name,driver_version*) echo 'NVIDIA H200, 580.65.06' ;;
esac""",
    "nvcc": "echo 'Cuda compilation tools, release 13.0, V13.0.88'",
    "cmake": "exit 0",
    "python": """case "$*" in
  *'print(torch.__version__)'*) echo 2.11.0 ;;
  *--cuda*) echo 'Reorder on NVIDIA H200 (sm_90)'; echo 'BENCHMARK TABLE ROW' ;;
  *'-m pytest'*) echo '....'; echo '35 passed, 42 deselected in 2.50s' ;;
esac""",
}
# compute-sanitizer --tool memcheck --error-exitcode 3 PROGRAM ARGS...
SANITIZER = """[ "$1 $2 $3 $4" = "--tool memcheck --error-exitcode 3" ] || exit 9
shift 4; "$@"; echo "========= ERROR SUMMARY: $FAKE_ERRORS errors"
[ "$FAKE_ERRORS" = 0 ] || exit 3"""


def run_on_gpu_machine(tmp_path, tools, errors="0"):
    python = str(tmp_path / "bin" / "python")
    return run_check(tmp_path, tools=tools, env={"PYTHON": python, "FAKE_ERRORS": errors,
                                                 "VENV": str(tmp_path / "no-venv")})


def table_row(output, step):
    rows = [line for line in output.splitlines() if line.startswith(f"| {step}")]
    assert len(rows) == 1, output
    return rows[0]


def test_gpu_check_runs_memcheck_and_prints_the_benchmark_table(tmp_path):
    result = run_on_gpu_machine(tmp_path, dict(GPU_MACHINE, **{"compute-sanitizer": SANITIZER}))
    assert result.returncode == 0, result.stdout + result.stderr
    row = table_row(result.stdout, "tests/test_reorder_cuda.py under memcheck")
    assert row.endswith("ok: 35 passed, 42 deselected; ERROR SUMMARY: 0 errors"), row
    assert "NVIDIA H200, 580.65.06 (sm_90), nvcc 13.0, PyTorch 2.11.0" in result.stdout
    assert "| benchmarks/reorder.py --cuda" in result.stdout
    assert result.stdout.index("BENCHMARK TABLE ROW") > result.stdout.index("| benchmarks")


def test_gpu_check_fails_when_memcheck_reports_errors(tmp_path):
    result = run_on_gpu_machine(tmp_path, dict(GPU_MACHINE, **{"compute-sanitizer": SANITIZER}),
                                errors="2")
    assert result.returncode == 1, result.stdout + result.stderr
    row = table_row(result.stdout, "tests/test_reorder_cuda.py under memcheck")
    assert row.endswith("FAILED: 35 passed, 42 deselected; ERROR SUMMARY: 2 errors"), row


def test_gpu_check_without_compute_sanitizer_says_memcheck_was_skipped(tmp_path):
    result = run_on_gpu_machine(tmp_path, GPU_MACHINE)
    assert result.returncode == 0, result.stdout + result.stderr
    row = table_row(result.stdout, "memcheck (compute-sanitizer)")
    assert "skipped: no compute-sanitizer on PATH or beside nvcc" in row
    assert "BENCHMARK TABLE ROW" in result.stdout
