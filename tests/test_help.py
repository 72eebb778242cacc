"""--help tells the truth: network flags show the chosen network's default (or every network's),
no flag shows `(default: None)` or two defaults, the augmentation flag reads right, GPU lists
read as given, boolean network keys show their values up front."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def help_of(script, *argv):
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv, "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def entries(text):
    """{flag: its help text on one line} from argparse's option listing."""
    found, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (-[-\w]+)", line)
        if match:
            current = match.group(1)
            found[current] = line
        elif current and line.startswith("    "):
            found[current] += " " + line.strip()
        else:
            current = None
    return {flag: re.sub(r"\s+", " ", body).strip() for flag, body in found.items()}


@pytest.mark.parametrize("script,argv", [
    ("train_model.py", ()), ("train_model.py", ("--network", "resnet_igc")),
    ("train_imagenet.py", ("--network", "igcv3")), ("tools/score.py", ()),
    ("tools/predict.py", ()), ("tools/export_onnx.py", ()),
])
def test_no_flag_shows_a_none_default_or_two_defaults(script, argv):
    for flag, body in entries(help_of(script, *argv)).items():
        assert "(default: None)" not in body, (flag, body)
        assert body.count("(default") <= 1, (flag, body)
        assert "default: ()" not in body and "default ()" not in body, (flag, body)


def test_network_flags_show_the_chosen_networks_defaults():
    listed = entries(help_of("train_model.py", "--network", "resnet_igc"))
    assert "(default for resnet_igc: 20)" in listed["--depth"]
    assert "(default for resnet_igc: 24)" in listed["--primary-partition"]
    assert "(not used by resnet_igc)" in listed["--width-multiplier"]
    listed = entries(help_of("train_model.py", "--network", "resnet", "--depth", "32"))
    assert "(default for resnet: 16)" in listed["--width"]
    # Without a network, every network's default.
    listed = entries(help_of("tools/score.py"))
    assert "16 for plain, resnet; 64 for resnet_imgnet_d18" in listed["--width"]
    assert listed["--t1-expansion"].startswith("--t1-expansion {true,false}")


@pytest.mark.parametrize("dataset,default", [("cifar10", "True"), ("svhn", "False")])
def test_augment_flag_reads_right_for_each_preset(dataset, default):
    listed = entries(help_of("train_model.py", "--dataset", dataset))
    assert listed["--augment"].startswith("--augment, --no-augment")
    assert listed["--augment"].endswith(f"(default: {default})")


def test_gpu_default_of_the_tools_reads_as_a_gpu_list():
    assert entries(help_of("tools/predict.py"))["--gpus"].endswith("(default: '')")
