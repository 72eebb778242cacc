"""Graphs built for a device hold only ops with kernels there, and keep the weights of the CPU
graph; a training job builds for its contexts. The reference for "has a GPU kernel" is the
plugin's source (the devices each REGISTER_OP block names) and, for stock MXNet ops, the fact
that mxnet-cu112 has GPU kernels for all of them; no GPU is needed."""
import ctypes
import glob
import json
import os
import re

import mxnet as mx
import numpy as np
import pytest

import network
import train_model
import utility
from network import layers
from records import make_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_NET = ["--network", "plain_igc", "--depth", "8", "--primary-partition", "4",
             "--secondary-partition", "2"]
# The networks whose CPU graph fuses a group conv into IGCConv under conv_impl='auto'.
FUSED_ON_CPU = [("plain_igc", {}), ("resnet_igc", {}),
                ("resnet_igc_imgnet_d18", {"variant": "igc_l100m2"})]


def source_registrations():
    """{op: devices with both a forward and a backward} as src/operator/*_op.cc registers them;
    registrations under `#if IGC_WITH_CUDA` count when the loaded plugin holds the CUDA kernels
    (their C launcher is linked into it then)."""
    with_cuda = hasattr(ctypes.CDLL(utility.load_ops()), "igc_reorder_cuda")
    devices = {}
    for path in glob.glob(os.path.join(ROOT, "src", "operator", "*_op.cc")):
        text = open(path).read()
        for name, body in re.findall(r"REGISTER_OP\((\w+)\)(.*?);", text, re.S):
            found, in_cuda_block = {"Forward": set(), "Backward": set()}, False
            for line in body.splitlines():
                if line.strip().startswith("#if"):
                    in_cuda_block = "IGC_WITH_CUDA" in line
                elif line.strip().startswith("#endif"):
                    in_cuda_block = False
                for kind, device in re.findall(r"\.set(Forward|Backward)\(\w+, \"(\w+)\"\)", line):
                    if with_cuda or not in_cuda_block:
                        found[kind].add(device)
            # A forward-only op (no backward registered anywhere) runs where its forward is.
            devices[name] = (found["Forward"] & found["Backward"] if found["Backward"]
                             else found["Forward"])
    return devices


def gpu_permutation():
    """The permutation a GPU graph can take: the native Reorder unless the plugin was built
    without its CUDA kernels."""
    return "reorder" if "gpu" in source_registrations()["Reorder"] else "reshape"


def has_gpu_kernel(op, registrations):
    return op == "null" or op not in registrations or "gpu" in registrations[op]


def ops_of(symbol):
    return {node["op"] for node in json.loads(symbol.tojson())["nodes"]}


def shapes_of(name, symbol):
    size = network.network_info(name)["input_size"]
    args, _, aux = symbol.infer_shape(data=(1, 3, size, size))
    return (dict(zip(symbol.list_arguments(), args)),
            dict(zip(symbol.list_auxiliary_states(), aux)))


def test_plugin_reports_the_kernels_its_source_registers(ops):
    registrations = source_registrations()
    assert set(registrations) == set(layers.PLUGIN_OPS)
    assert {op: set(devices) for op, devices in utility.plugin_op_devices().items()} == \
        registrations


@pytest.mark.parametrize("name", network.list_networks())
def test_graph_for_the_gpu_holds_only_ops_with_gpu_kernels(ops, name):
    registrations = source_registrations()
    if "gpu" not in registrations["Reorder"]:
        # A plugin built without nvcc: a GPU graph with Reorder is refused, one without builds.
        if "Reorder" in ops_of(network.get_symbol(name, 10)):
            with pytest.raises(ValueError, match="Reorder on the gpu"):
                network.get_symbol(name, 10, device="gpu")
        symbol = network.get_symbol(name, 10, device="gpu", permutation="reshape")
    else:
        symbol = network.get_symbol(name, 10, device="gpu")
    missing = {op for op in ops_of(symbol) if not has_gpu_kernel(op, registrations)}
    assert not missing, f"{name} for the GPU holds {missing}"


@pytest.mark.parametrize("name,config", FUSED_ON_CPU, ids=[n for n, _ in FUSED_ON_CPU])
def test_graph_for_the_gpu_has_the_cpu_graphs_weights_without_igc_conv(ops, name, config):
    cpu = network.get_symbol(name, 10, **config)
    gpu = network.get_symbol(name, 10, device="gpu", permutation=gpu_permutation(), **config)
    assert "IGCConv" in ops_of(cpu)
    assert "IGCConv" not in ops_of(gpu) and "Convolution" in ops_of(gpu)
    assert gpu.list_arguments() == cpu.list_arguments()
    assert shapes_of(name, gpu) == shapes_of(name, cpu)


def test_conv_impl_igc_for_the_gpu_is_refused_and_mxnet_is_kept(ops):
    with pytest.raises(ValueError, match="IGCConv has no gpu kernel"):
        network.get_symbol("plain_igc", 10, device="gpu", conv_impl="igc")
    assert "IGCConv" in ops_of(network.get_symbol("plain_igc", 10, device="cpu",
                                                  conv_impl="igc"))
    assert "IGCConv" not in ops_of(network.get_symbol(
        "plain_igc", 10, device="gpu", conv_impl="mxnet", permutation=gpu_permutation()))
    with pytest.raises(ValueError, match="device must be one of"):
        network.get_symbol("plain_igc", 10, device="tpu")


@pytest.fixture
def one_gpu(monkeypatch):
    """MXNet reports one GPU (the machine has none; nothing here is bound)."""
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 1)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = tmp_path_factory.mktemp("records")
    make_records(directory, "train", [i % 10 for i in range(40)])
    make_records(directory, "test", [i % 10 for i in range(20)])
    return str(directory)


def job_args(records, tmp_path, *extra):
    return ["--dataset", "demo", "--data-dir", records, "--model-prefix", str(tmp_path / "m"),
            "--batch-size", "8", *SMALL_NET, *extra]


def test_training_job_for_a_gpu_builds_its_graph_for_the_gpu(ops, one_gpu, records, tmp_path):
    registrations = source_registrations()
    # --gpus defaults to every GPU
    job, _ = train_model.build_job(job_args(records, tmp_path, "--permutation",
                                            gpu_permutation()))
    assert job.contexts == (mx.gpu(0),)
    gpu_graph = job.network.symbol()
    missing = {op for op in ops_of(gpu_graph) if not has_gpu_kernel(op, registrations)}
    assert not missing, f"the GPU job's graph holds {missing}"
    cpu_job, _ = train_model.build_job(job_args(records, tmp_path, "--gpus", ""))
    assert cpu_job.contexts == (mx.cpu(),)
    cpu_graph = cpu_job.network.symbol()
    assert "IGCConv" in ops_of(cpu_graph)
    assert shapes_of("plain_igc", gpu_graph) == shapes_of("plain_igc", cpu_graph)


def test_conv_impl_igc_with_a_gpu_is_a_one_line_config_error(ops, one_gpu, records, tmp_path,
                                                             capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_model.main(job_args(records, tmp_path, "--conv-impl", "igc", "--gpus", "0"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--network plain_igc: conv_impl 'igc': IGCConv has no gpu kernel" in err
    assert not os.path.exists(tmp_path / "m-symbol.json")


def test_a_graph_for_the_gpu_runs_there_like_the_cpu_graph(ops):
    """Where mxnet-cu112 sees a GPU (sm_50-86): outputs and gradients of plain_igc built for and
    bound on the GPU (Convolution + Reorder) match the CPU graph (IGCConv) on the same weights."""
    if mx.context.num_gpus() == 0:
        pytest.skip("no GPU for MXNet (mxnet-cu112 sees none: it runs on sm_50-86)")
    config = dict(depth=8, primary_partition=4, secondary_partition=2)
    rng = np.random.RandomState(0)
    symbols = {device: network.get_symbol("plain_igc", 10, device=device, **config)
               for device in ("cpu", "gpu")}
    assert "IGCConv" in ops_of(symbols["cpu"]) and "IGCConv" not in ops_of(symbols["gpu"])
    shapes = dict(data=(4, 3, 32, 32), softmax_label=(4,))
    arg_shapes, _, _ = symbols["cpu"].infer_shape(**shapes)
    values = {name: (np.array([1, 3, 5, 7]) if name == "softmax_label" else
                     rng.uniform(0.5, 1.5, shape) if name.endswith("gamma") else
                     rng.uniform(-0.5, 0.5, shape)).astype("float32")
              for name, shape in zip(symbols["cpu"].list_arguments(), arg_shapes)}
    results = {}
    for device, ctx in (("cpu", mx.cpu()), ("gpu", mx.gpu(0))):
        exe = symbols[device].simple_bind(ctx, grad_req="write", **shapes)
        for name, value in values.items():
            exe.arg_dict[name][:] = value
        out = exe.forward(is_train=True)[0].asnumpy()
        exe.backward()
        results[device] = out, {k: v.asnumpy() for k, v in exe.grad_dict.items()}
    np.testing.assert_allclose(results["gpu"][0], results["cpu"][0], rtol=1e-3, atol=1e-5)
    for name, want in results["cpu"][1].items():
        if name != "softmax_label":
            np.testing.assert_allclose(results["gpu"][1][name], want, rtol=1e-2,
                                       atol=1e-3 * max(float(np.abs(want).max()), 1e-6),
                                       err_msg=f"gradient of {name}")
