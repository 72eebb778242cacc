"""The fixed cost of one inference call, MXNet against ONNX Runtime, back to back and after idle.

A graph with next to no work: global average pooling of one 3 x 224 x 224 image (the input
inference_peers.py feeds) and a 3 -> 10 classifier. What a call of it costs is what every call
pays besides its layers: in MXNet (as inference_peers.py calls the project's graphs) a `Module`
forward, the copy of the batch into the bound input and the wait for the output; in ONNX Runtime
a `session.run` of the same layers exported from PyTorch (all graph optimizations). Each is timed
after a pause of 0, 10 and 50 ms (inference_peers.py pauses 50 ms before every call), per thread
count, threads pinned as in inference_peers.py, MXNet in a child process and ONNX Runtime in a
peer process beside it (harness.Peer), the two calls interleaved (harness.py: medians).

    python benchmarks/call_overhead.py                 # 1 and 2 threads, 40 rounds per pause
    python benchmarks/call_overhead.py --quick         # 5 rounds
    python benchmarks/call_overhead.py --threads 2 --pauses 0,50
"""
import argparse
import os
import sys
import tempfile

import numpy as np

import harness

SIZE, CLASSES = 224, 10
PAUSES_MS = (0, 10, 50)


def input_batch():
    return np.random.RandomState(0).uniform(-1, 1, (1, 3, SIZE, SIZE)).astype(np.float32)


def mxnet_call(mx):
    """A bound Module of the tiny graph and the function that calls it as inference_peers.py
    calls the networks (DataBatch in, wait for the first output)."""
    data = mx.sym.var("data")
    pooled = mx.sym.flatten(mx.sym.Pooling(data, global_pool=True, pool_type="avg",
                                           kernel=(1, 1)))
    symbol = mx.sym.FullyConnected(pooled, num_hidden=CLASSES, name="fc")
    module = mx.mod.Module(symbol, context=mx.cpu(), label_names=[])
    module.bind(data_shapes=[("data", (1, 3, SIZE, SIZE))], for_training=False)
    mx.random.seed(0)
    module.init_params(mx.init.Xavier())
    batch = mx.io.DataBatch([mx.nd.array(input_batch())])

    def forward():
        module.forward(batch, is_train=False)
        module.get_outputs()[0].wait_to_read()
    return forward


def measure(payload):
    """Runs in the child: {pause in ms: {"MXNet": s, "ONNX Runtime": s}}."""
    import mxnet as mx

    fns = {"MXNet": mxnet_call(mx)}
    with harness.Peer(__file__, payload) as peer:
        fns.update(peer.functions())
        return {str(pause): harness.interleaved_medians(fns, rounds=payload["rounds"],
                                                        warmup=payload["warmup"],
                                                        pause=pause / 1000)
                for pause in payload["pauses"]}


def peer(payload):
    """Runs in the peer process: the same layers in PyTorch, exported, in an ONNX Runtime
    session on the thread count (its pool pinned as inference_peers.py pins it)."""
    import onnxruntime as ort
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, CLASSES)

        def forward(self, x):
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))

    threads = payload["threads"]
    with tempfile.TemporaryDirectory() as tmp:  # ONNX Runtime reads the file once
        path = os.path.join(tmp, "tiny.onnx")
        torch.onnx.export(Tiny().eval(), (torch.zeros(1, 3, SIZE, SIZE),), path,
                          input_names=["data"], output_names=["logits"], opset_version=17,
                          dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        affinities = harness.ort_affinities(threads, payload["cpus"])
        if affinities:
            options.add_session_config_entry("session.intra_op_thread_affinities", affinities)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    data = input_batch()
    return {"ONNX Runtime": lambda: session.run(None, {"data": data})}, {}


def parent(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_threads_flag(parser)
    parser.add_argument("--pauses", default=",".join(map(str, PAUSES_MS)),
                        help="comma-separated idle milliseconds before each call (default: "
                             f"{','.join(map(str, PAUSES_MS))})")
    harness.add_rounds_flags(parser, rounds=40, warmup=5, quick=(5, 2), unit="call")
    args = parser.parse_args(argv)
    threads = harness.parse_threads(parser, args.threads)
    pauses = harness.parse_int_list(parser, "--pauses", args.pauses, minimum=0)
    rounds, warmup = harness.parse_rounds(parser, args)

    cpus = sorted(os.sched_getaffinity(0))
    results = {t: harness.run_child(__file__, dict(threads=t, rounds=rounds, warmup=warmup,
                                                   pauses=pauses, cpus=cpus),
                                    t, harness.pinned_env(True))
               for t in threads}
    harness.print_header(f"One call of a tiny graph (pooling + 3 -> 10 classifier of a 1 x 3 x "
                         f"{SIZE} x {SIZE} input), median of {rounds} interleaved rounds",
                         "mxnet", "onnxruntime")
    print("threads: pinned (OMP_PROC_BIND=true; ONNX Runtime's by "
          "session.intra_op_thread_affinities)")
    print()
    rows = []
    for t in threads:
        for pause in pauses:
            seconds = results[t][str(pause)]
            mxnet_s, ort_s = seconds["MXNet"], seconds["ONNX Runtime"]
            rows.append([t, pause, f"{mxnet_s * 1e3:.3f}", f"{ort_s * 1e3:.3f}",
                         f"{(mxnet_s - ort_s) * 1e3:+.3f}", harness.ratio(ort_s, mxnet_s)])
    harness.print_table(["threads", "idle ms before", "MXNet ms", "ONNX Runtime ms",
                         "MXNet - ORT ms", "ORT/MXNet"], rows)
    print("What a call costs besides its layers: MXNet's difference is paid by every "
          "inference_peers.py call of the project's graphs.")
    return 0


if __name__ == "__main__":
    sys.exit(harness.main(parent, measure, peer))
