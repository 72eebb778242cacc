"""The entry points' first impression: a usage error is one line (not the whole usage), and a
Python without the project's packages gets one line saying which Python to use."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = ["train_model.py", "train_imagenet.py", "tools/score.py", "tools/predict.py",
                "tools/export_onnx.py"]


def run(*argv, python=(sys.executable,)):
    return subprocess.run([*python, *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


@pytest.mark.parametrize("script,argv,message", [
    ("train_model.py", ["--lr", "nan"], "argument --lr: must be a finite number"),
    ("train_imagenet.py", ["--momentum", "5"], "argument --momentum"),
    ("tools/predict.py", [], "the following arguments are required: IMAGE"),
    ("tools/score.py", ["--batch-size", "0"], "argument --batch-size"),
    ("tools/export_onnx.py", ["--fold-bn"], "-o/--output"),
])
def test_a_usage_error_is_one_line(script, argv, message):
    result = run(script, *argv)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and f"(see {os.path.basename(script)} --help)" in \
        result.stderr


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_outside_the_venv_one_line_names_the_python_to_use(script):
    # -S: no site-packages, as a system Python without MXNet and numpy would be.
    result = run(script, "--help", python=(sys.executable, "-S"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "is not installed for" in result.stderr
    assert os.path.join(ROOT, ".venv", "bin", "python") in result.stderr


def test_the_readme_gluon_snippet_runs_from_another_folder_without_warnings(tmp_path, ops):
    import mxnet as mx

    import network
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("- **Backbones**"):]
    snippet = section[section.index("```python") + len("```python"):].split("```")[0]
    # The demo's weights: a freshly initialised network of the same config stands in.
    symbol = network.get_symbol("plain_igc", 10, depth=8, primary_partition=8,
                                secondary_partition=2)
    module = mx.mod.Module(symbol, data_names=("data",), label_names=("softmax_label",))
    module.bind(data_shapes=[("data", (1, 3, 32, 32))], label_shapes=[("softmax_label", (1,))],
                for_training=False)
    module.init_params(mx.init.Xavier())
    os.makedirs(tmp_path / "runs" / "demo")
    module.save_params(str(tmp_path / "runs" / "demo" / "model-0008.params"))
    code = snippet + "\nassert pooled.shape == (1, 64), pooled.shape\n"
    # PYTHONPATH stands in for the path file `make venv` writes into the venv.
    result = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr


def test_a_failed_download_leaves_no_empty_data_folder(tmp_path):
    from tools.recordio.sources import download
    from tools.recordio.writer import DataError
    target = tmp_path / "data" / "cifar100" / "cifar-100-python.tar.gz"
    with pytest.raises(DataError, match="pass it with --from"):
        download((tmp_path / "offline.tar.gz").as_uri(), str(target))
    assert os.listdir(tmp_path / "data") == []
