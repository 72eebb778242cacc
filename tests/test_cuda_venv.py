"""tools/cuda_venv.py's readers, on binaries built here: the GPU code listed in a fatbin, and
the libraries the loader resolves. (The check of a whole mxnet-cu112 venv is `make
cuda-venv-check`, opt-in: its wheels are large.)"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import cuda_venv  # noqa: E402


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
def test_gpu_code_lists_the_machine_code_and_ptx_nvcc_was_asked_for(tmp_path):
    obj = tmp_path / "reorder_gpu.o"
    subprocess.run(["nvcc", "-c", "-O0", "-gencode", "arch=compute_75,code=sm_75",
                    "-gencode", "arch=compute_80,code=sm_80", "-gencode",
                    "arch=compute_80,code=compute_80",
                    os.path.join(ROOT, "src", "operator", "reorder_gpu.cu"), "-o", str(obj)],
                   check=True, capture_output=True, timeout=120)
    assert cuda_venv.gpu_code(str(obj)) == {"sm": [75, 80], "ptx": [80]}


def test_gpu_code_of_a_cpu_binary_is_empty():
    assert cuda_venv.gpu_code(sys.executable) == {}


def test_ldd_resolves_the_plugins_libraries(ops):
    rows = dict(cuda_venv.ldd(ops))
    assert rows["libc.so.6"] and os.path.isfile(rows["libc.so.6"])
    assert None not in rows.values(), rows
