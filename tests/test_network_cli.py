"""`python -m network`: the classifier row holds the classifier alone and the rows add up to the
totals, for every network; no name and a closed pipe end in one line or quietly."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import network
from network.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table(output):
    """{row name: (params, MACs)} of the printed table."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+)\s.*?\s([\d,]+)\s+([\d,]+)$", line)
        if match and not line.startswith(("params", "multiply")):
            rows[match.group(1)] = tuple(int(v.replace(",", "")) for v in match.group(2, 3))
    return rows


@pytest.mark.parametrize("name", network.list_networks())
def test_classifier_row_is_the_fc_layer_and_rows_add_up_to_the_totals(name, capsys):
    assert main([name, "--permutation", "reshape"]) == 0
    output = capsys.readouterr().out
    rows = table(output)
    total_params = int(re.search(r"params: total ([\d,]+)", output).group(1).replace(",", ""))
    total_macs = int(re.search(r"multiply-adds: total ([\d,]+)", output).group(1)
                     .replace(",", ""))
    # Reference: the FC weight and bias shapes MXNet infers.
    size = network.network_info(name)["input_size"]
    classes = 10 if network.network_info(name)["dataset_kind"] == "cifar" else 1000
    symbol = network.get_symbol(name, classes, permutation="reshape")
    shapes = dict(zip(symbol.list_arguments(), symbol.infer_shape(data=(1, 3, size, size))[0]))
    fc = {k: v for k, v in shapes.items() if k.startswith("fc") and k.endswith("_weight")}
    assert len(fc) == 1
    (weight_name, (out, inputs)), = fc.items()
    bias = int(np.prod(shapes.get(weight_name[:-len("weight")] + "bias", (0,))))
    assert rows["classifier"] == (out * inputs + bias, out * inputs)
    assert sum(p for p, _ in rows.values()) == total_params
    assert sum(m for _, m in rows.values()) == total_macs


def test_no_network_name_is_one_line():
    result = subprocess.run([sys.executable, "-m", "network"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "give a network name or --list; names: igcv2, " in result.stderr
    assert "Traceback" not in result.stderr


def test_a_closed_pipe_ends_quietly():
    # The reader closes its end before the table is written (what `| head -1` amounts to).
    reader, writer = os.pipe()
    os.close(reader)
    result = subprocess.run([sys.executable, "-m", "network", "igcv3"], cwd=ROOT, stdout=writer,
                            stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(writer)
    assert result.stderr == "" and result.returncode == 141
