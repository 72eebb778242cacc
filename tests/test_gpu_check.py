"""tools/gpu_check.sh stops at once, with one line and exit status 2, where there is no GPU."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")

pytestmark = pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                                reason="this machine has an NVIDIA driver")


def run_check(tmp_path, nvidia_smi=None):
    """The script run from a copy in tmp_path/tools, so that it could touch no real build."""
    (tmp_path / "tools").mkdir()
    script = shutil.copy(SCRIPT, tmp_path / "tools")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia_smi is not None:  # a stand-in driver tool: prints and exits as given
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)


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
