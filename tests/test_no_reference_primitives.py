"""No oneDNN reference kernel runs in a training step of any registered network.

oneDNN falls back to its reference implementations (`bnorm_ref:any`, `ref:any`, ...) when no
optimised kernel takes the memory layouts it is handed; those run 20-100x slower (IGCV3's
BatchNorm on `aBcd4b` on AVX-512 made a training step 4x slower). Each ISA runs one subprocess
that trains one step of every network with DNNL_VERBOSE=1 and reports the primitives that ran;
on an AVX-512 machine a second one runs under DNNL_MAX_CPU_ISA=AVX2, which picks other layouts.

Run as a script (`python tests/test_no_reference_primitives.py NAME...`) it is that subprocess:
one training step per network, each preceded by a marker line on stdout.
"""
import ctypes
import os
import subprocess
import sys

import pytest
from cpu_flags import has_avx512

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "### network "
BATCH = 2
# ImageNet networks run at 64x64 (their global pool takes any size); layouts depend on channel
# counts, not on the spatial size.
IMAGENET_SIZE = 64


def reference_kernels(verbose_output):
    """{network: sorted set of 'primitive impl layouts'} for every oneDNN kernel whose
    implementation name contains 'ref' (oneDNN's name for its reference kernels)."""
    found, network = {}, None
    for line in verbose_output.splitlines():
        if line.startswith(MARKER):
            network = line[len(MARKER):].strip()
            continue
        fields = line.split(",")
        if len(fields) > 6 and fields[0] == "dnnl_verbose" and fields[1] == "exec":
            primitive, impl, layouts = fields[3], fields[4], fields[6]
            if "ref" in impl:
                found.setdefault(network, set()).add(f"{primitive} {impl} {layouts}")
    return {k: sorted(v) for k, v in found.items()}


def test_reference_kernels_are_found_in_verbose_output():
    out = "\n".join([
        MARKER + "a",
        "dnnl_verbose,exec,cpu,batch_normalization,bnorm_ref:any,backward,data_f32::blocked:"
        "aBcd4b:f0 diff_f32::blocked:aBcd4b:f0,,flags:S,mb2ic24ih32iw32,1.5",
        "dnnl_verbose,exec,cpu,reorder,simple:any,undef,src_f32::blocked:abcd:f0,,,2x3,0.01",
        MARKER + "b",
        "dnnl_verbose,exec,cpu,sum,ref:any,undef,src_f32::blocked:aBcd8b:f0,,,2x32,0.01",
        "dnnl_verbose,exec,cpu,convolution,jit:avx2,forward_training,src_f32,,,g2,0.1",
    ])
    assert reference_kernels(out) == {
        "a": ["batch_normalization bnorm_ref:any data_f32::blocked:aBcd4b:f0 "
              "diff_f32::blocked:aBcd4b:f0"],
        "b": ["sum ref:any src_f32::blocked:aBcd8b:f0"]}


def _training_step_log(names, isa):
    env = dict(os.environ, DNNL_VERBOSE="1", OMP_NUM_THREADS="1")
    env.pop("DNNL_MAX_CPU_ISA", None)
    if isa:
        env["DNNL_MAX_CPU_ISA"] = isa
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *names], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


ISAS = ["native"] + (["AVX2"] if has_avx512() else [])


@pytest.mark.parametrize("isa", ISAS)
def test_training_step_runs_no_reference_kernel(ops, isa):
    import network
    names = network.list_networks()
    log = _training_step_log(names, None if isa == "native" else isa)
    ran = [line[len(MARKER):] for line in log.splitlines() if line.startswith(MARKER)]
    assert ran == names, "the worker did not step every network"
    assert "dnnl_verbose,exec,cpu,convolution" in log, "no oneDNN verbose output was captured"
    found = reference_kernels(log)
    assert not found, "oneDNN reference kernels ran (ISA %s):\n%s" % (isa, "\n".join(
        f"  {net}: {kernel}" for net, kernels in found.items() for kernel in kernels))


def _step(name):
    import mxnet as mx
    import numpy as np

    import network
    info = network.network_info(name)
    size = 32 if info["dataset_kind"] == "cifar" else IMAGENET_SIZE
    module = mx.mod.Module(network.get_symbol(name, 10), context=mx.cpu())
    module.bind(data_shapes=[("data", (BATCH, 3, size, size))],
                label_shapes=[("softmax_label", (BATCH,))])
    module.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    module.init_optimizer(optimizer="nag", optimizer_params={"learning_rate": 0.01})
    rng = np.random.default_rng(0)
    batch = mx.io.DataBatch([mx.nd.array(rng.standard_normal((BATCH, 3, size, size)))],
                            [mx.nd.array(np.arange(BATCH) % 10)])
    module.forward_backward(batch)
    module.update()
    mx.nd.waitall()


def main(names):
    sys.path.insert(0, ROOT)
    import utility
    utility.load_ops()
    libc = ctypes.CDLL(None)
    for name in names:
        libc.fflush(None)  # oneDNN's verbose lines are C stdio; keep them after their marker
        sys.stdout.write(MARKER + name + "\n")
        sys.stdout.flush()
        _step(name)
    libc.fflush(None)


if __name__ == "__main__":
    main(sys.argv[1:])
